"""PyTorch interoperability: weight conversion both ways, safe readers, PyTorch twins."""

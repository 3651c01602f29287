"""docs/quickstart.ipynb runs from top to bottom (nightly): offline, with a small exported network
in place of the downloaded weights and a short fine-tuning."""

import os

import jax
import jax.numpy as jnp
import pytest

import resnet_jax
from resnet_jax import pretrained
from resnet_jax.data.transforms import Preprocessing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  model = resnet_jax.create_model("resnet8", num_classes=5)
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  pretrained.export(str(tmp_path / "model"), pretrained.Pretrained(
      variables, "resnet8", 5, Preprocessing(32, 3, 1.0, (127.5,) * 3, (64.0,) * 3),
      class_names=("a", "b", "c", "d", "e")))
  notebook = nbformat.read(os.path.join(REPO, "docs", "quickstart.ipynb"), as_version=4)
  (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  parameters.source = (f"PRETRAINED = {str(tmp_path / 'model')!r}\n"
                       f"WORKDIR = {str(tmp_path / 'run')!r}\nSTEPS = 4")
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert "resnet8 5 classes, images of 32 pixels" in text
  assert "accuracy after 4 steps:" in text
  (plot,) = [c for c in notebook.cells if "plots.plot_runs" in c.source]
  assert any("image/png" in o.get("data", {}) for o in plot.outputs)
  assert os.path.exists(tmp_path / "run" / "metrics.jsonl")

"""Timing of steps: windows of back-to-back steps, summarised as images per second."""

import statistics
import time
from collections.abc import Callable
from typing import Any

# The three convolutions of a train step, each timed alone by `--profile-convs` on both sides.
PHASES = ("forward", "input_gradient", "weight_gradient")


def timed(step: Callable[[], Any], sync: Callable[[Any], Any], *, steps: int, warmup: int,
           window: int = 5) -> list[float]:
  """Seconds per step: one value per window of `window` steps dispatched back to back (so host
  work overlaps device work, as in training) and synchronised at the window's end."""
  window = max(1, min(window, steps))
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  times = []
  for _ in range(max(1, steps // window)):
    start = time.perf_counter()
    for _ in range(window):
      out = step()
    sync(out)
    times.append((time.perf_counter() - start) / window)
  return times


def summary(seconds: list[float], images_per_step: int) -> dict[str, float]:
  """Median, min and max images/s over the windows, and the median step time."""
  rates = [images_per_step / s for s in seconds]
  return {"images_per_sec": statistics.median(rates), "images_per_sec_min": min(rates),
          "images_per_sec_max": max(rates), "step_time_ms": 1e3 * statistics.median(seconds)}

"""Metric writer (TensorBoard event file + `metrics.jsonl`) and a console progress bar.

```python
with MetricWriter(run_dir) as writer:
    for step in progress(range(num_steps), desc="rl"):
        metrics = jax.device_get(metrics)           # or pass device arrays: one transfer per call
        writer.scalars(metrics, step)               # keys like "train/actor/policy_loss"
        writer.video("env/rollout", frames_u8_THW3, step, fps=10)
```
Only process 0 writes by default (multi-host runs), so every process may call it unconditionally.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pirl.logging.video import as_uint8_frames, encode_gif


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX) and, one JSON object per call, to `<logdir>/metrics.jsonl`.

    JSONL lines look like `{"step": 10, "time": 1.7e9, "train/actor/policy_loss": -0.01, ...}`;
    non-finite values are written as null (strict JSON).
    """

    def __init__(
        self,
        logdir: str | Path,
        *,
        jsonl_name: str = "metrics.jsonl",
        tensorboard: bool = True,
        flush_secs: int = 30,
        active: bool | None = None,
    ):
        """
        Args:
          logdir: directory for the event file and the JSONL (created if missing).
          jsonl_name: file name of the JSONL log inside `logdir` (appended to on resume).
          tensorboard: also write a TensorBoard event file.
          flush_secs: TensorBoard flush period.
          active: write at all; default: only on process 0.
        """
        self.logdir = Path(logdir)
        self.active = jax.process_index() == 0 if active is None else active
        self._tb = None
        self._jsonl = None
        if not self.active:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.logdir / jsonl_name, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.logdir), flush_secs=flush_secs)

    @property
    def jsonl_path(self) -> Path | None:
        """Path of the JSONL file (None when inactive)."""
        return Path(self._jsonl.name) if self._jsonl is not None else None

    def scalars(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write a dict of scalars (Python numbers, numpy or jax scalars / size-1 arrays) at `step`."""
        if not self.active:
            return
        host = jax.device_get(dict(metrics))
        values: dict[str, float] = {}
        for name, value in host.items():
            array = np.asarray(value)
            if array.size != 1:
                raise ValueError(f"metric {name!r} is not a scalar (shape {array.shape}); reduce it first")
            values[name] = float(array.reshape(()))
        step = int(step)
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)
        record = {"step": step, "time": time.time()}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")

    def video(self, tag: str, frames: np.ndarray, step: int, fps: float = 10.0) -> None:
        """Add a video `[T, H, W, 3]` (uint8, or float in [0, 1]) to TensorBoard as an animated GIF.

        (tensorboardX's own add_video needs moviepy; the GIF is built with Pillow instead and shows
        in TensorBoard's Images tab.)
        """
        if not self.active or self._tb is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        frames = as_uint8_frames(np.asarray(jax.device_get(frames)))
        _, height, width, channels = frames.shape
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=encode_gif(frames, fps)
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._tb._get_file_writer().add_summary(summary, int(step))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Add a text entry (e.g. the resolved config) to TensorBoard."""
        if self.active and self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        """Flush both files to disk."""
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read back a metrics JSONL file (one dict per logged step)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    initial: int = 0,
    disable: bool | None = None,
    unit: str = "it",
    **tqdm_kwargs: Any,
) -> Any:
    """A tqdm progress bar (`.update(n)`, `.set_postfix(dict)`), shown on process 0 only by default.

    Args:
      iterable: iterate over this (or drive it manually with `total` and `.update`).
      total: number of steps, if `iterable` has no length.
      desc: label on the left.
      initial: starting count, e.g. the resumed step.
      disable: hide it; default hides on processes other than 0.
      unit: unit name.
      **tqdm_kwargs: passed to tqdm (e.g. `file`, `leave`).
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = jax.process_index() != 0
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        initial=initial,
        disable=disable,
        unit=unit,
        **({"dynamic_ncols": True, "mininterval": 1.0} | tqdm_kwargs),
    )


def format_metrics(
    metrics: Mapping[str, Any], keys: Iterable[str] | None = None, digits: int = 4
) -> dict[str, str]:
    """Short `{last path component: value}` strings for `progress(...).set_postfix`."""
    host = jax.device_get(dict(metrics))
    chosen = list(host) if keys is None else [k for k in keys if k in host]
    return {k.rsplit("/", 1)[-1]: f"{float(np.asarray(host[k])):.{digits}g}" for k in chosen}

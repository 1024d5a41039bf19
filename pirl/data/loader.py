"""A multi-worker, prefetching, resumable batch loader.

Worker threads each assemble whole batches (read + decode + transform + stack); PIL, pyarrow and
PyAV release the GIL while decoding, so threads scale on the heavy parts. Batches come out in a
deterministic order: epoch `e` visits `permutation(seed, e)` of the frames in chunks of
`batch_size` (the last partial batch is dropped), so a `LoaderPosition(epoch, batch)` saved with a
checkpoint resumes the exact sequence. `device_batches` puts each batch on devices with a given
sharding (uint8 images travel as uint8; the model converts them to [-1, 1]).

Multi-host: every process walks the same global sequence but reads, decodes and transforms only
`rows`, its rows of each global batch (`pirl.distributed.multihost.process_batch_rows`: those its
devices hold under the batch sharding); `device_batches` assembles the global arrays from every
process's rows. A job on N processes thus sees the same global batches as one process, and its
position is one (epoch, batch) pair; `save_state` still writes each process's own state
(`<dir>/loader/process_<i>-of-<n>.json`: position, rows, seed, batch size) and `restore_state`
reads it back, refusing a seed or batch size that would change the sequence. pirl keeps this
thread-pool loader rather than grain: grain shards the *dataset* per process (so N processes see
different batches than one) and ties a saved iterator state to the process count; here the rows
split is ~20 lines and a checkpoint resumes exactly on any number of processes.

```python
dataset = LeRobotDataset(root, delta_timestamps={"actions": [t / fps for t in range(H)]})
rows = process_batch_rows(batch_sharding, 32)        # all 32 rows on a single host
loader = BatchLoader(dataset, transform, batch_size=32, seed=0, num_workers=2, rows=rows)
for batch in loader.device_batches(batch_sharding):  # {"image", "image_mask", "state", ..., "actions"}
    ...
    loader.save_state(step_dir)                      # with the checkpoint
```
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from pirl.errors import UserError

Batch = dict[str, Any]
log = logging.getLogger(__name__)


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class LoaderPosition:
    """Where the next batch comes from: `batch`-th batch of epoch `epoch`."""

    epoch: int = 0
    """Epoch of the next batch."""
    batch: int = 0
    """Batches of that epoch already delivered."""

    def to_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderPosition:
        return cls(epoch=int(data["epoch"]), batch=int(data["batch"]))


def stack_samples(samples: list[dict[str, Any]]) -> Batch:
    """Stack a list of (nested) sample dicts leaf-wise into a batch with a leading axis."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *samples)


class BatchLoader:
    """Batches of `transform(dataset[i])`, shuffled per epoch, assembled by `num_workers` threads.

    Args:
      dataset: random-access frames (e.g. `LeRobotDataset`).
      transform: per-sample function (e.g. from `pirl.data.configs.make_transforms`).
      batch_size: samples per global batch (over all processes).
      seed: shuffling seed; epoch e uses permutation(seed, e).
      shuffle: False visits frames in order (validation).
      num_workers: threads assembling batches; 0 assembles in the calling thread.
      prefetch: batches requested ahead of the consumer (at least num_workers).
      position: where to start (a saved `LoaderPosition`).
      rows: this process's rows of every global batch (sorted positions in [0, batch_size), e.g.
        from `process_batch_rows`); only these are read. None = all (a single process).
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 2,
        prefetch: int = 4,
        position: LoaderPosition = LoaderPosition(),
        rows: Sequence[int] | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) < batch_size:
            raise UserError(
                f"the dataset has {len(dataset)} frames, fewer than one batch of {batch_size}; lower the batch size"
            )
        self.dataset = dataset
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.prefetch = max(prefetch, num_workers, 1)
        self._position = position
        self.rows = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64)
        if (
            self.rows.ndim != 1
            or not len(self.rows)
            or np.any(np.diff(self.rows) <= 0)
            or not 0 <= self.rows[0] <= self.rows[-1] < batch_size
        ):
            raise ValueError(f"rows must be increasing positions in [0, {batch_size}), got {list(self.rows)}")
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="pirl-loader")
            if num_workers > 0
            else None
        )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    @property
    def position(self) -> LoaderPosition:
        """Position of the next batch to be delivered (save it with a checkpoint)."""
        return self._position

    def set_position(self, position: LoaderPosition) -> None:
        """Restart from `position` (takes effect on the next `batches()` / `device_batches()` call)."""
        self._position = position

    def batch_indices(self, position: LoaderPosition) -> np.ndarray:
        """Frame indices int64[batch_size] of the global batch at `position`."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, position.epoch]).permutation(n)
        else:
            order = np.arange(n)
        start = position.batch * self.batch_size
        return order[start : start + self.batch_size]

    def process_indices(self, position: LoaderPosition) -> np.ndarray:
        """Frame indices of this process's rows of the global batch at `position`."""
        return self.batch_indices(position)[self.rows]

    def load_batch(self, indices: np.ndarray) -> Batch:
        """Read, transform and stack the samples at `indices`."""
        return stack_samples([self.transform(self.dataset[int(i)]) for i in indices])

    def _positions(self, start: LoaderPosition, num_batches: int | None) -> Iterator[LoaderPosition]:
        epoch, batch, count = start.epoch, start.batch, 0
        while num_batches is None or count < num_batches:
            if batch >= self.batches_per_epoch:
                epoch, batch = epoch + 1, 0
            yield LoaderPosition(epoch, batch)
            batch, count = batch + 1, count + 1

    def batches(self, num_batches: int | None = None) -> Iterator[Batch]:
        """Host (numpy) batches of this process's rows from the current position; endless unless
        `num_batches` is given."""
        positions = self._positions(self._position, num_batches)
        if self._pool is None:
            for pos in positions:
                batch = self.load_batch(self.process_indices(pos))
                self._position = self._after(pos)
                yield batch
            return
        pending: collections.deque[tuple[LoaderPosition, concurrent.futures.Future]] = collections.deque()
        try:
            for pos in positions:
                pending.append((pos, self._pool.submit(self.load_batch, self.process_indices(pos))))
                if len(pending) < self.prefetch:
                    continue
                yield self._deliver(pending)
            while pending:
                yield self._deliver(pending)
        finally:
            for _, future in pending:
                future.cancel()

    def _deliver(self, pending: collections.deque) -> Batch:
        pos, future = pending.popleft()
        batch = future.result()
        self._position = self._after(pos)
        return batch

    def _after(self, pos: LoaderPosition) -> LoaderPosition:
        if pos.batch + 1 >= self.batches_per_epoch:
            return LoaderPosition(pos.epoch + 1, 0)
        return LoaderPosition(pos.epoch, pos.batch + 1)

    def epoch_batches(self, epoch: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, without moving `position` (for validation)."""
        saved = self._position
        self._position = LoaderPosition(epoch, 0)
        try:
            yield from self.batches(self.batches_per_epoch)
        finally:
            self._position = saved

    def device_batches(
        self, sharding: jax.sharding.Sharding | None = None, num_batches: int | None = None
    ) -> Iterator[Batch]:
        """`batches()` as global arrays with `sharding` (batch dim first; every process passes its
        rows); string leaves are dropped."""
        for batch in self.batches(num_batches):
            yield to_device(batch, sharding, self.batch_size)

    def state(self) -> dict[str, Any]:
        """This process's loader state: position, rows, and what fixes the global sequence."""
        return {
            **self._position.to_dict(),
            "rows": [int(r) for r in self.rows],
            "global_batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_frames": len(self.dataset),
        }

    def save_state(self, directory: str | os.PathLike) -> Path:
        """Write `state()` to `<directory>/loader/process_<i>-of-<n>.json` (one file per process)."""
        path = _state_path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state()))
        os.replace(tmp, path)
        return path

    def restore_state(self, directory: str | os.PathLike) -> bool:
        """Continue from this process's saved state in `directory` (False if it has none).

        Raises if the seed, batch size, shuffling or dataset differ (the sequence would not be the
        one saved). Other rows (another process layout) are fine: the position is global.
        """
        path = _state_path(directory)
        if not path.is_file():
            return False
        saved = json.loads(path.read_text())
        current = self.state()
        changed = [
            k for k in ("global_batch_size", "seed", "shuffle", "dataset_frames") if saved[k] != current[k]
        ]
        if changed:
            raise UserError(
                f"{path}: the loader was saved with "
                + ", ".join(f"{k}={saved[k]!r}" for k in changed)
                + f", now {', '.join(f'{k}={current[k]!r}' for k in changed)}; resuming would not continue its "
                "batch sequence: restore those settings, or start a new run"
            )
        if saved["rows"] != current["rows"]:
            log.info(
                "%s: this process now reads other rows of each batch; the global position still resumes exactly",
                path,
            )
        self.set_position(LoaderPosition.from_dict(saved))
        return True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state_path(directory: str | os.PathLike) -> Path:
    index, count = jax.process_index(), jax.process_count()
    return Path(directory) / "loader" / f"process_{index}-of-{count}.json"


def to_device(
    batch: Batch, sharding: jax.sharding.Sharding | None = None, global_batch_size: int | None = None
) -> Batch:
    """The numeric leaves of a host batch on devices (strings, e.g. an untokenised prompt, are
    dropped). With a sharding over several processes, `batch` holds this process's rows and the
    global arrays ([global_batch_size, ...]) are assembled from every process's."""
    numeric = _drop_strings(batch)
    if sharding is None:
        return jax.device_put(numeric)
    if sharding.is_fully_addressable:
        return jax.device_put(numeric, sharding)
    from pirl.distributed.multihost import host_local_batch_to_global

    return host_local_batch_to_global(numeric, sharding, global_batch_size)


def _drop_strings(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _drop_strings(v) for k, v in tree.items() if not _is_string(v)}
    return tree


def _is_string(x: Any) -> bool:
    return isinstance(x, str | bytes) or (isinstance(x, np.ndarray) and x.dtype.kind in "USO")

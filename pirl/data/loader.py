"""A multi-worker, prefetching, resumable batch loader.

Worker threads each assemble whole batches (read + decode + transform + stack); PIL, pyarrow and
PyAV release the GIL while decoding, so threads scale on the heavy parts. Batches come out in a
deterministic order: epoch `e` visits `permutation(seed, e)` of the frames in chunks of
`batch_size` (the last partial batch is dropped), so a `LoaderPosition(epoch, batch)` saved with a
checkpoint resumes the exact sequence. `device_batches` puts each batch on devices with a given
sharding (uint8 images travel as uint8; the model converts them to [-1, 1]).

```python
dataset = LeRobotDataset(root, delta_timestamps={"actions": [t / fps for t in range(H)]})
loader = BatchLoader(dataset, transform, batch_size=32, seed=0, num_workers=2)
for batch in loader.device_batches(sharding):       # {"image", "image_mask", "state", ..., "actions"}
    ...
    position = loader.position                       # save with the checkpoint
```
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import numpy as np

Batch = dict[str, Any]


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
      batch_size: samples per batch (global batch on a single host).
      seed: shuffling seed; epoch e uses permutation(seed, e).
      shuffle: False visits frames in order (validation).
      num_workers: threads assembling batches; 0 assembles in the calling thread.
      prefetch: batches requested ahead of the consumer (at least num_workers).
      position: where to start (a saved `LoaderPosition`).
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
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(
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
        """Frame indices int64[batch_size] of the batch at `position`."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, position.epoch]).permutation(n)
        else:
            order = np.arange(n)
        start = position.batch * self.batch_size
        return order[start : start + self.batch_size]

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
        """Host (numpy) batches from the current position; endless unless `num_batches` is given."""
        positions = self._positions(self._position, num_batches)
        if self._pool is None:
            for pos in positions:
                batch = self.load_batch(self.batch_indices(pos))
                self._position = self._after(pos)
                yield batch
            return
        pending: collections.deque[tuple[LoaderPosition, concurrent.futures.Future]] = collections.deque()
        try:
            for pos in positions:
                pending.append((pos, self._pool.submit(self.load_batch, self.batch_indices(pos))))
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
        """`batches()` placed on devices with `sharding` (batch dim first); string leaves are dropped."""
        for batch in self.batches(num_batches):
            yield to_device(batch, sharding)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_device(batch: Batch, sharding: jax.sharding.Sharding | None = None) -> Batch:
    """device_put the numeric leaves of a host batch (strings, e.g. an untokenised prompt, are dropped)."""
    numeric = _drop_strings(batch)
    return jax.device_put(numeric, sharding) if sharding is not None else jax.device_put(numeric)


def _drop_strings(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _drop_strings(v) for k, v in tree.items() if not _is_string(v)}
    return tree


def _is_string(x: Any) -> bool:
    return isinstance(x, str | bytes) or (isinstance(x, np.ndarray) and x.dtype.kind in "USO")

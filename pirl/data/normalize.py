"""Normalisation statistics: `NormStats`, streaming computation, and openpi's norm_stats.json format.

The file is `{"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
"actions": {...}}}`, stored at `<assets_dir>/<config_name>/<repo_id>/norm_stats.json` (openpi's layout;
a checkpoint keeps a copy under `<ckpt>/<step>/assets/<repo_id>/`).

`RunningStats` follows openpi's algorithm: running mean and mean of squares, and per-dimension
5,000-bin histograms whose range grows with the data (existing counts are re-binned when the range
widens); a quantile is the left edge of the bin where the cumulative count reaches q·n, i.e. the
inverted-CDF quantile up to about a bin width of the final range.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

NUM_QUANTILE_BINS = 5000

logger = logging.getLogger(__name__)


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["mean", "std", "q01", "q99"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one array (state or actions)."""

    mean: Float[np.ndarray, " d"]
    std: Float[np.ndarray, " d"]
    q01: Float[np.ndarray, " d"] | None = None
    q99: Float[np.ndarray, " d"] | None = None

    def to_json(self) -> dict[str, list[float]]:
        out = {"mean": self.mean, "std": self.std, "q01": self.q01, "q99": self.q99}
        return {k: np.asarray(v, np.float64).tolist() for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, list[float]], where: str = "norm_stats") -> NormStats:
        for key in ("mean", "std"):
            if key not in data:
                raise ValueError(f"{where}: missing {key!r} (has {sorted(data)})")
        arrays = {
            k: np.asarray(data[k], np.float32) if data.get(k) is not None else None
            for k in ("mean", "std", "q01", "q99")
        }
        return cls(**arrays)


def _xp(x):
    """jnp for JAX arrays (and tracers inside jit), numpy otherwise: one formula serves both."""
    return jnp if isinstance(x, jax.Array) else np


def normalize_values(x, stats: NormStats, use_quantiles: bool = False):
    """openpi's Normalize over the last axis, on numpy or JAX arrays; the stats are cut to x's width.

    z-score: (x - mean) / (std + 1e-6); quantile: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1.
    """
    xp, d = _xp(x), x.shape[-1]
    if use_quantiles:
        q01, q99 = xp.asarray(stats.q01)[..., :d], xp.asarray(stats.q99)[..., :d]
        return ((x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0).astype(xp.float32)
    mean, std = xp.asarray(stats.mean)[..., :d], xp.asarray(stats.std)[..., :d]
    return ((x - mean) / (std + 1e-6)).astype(xp.float32)


def unnormalize_values(x, stats: NormStats, use_quantiles: bool = False):
    """openpi's Unnormalize over the last axis, on numpy or JAX arrays.

    z-score: x * (std + 1e-6) + mean, with the stats padded (mean 0, std 1) to x's width; quantile:
    (x + 1) / 2 * (q99 - q01 + 1e-6) + q01 on the stats' dims, further dims left as they are.
    """
    xp, d = _xp(x), x.shape[-1]
    if use_quantiles:
        q01, q99 = xp.asarray(stats.q01), xp.asarray(stats.q99)
        k = min(q01.shape[-1], d)
        head = (x[..., :k] + 1.0) / 2.0 * (q99[..., :k] - q01[..., :k] + 1e-6) + q01[..., :k]
        return xp.concatenate([head, x[..., k:]], axis=-1).astype(xp.float32)
    mean, std = xp.asarray(stats.mean)[..., :d], xp.asarray(stats.std)[..., :d]
    pad = [(0, 0)] * (mean.ndim - 1) + [(0, d - mean.shape[-1])]
    mean, std = xp.pad(mean, pad), xp.pad(std, pad, constant_values=1.0)
    return (x * (std + 1e-6) + mean).astype(xp.float32)


def stats_dims(norm_stats: Mapping[str, NormStats], key: str) -> int:
    """Width of the stats of `key` (e.g. 8 for openpi's LIBERO state)."""
    return int(np.shape(norm_stats[key].mean)[-1])


class RunningStats:
    """Streaming mean / std / q01 / q99 over the last axis of batches of vectors (openpi's method)."""

    def __init__(self, num_bins: int = NUM_QUANTILE_BINS):
        self.num_bins = num_bins
        self.count = 0
        self.mean: np.ndarray | None = None
        self.mean_of_squares: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.histograms: np.ndarray | None = None  # [d, num_bins]
        self.bin_edges: np.ndarray | None = None  # [d, num_bins + 1]

    def update(self, batch: Float[np.ndarray, "... d"]) -> None:
        """Add vectors; all axes but the last are batch axes."""
        batch = np.asarray(batch, np.float64)
        batch = batch.reshape(-1, batch.shape[-1])
        n, d = batch.shape
        if n == 0:
            return
        batch_min, batch_max = batch.min(0), batch.max(0)
        if self.count == 0:
            self.mean = np.zeros(d)
            self.mean_of_squares = np.zeros(d)
            self.min, self.max = batch_min, batch_max
            self.histograms = np.zeros((d, self.num_bins))
            self.bin_edges = np.stack(
                [
                    np.linspace(lo - 1e-10, hi + 1e-10, self.num_bins + 1)
                    for lo, hi in zip(self.min, self.max, strict=True)
                ]
            )
        else:
            if d != self.mean.size:
                raise ValueError(f"vectors of size {d} after vectors of size {self.mean.size}")
            if np.any(batch_max > self.max) or np.any(batch_min < self.min):
                self.min = np.minimum(self.min, batch_min)
                self.max = np.maximum(self.max, batch_max)
                self._rebin()
        self.count += n
        self.mean += (batch.mean(0) - self.mean) * (n / self.count)
        self.mean_of_squares += ((batch**2).mean(0) - self.mean_of_squares) * (n / self.count)
        for i in range(d):
            self.histograms[i] += np.histogram(batch[:, i], bins=self.bin_edges[i])[0]

    def _rebin(self) -> None:
        # Move each old bin's count to the new bin holding the old bin's centre. (openpi re-bins by
        # the old left edges, which lie 1e-10 below the new range on the first re-bin and so drop
        # the lowest bin's counts; centres, clipped into the new range, keep every count.)
        for i in range(self.histograms.shape[0]):
            new_edges = np.linspace(self.min[i], self.max[i], self.num_bins + 1)
            old = self.bin_edges[i]
            centres = np.clip((old[:-1] + old[1:]) / 2, new_edges[0], new_edges[-1])
            self.histograms[i] = np.histogram(centres, bins=new_edges, weights=self.histograms[i])[0]
            self.bin_edges[i] = new_edges

    def quantiles(self, qs: tuple[float, ...]) -> list[np.ndarray]:
        out = []
        for q in qs:
            target = q * self.count
            values = []
            for hist, edges in zip(self.histograms, self.bin_edges, strict=True):
                values.append(edges[np.searchsorted(np.cumsum(hist), target)])
            out.append(np.asarray(values))
        return out

    def bin_width(self) -> np.ndarray:
        """Width of one histogram bin per dimension: the quantiles' resolution."""
        return self.bin_edges[:, 1] - self.bin_edges[:, 0]

    def get_statistics(self) -> NormStats:
        if self.count < 2:
            raise ValueError(f"need at least 2 vectors to compute statistics, got {self.count}")
        std = np.sqrt(np.maximum(0.0, self.mean_of_squares - self.mean**2))
        q01, q99 = self.quantiles((0.01, 0.99))
        return NormStats(mean=self.mean, std=std, q01=q01, q99=q99)


def widen_small_ranges(
    name: str,
    stats: NormStats,
    min_std: float = 0.0,
    min_quantile_range: float = 0.0,
    warn_below: float = 1e-3,
) -> NormStats:
    """Warn about dims with a tiny std or q01–q99 range; raise them to `min_std` / `min_quantile_range`.

    A constant dimension (e.g. an unused gripper joint) normalises to huge values otherwise. The
    quantile range is widened symmetrically around its centre.
    """
    std = np.asarray(stats.std, np.float64).copy()
    for i in np.flatnonzero(std < max(warn_below, min_std)):
        action = f"; raised to --min-std {min_std}" if std[i] < min_std else "; pass --min-std to widen it"
        logger.warning("%s dim %d: std %.3g is tiny%s", name, i, std[i], action)
    std = np.maximum(std, min_std)
    q01, q99 = stats.q01, stats.q99
    if q01 is not None and q99 is not None:
        q01, q99 = np.asarray(q01, np.float64).copy(), np.asarray(q99, np.float64).copy()
        width = q99 - q01
        for i in np.flatnonzero(width < max(warn_below, min_quantile_range)):
            action = (
                f"; widened to --min-quantile-range {min_quantile_range}"
                if width[i] < min_quantile_range
                else "; pass --min-quantile-range to widen it"
            )
            logger.warning("%s dim %d: q01–q99 range %.3g is narrow%s", name, i, width[i], action)
        grow = np.maximum(min_quantile_range - width, 0.0) / 2
        q01, q99 = q01 - grow, q99 + grow
    return NormStats(mean=stats.mean, std=std, q01=q01, q99=q99)


def serialize_json(norm_stats: Mapping[str, NormStats]) -> str:
    return json.dumps({"norm_stats": {k: v.to_json() for k, v in norm_stats.items()}}, indent=2)


def deserialize_json(text: str, where: str = "norm_stats.json") -> dict[str, NormStats]:
    data = json.loads(text)
    if "norm_stats" not in data:
        raise ValueError(f"{where}: missing top-level key 'norm_stats' (openpi's format)")
    return {k: NormStats.from_json(v, f"{where} [{k}]") for k, v in data["norm_stats"].items()}


def save_norm_stats(directory: str | os.PathLike, norm_stats: Mapping[str, NormStats]) -> Path:
    """Write `<directory>/norm_stats.json`; returns the file path."""
    path = Path(directory) / "norm_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(serialize_json(norm_stats))
    return path


def load_norm_stats(directory: str | os.PathLike, asset_id: str | None = None) -> dict[str, NormStats]:
    """Read norm_stats.json from `directory` (or `directory/asset_id`).

    `directory` may be the folder holding the file, an assets dir plus `asset_id` (openpi's
    `<assets>/<asset_id>/norm_stats.json`), or a checkpoint step dir (`<step>/assets/<asset_id>/`;
    with no asset_id the single norm_stats.json under `assets/` is used).
    """
    base = Path(directory).expanduser()
    candidates = [base / asset_id, base / "assets" / asset_id] if asset_id else [base]
    if not asset_id and (base / "assets").is_dir():
        candidates += sorted(p.parent for p in (base / "assets").rglob("norm_stats.json"))
    for folder in candidates:
        path = folder / "norm_stats.json"
        if path.is_file():
            return deserialize_json(path.read_text(), str(path))
    raise FileNotFoundError(
        f"no norm_stats.json in {[str(c) for c in candidates]}; compute it with "
        "`python -m pirl.norm_stats --config-name <config> --repo-id <dataset>`"
    )

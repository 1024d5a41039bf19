"""Read and write LeRobot v2.x datasets without lerobot (and without torch).

Layout (LeRobot codebase v2.0 / v2.1)::

    <root>/meta/info.json            fps, features, path templates, totals
    <root>/meta/episodes.jsonl       {"episode_index", "tasks", "length"} per episode
    <root>/meta/tasks.jsonl          {"task_index", "task"} per task
    <root>/meta/stats.json           optional (v2.0), global stats per feature
    <root>/meta/episodes_stats.jsonl optional (v2.1), per-episode stats
    <root>/data/chunk-XXX/episode_XXXXXX.parquet
    <root>/videos/chunk-XXX/<key>/episode_XXXXXX.mp4     (features with dtype "video")

A dataset is named by a local path or by a repo id under `HF_LEROBOT_HOME`
(default ~/.cache/huggingface/lerobot). Images come back as uint8 [H, W, 3] (not lerobot's float CHW);
numeric features as numpy arrays; features of shape (1,) as scalars. Action chunks are assembled
like lerobot's `delta_timestamps`: future frames of the same episode, the last frame repeated past
the episode end, with a boolean `<key>_is_pad`.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CODEBASE_VERSION = "v2.1"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
# Columns every LeRobot frame carries; the writer adds them.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_VISUAL_DTYPES = ("image", "video")


class LeRobotFormatError(ValueError):
    """A dataset file is missing, or a key in it is missing or has the wrong shape."""


def lerobot_home() -> Path:
    """`$HF_LEROBOT_HOME`, default ~/.cache/huggingface/lerobot."""
    return Path(os.environ.get("HF_LEROBOT_HOME", "~/.cache/huggingface/lerobot")).expanduser()


def resolve_root(repo_id_or_path: str | os.PathLike) -> Path:
    """The dataset folder: a local path if it holds meta/info.json, else `lerobot_home() / repo_id`."""
    path = Path(repo_id_or_path).expanduser()
    if (path / "meta" / "info.json").is_file():
        return path
    cached = lerobot_home() / str(repo_id_or_path)
    if (cached / "meta" / "info.json").is_file():
        return cached
    raise LeRobotFormatError(
        f"no LeRobot dataset at {str(repo_id_or_path)!r}: neither {path / 'meta' / 'info.json'} nor "
        f"{cached / 'meta' / 'info.json'} exists. Pass a dataset folder, or a repo id downloaded under "
        "HF_LEROBOT_HOME (default ~/.cache/huggingface/lerobot)."
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeRobotFormatError(f"{path} is not valid JSON: {e}") from e


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path}")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LeRobotFormatError(f"{path}:{line_no} is not valid JSON: {e}") from e
    return rows


def _require(mapping: Mapping, key: str, where: Path | str, what: str = "key") -> Any:
    if key not in mapping:
        raise LeRobotFormatError(f"{where}: missing {what} {key!r} (present: {sorted(mapping)})")
    return mapping[key]


@dataclass(frozen=True)
class LeRobotMetadata:
    """The parsed meta/ folder of a dataset."""

    root: Path
    info: dict[str, Any]
    fps: float
    features: dict[str, dict[str, Any]]
    tasks: dict[int, str]
    episodes: tuple[dict[str, Any], ...]
    stats: dict[str, Any] | None

    @property
    def image_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def numeric_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] not in (*_VISUAL_DTYPES, "string")]

    def episode_chunk(self, episode_index: int) -> int:
        return episode_index // int(self.info.get("chunks_size", DEFAULT_CHUNK_SIZE))

    def data_path(self, episode_index: int) -> Path:
        template = self.info.get("data_path", DEFAULT_DATA_PATH)
        rel = template.format(episode_chunk=self.episode_chunk(episode_index), episode_index=episode_index)
        return self.root / rel

    def video_path(self, episode_index: int, key: str) -> Path:
        template = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        rel = template.format(
            episode_chunk=self.episode_chunk(episode_index), video_key=key, episode_index=episode_index
        )
        return self.root / rel


def load_metadata(repo_id_or_path: str | os.PathLike) -> LeRobotMetadata:
    """Parse meta/ of a dataset; a missing file or key raises `LeRobotFormatError` naming both."""
    root = resolve_root(repo_id_or_path)
    info_path = root / "meta" / "info.json"
    info = _read_json(info_path)
    fps = float(_require(info, "fps", info_path))
    features = _require(info, "features", info_path)
    for key, ft in features.items():
        _require(ft, "dtype", f"{info_path} features[{key!r}]", "field")
        if "shape" not in ft:
            raise LeRobotFormatError(f"{info_path}: feature {key!r} has no 'shape'")
        ft["shape"] = [int(s) for s in ft["shape"]]
    tasks_path = root / "meta" / "tasks.jsonl"
    tasks = {}
    for row in _read_jsonl(tasks_path):
        tasks[int(_require(row, "task_index", tasks_path))] = str(_require(row, "task", tasks_path))
    episodes_path = root / "meta" / "episodes.jsonl"
    episodes = sorted(_read_jsonl(episodes_path), key=lambda r: r.get("episode_index", -1))
    for row in episodes:
        _require(row, "episode_index", episodes_path)
        _require(row, "length", episodes_path)
    stats_path = root / "meta" / "stats.json"
    stats = _read_json(stats_path) if stats_path.is_file() else None
    return LeRobotMetadata(
        root=root,
        info=info,
        fps=fps,
        features=features,
        tasks=tasks,
        episodes=tuple(episodes),
        stats=stats,
    )


def _column_to_numpy(table: pa.Table, key: str, shape: Sequence[int], path: Path) -> np.ndarray:
    """One numeric column as [N, *shape] (shape (1,) -> [N]); a wrong shape names file and key."""
    if key not in table.column_names:
        raise LeRobotFormatError(f"{path}: missing column {key!r} (columns: {table.column_names})")
    column = table.column(key).combine_chunks()
    n = len(column)
    if (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or (pa.types.is_large_list(column.type))
    ):
        values = column.flatten()
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        flat = values.to_numpy(zero_copy_only=False)
        want = int(np.prod(shape))
        if flat.size != n * want:
            got = flat.size // max(n, 1)
            raise LeRobotFormatError(
                f"{path}: column {key!r} has {got} values per frame, info.json says shape {list(shape)}"
            )
        return flat.reshape(n, *shape) if list(shape) != [1] else flat.reshape(n)
    flat = column.to_numpy(zero_copy_only=False)
    if list(shape) != [1]:
        raise LeRobotFormatError(f"{path}: column {key!r} holds scalars, info.json says shape {list(shape)}")
    return flat


def _decode_image(cell: Mapping[str, Any] | bytes | None, root: Path, path: Path, key: str) -> np.ndarray:
    if isinstance(cell, Mapping):
        data = cell.get("bytes")
        if data is None and cell.get("path"):
            image_path = Path(cell["path"])
            image_path = image_path if image_path.is_absolute() else root / image_path
            data = image_path.read_bytes()
    else:
        data = cell
    if data is None:
        raise LeRobotFormatError(f"{path}: image column {key!r} has a frame with neither bytes nor path")
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_video_frames(
    video_path: Path, timestamps: Sequence[float], tolerance_s: float = 1e-4
) -> np.ndarray:
    """Frames of an mp4 at the given timestamps (seconds) as uint8 [N, H, W, 3].

    Seeks to the key frame before the first timestamp and decodes forward (lerobot's semantics);
    a timestamp farther than `tolerance_s` from every decoded frame raises.
    """
    import av

    if not video_path.is_file():
        raise LeRobotFormatError(f"missing video file {video_path}")
    first, last = min(timestamps), max(timestamps)
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if first > 0:
            container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(t)
            if t >= last - tolerance_s:
                break
    if not frames:
        raise LeRobotFormatError(f"{video_path}: no frames decoded at timestamps {list(timestamps)}")
    times_arr = np.asarray(times)
    out = []
    for t in timestamps:
        i = int(np.argmin(np.abs(times_arr - t)))
        if abs(times_arr[i] - t) > tolerance_s:
            raise LeRobotFormatError(
                f"{video_path}: no frame within {tolerance_s}s of timestamp {t:.4f}s (closest {times_arr[i]:.4f}s)"
            )
        out.append(frames[i])
    return np.stack(out)


class LeRobotDataset:
    """Random access to the frames of a LeRobot v2.x dataset.

    Numeric columns of all episodes are read at construction (small); images are decoded per
    request, from parquet (PNG/JPEG bytes, the last `cache_episodes` episodes' columns cached) or
    from video by timestamp. `item = dataset[i]` is a flat dict keyed by feature name, plus "task".

    Args:
      repo_id_or_path: dataset folder or repo id under HF_LEROBOT_HOME.
      delta_timestamps: {feature: [seconds, ...]} to return that feature as a chunk [len, *shape]
        of frames at those offsets (lerobot's convention), with `<feature>_is_pad` bool[len].
      episodes: restrict to these episode indices (e.g. a train/val split); default all.
      load_images: False skips image and video features (fast access to numeric columns).
      video_tolerance_s: maximum distance between a requested and a decoded video timestamp.
    """

    def __init__(
        self,
        repo_id_or_path: str | os.PathLike,
        *,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        episodes: Sequence[int] | None = None,
        load_images: bool = True,
        video_tolerance_s: float = 1e-4,
        cache_episodes: int = 8,
    ):
        self.meta = load_metadata(repo_id_or_path)
        self.load_images = load_images
        self.video_tolerance_s = video_tolerance_s
        self.delta_indices: dict[str, np.ndarray] = {}
        for key, offsets in (delta_timestamps or {}).items():
            if key not in self.meta.features:
                raise LeRobotFormatError(
                    f"{self.meta.root / 'meta' / 'info.json'}: delta_timestamps key {key!r} is not a feature "
                    f"(features: {sorted(self.meta.features)})"
                )
            self.delta_indices[key] = np.asarray([round(t * self.meta.fps) for t in offsets], np.int64)

        all_episodes = {int(e["episode_index"]): e for e in self.meta.episodes}
        if episodes is None:
            selected = sorted(all_episodes)
        else:
            missing = [e for e in episodes if e not in all_episodes]
            if missing:
                raise LeRobotFormatError(
                    f"{self.meta.root / 'meta' / 'episodes.jsonl'}: episodes {missing} are not in the dataset"
                )
            selected = list(episodes)
        self.episode_indices: list[int] = selected

        columns: dict[str, list[np.ndarray]] = {k: [] for k in self.meta.numeric_keys}
        lengths = []
        for ep in selected:
            path = self.meta.data_path(ep)
            if not path.is_file():
                raise LeRobotFormatError(f"missing data file {path} (episode {ep})")
            names = set(_schema_names(path))
            table = pq.read_table(path, columns=[k for k in columns if k in names])
            for key in columns:
                columns[key].append(_column_to_numpy(table, key, self.meta.features[key]["shape"], path))
            lengths.append(table.num_rows)
            declared = int(all_episodes[ep]["length"])
            if table.num_rows != declared:
                raise LeRobotFormatError(
                    f"{path}: {table.num_rows} frames, but meta/episodes.jsonl says length {declared} for "
                    f"episode {ep}"
                )
        self.columns: dict[str, np.ndarray] = {
            k: np.concatenate(v) if v else np.zeros((0,)) for k, v in columns.items()
        }
        self.episode_ends = np.cumsum(lengths, dtype=np.int64)
        self.episode_starts = self.episode_ends - np.asarray(lengths, np.int64)
        self._cache: collections.OrderedDict[tuple[int, str], list] = collections.OrderedDict()
        self._cache_size = cache_episodes
        self._cache_lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def fps(self) -> float:
        return self.meta.fps

    @property
    def tasks(self) -> dict[int, str]:
        return self.meta.tasks

    def episode_range(self, position: int) -> tuple[int, int]:
        """[start, end) global frame indices of the `position`-th selected episode."""
        return int(self.episode_starts[position]), int(self.episode_ends[position])

    def _episode_position(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range [0, {len(self)})")
        return int(np.searchsorted(self.episode_ends, index, side="right"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        pos = self._episode_position(index)
        start, end = self.episode_range(pos)
        item: dict[str, Any] = {}
        frame_rows: dict[str, np.ndarray] = {}
        for key, offsets in self.delta_indices.items():
            query = index + offsets
            frame_rows[key] = np.clip(query, start, end - 1)
            item[f"{key}_is_pad"] = (query < start) | (query >= end)
        for key, column in self.columns.items():
            item[key] = column[frame_rows[key]] if key in frame_rows else column[index]
        if self.load_images:
            for key in self.meta.image_keys:
                rows = frame_rows.get(key, np.asarray([index]))
                images = np.stack([self._parquet_image(pos, key, int(r - start)) for r in rows])
                item[key] = images if key in frame_rows else images[0]
            for key in self.meta.video_keys:
                rows = frame_rows.get(key, np.asarray([index]))
                timestamps = [float(self.columns["timestamp"][r]) for r in rows]
                ep = self.episode_indices[pos]
                path = self.meta.video_path(ep, key)
                images = decode_video_frames(path, timestamps, self.video_tolerance_s)
                self._check_image_shape(images[0], key, path)
                item[key] = images if key in frame_rows else images[0]
        if "task_index" in item:
            item["task"] = self.meta.tasks.get(int(item["task_index"]), "")
        return item

    def _check_image_shape(self, image: np.ndarray, key: str, path: Path) -> None:
        shape = self.meta.features[key]["shape"]
        names = self.meta.features[key].get("names") or []
        # LeRobot writes [H, W, C] with names (height, width, channels); some converters store CHW.
        want = tuple(shape) if list(names)[:1] != ["channels"] else (shape[1], shape[2], shape[0])
        if image.shape != want:
            raise LeRobotFormatError(
                f"{path}: {key!r} frames decode to shape {image.shape}, info.json says {list(shape)}"
            )

    def _parquet_image(self, position: int, key: str, row: int) -> np.ndarray:
        ep = self.episode_indices[position]
        path = self.meta.data_path(ep)
        cells = self._image_column(ep, key, path)
        image = _decode_image(cells[row], self.meta.root, path, key)
        self._check_image_shape(image, key, path)
        return image

    def _image_column(self, ep: int, key: str, path: Path) -> list:
        with self._cache_lock:
            if (ep, key) in self._cache:
                self._cache.move_to_end((ep, key))
                return self._cache[(ep, key)]
        if key not in _schema_names(path):
            raise LeRobotFormatError(f"{path}: missing image column {key!r}")
        cells = pq.read_table(path, columns=[key]).column(key).to_pylist()
        with self._cache_lock:
            self._cache[(ep, key)] = cells
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cells

    def episode_columns(self, position: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Whole numeric columns of the `position`-th selected episode: {key: [T, *shape]}."""
        start, end = self.episode_range(position)
        out = {}
        for key in keys:
            if key not in self.columns:
                raise LeRobotFormatError(
                    f"{self.meta.root / 'meta' / 'info.json'}: no numeric feature {key!r} "
                    f"(numeric features: {sorted(self.columns)})"
                )
            out[key] = self.columns[key][start:end]
        return out


def _schema_names(path: Path) -> list[str]:
    return pq.read_schema(path).names


# --------------------------------------------------------------------------------------------------
# Writer


def _infer_features(episode: Mapping[str, Any], use_videos: bool) -> dict[str, dict[str, Any]]:
    features = {}
    for key, value in episode.items():
        if key == "task":
            continue
        arr = np.asarray(value)
        if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3:
            features[key] = {
                "dtype": "video" if use_videos else "image",
                "shape": list(arr.shape[1:]),
                "names": ["height", "width", "channels"],
            }
        elif arr.ndim in (1, 2):
            dtype = "float32" if np.issubdtype(arr.dtype, np.floating) else str(arr.dtype)
            features[key] = {"dtype": dtype, "shape": [1] if arr.ndim == 1 else [arr.shape[1]], "names": None}
        else:
            raise ValueError(
                f"cannot infer a LeRobot feature for key {key!r} of shape {arr.shape}: give `features`"
            )
    return features


def _hf_feature(ft: Mapping[str, Any]) -> dict[str, Any]:
    if ft["dtype"] == "image":
        return {"_type": "Image"}
    if list(ft["shape"]) == [1]:
        return {"dtype": ft["dtype"], "_type": "Value"}
    return {
        "feature": {"dtype": ft["dtype"], "_type": "Value"},
        "length": ft["shape"][0],
        "_type": "Sequence",
    }


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _pick_video_codec(preferred: str | None) -> str:
    import av

    for name in [preferred] if preferred else ["libsvtav1", "libx264", "h264", "mpeg4"]:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError(f"no usable video encoder in PyAV (tried {preferred or 'libsvtav1, libx264, mpeg4'})")


def encode_video(frames: np.ndarray, path: Path, fps: float, codec: str | None = None) -> dict[str, Any]:
    """Encode uint8 [T, H, W, 3] frames as an mp4 (key frame every 2 frames, as lerobot does).

    Returns lerobot's `info` entry for the feature (codec, size, fps, pixel format).
    """
    import av

    codec = _pick_video_codec(codec)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config per file unless told not to
    if codec == "libsvtav1" and min(frames.shape[1:3]) < 64:
        codec = _pick_video_codec("libx264")  # SVT-AV1 rejects frames smaller than 64 pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 2
        if codec in ("libx264", "h264"):
            stream.options = {"crf": "18", "g": "2"}
        elif codec == "libsvtav1":
            stream.options = {"crf": "30", "g": "2"}
        else:
            stream.codec_context.bit_rate = 8_000_000
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 1) / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {
        "video.height": int(height),
        "video.width": int(width),
        "video.codec": {"libx264": "h264", "libsvtav1": "av1"}.get(codec, codec),
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": float(fps),
        "video.channels": 3,
        "has_audio": False,
    }


def _feature_stats(values: np.ndarray, visual: bool) -> dict[str, Any]:
    if visual:  # per channel, in [0, 1], shaped (3, 1, 1) as lerobot's episodes_stats
        x = values.astype(np.float64) / 255.0
        reduce = dict(axis=(0, 1, 2))
        stats = {
            "min": x.min(**reduce),
            "max": x.max(**reduce),
            "mean": x.mean(**reduce),
            "std": x.std(**reduce),
        }
        stats = {k: v.reshape(3, 1, 1).tolist() for k, v in stats.items()}
    else:
        x = values.astype(np.float64).reshape(len(values), -1)
        stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
        stats = {k: v.tolist() for k, v in stats.items()}
    stats["count"] = [len(values)]
    return stats


def write_lerobot_dataset(
    root: str | os.PathLike,
    episodes: Sequence[Mapping[str, Any]],
    fps: float,
    features: Mapping[str, Mapping[str, Any]] | None = None,
    tasks: Sequence[str] | None = None,
    use_videos: bool = False,
    *,
    robot_type: str | None = None,
    video_codec: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write episodes as a LeRobot v2.1 dataset that this reader and lerobot both read.

    Args:
      root: output folder (created; must not hold a dataset unless `overwrite`).
      episodes: one dict per episode: {feature: array [T, ...]} with the same T for every feature,
        plus "task": the episode's language instruction (str). Images are uint8 [T, H, W, 3];
        vectors [T, D]; scalars [T].
      fps: frames per second (timestamps are frame_index / fps).
      features: lerobot feature specs {key: {"dtype", "shape", "names"}}; inferred from the first
        episode when None (uint8 [T, H, W, 3] -> image, else float32/int vectors).
      tasks: task strings in task-index order; tasks of episodes not listed are appended.
      use_videos: store image features as mp4 videos (dtype "video") instead of PNG bytes in parquet.
      robot_type, video_codec: written to info.json / used for encoding (default: first of
        libsvtav1, libx264, mpeg4 that PyAV can encode).

    Returns the dataset root.
    """
    root = Path(root).expanduser()
    if not episodes:
        raise ValueError("write_lerobot_dataset: `episodes` is empty")
    if (root / "meta" / "info.json").exists():
        if not overwrite:
            raise FileExistsError(f"{root} already holds a dataset; pass overwrite=True to replace it")
        shutil.rmtree(root)
    features = {k: dict(v) for k, v in (features or _infer_features(episodes[0], use_videos)).items()}
    for key, ft in features.items():
        if use_videos and ft["dtype"] == "image":
            ft["dtype"] = "video"
        ft["shape"] = [int(s) for s in ft["shape"]]
        ft.setdefault("names", None)
        if ft["dtype"] not in _VISUAL_DTYPES and len(ft["shape"]) > 1:
            raise ValueError(
                f"feature {key!r}: only scalars and vectors are supported, got shape {ft['shape']}"
            )
    user_keys = [k for k in features if k not in DEFAULT_FEATURES]
    all_features = {**features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}

    task_list = list(tasks or [])
    for i, episode in enumerate(episodes):
        task = episode.get("task")
        if not isinstance(task, str):
            raise ValueError(f"episode {i}: 'task' must be the episode's instruction string, got {task!r}")
        if task not in task_list:
            task_list.append(task)
    task_index = {t: i for i, t in enumerate(task_list)}

    (root / "meta").mkdir(parents=True, exist_ok=True)
    hf_meta = json.dumps(
        {
            "info": {
                "features": {
                    k: _hf_feature(all_features[k])
                    for k in all_features
                    if all_features[k]["dtype"] != "video"
                }
            }
        }
    )
    episodes_rows, stats_rows = [], []
    global_index = 0
    sums: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for ep, episode in enumerate(episodes):
        missing = [k for k in user_keys if k not in episode]
        if missing:
            raise ValueError(f"episode {ep}: missing features {missing} (has {sorted(episode)})")
        length = len(np.asarray(episode[user_keys[0]]))
        if length == 0:
            raise ValueError(f"episode {ep}: no frames")
        chunk = ep // DEFAULT_CHUNK_SIZE
        arrays: dict[str, pa.Array] = {}
        ep_stats: dict[str, Any] = {}
        for key in user_keys:
            ft = features[key]
            value = np.asarray(episode[key])
            want = (length, *ft["shape"]) if ft["shape"] != [1] else (length,)
            if ft["shape"] == [1] and value.shape == (length, 1):
                value = value[:, 0]
            if value.shape != want:
                raise ValueError(f"episode {ep}: feature {key!r} has shape {value.shape}, expected {want}")
            if ft["dtype"] in _VISUAL_DTYPES:
                if value.dtype != np.uint8:
                    raise ValueError(f"episode {ep}: image feature {key!r} must be uint8, got {value.dtype}")
                ep_stats[key] = _feature_stats(value, visual=True)
                if ft["dtype"] == "video":
                    rel = DEFAULT_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=ep)
                    ft["info"] = encode_video(value, root / rel, fps, video_codec)
                else:
                    cells = [
                        {"bytes": _encode_png(img), "path": f"frame_{i:06d}.png"}
                        for i, img in enumerate(value)
                    ]
                    arrays[key] = pa.array(
                        cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])
                    )
            else:
                value = value.astype(ft["dtype"])
                ep_stats[key] = _feature_stats(value, visual=False)
                sums[key].append(value.reshape(length, -1))
                if ft["shape"] == [1]:
                    arrays[key] = pa.array(value)
                else:
                    arrays[key] = pa.FixedSizeListArray.from_arrays(
                        pa.array(value.reshape(-1)), ft["shape"][0]
                    )
        frame_index = np.arange(length, dtype=np.int64)
        defaults = {
            "timestamp": (frame_index / fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, ep, np.int64),
            "index": global_index + frame_index,
            "task_index": np.full(length, task_index[episode["task"]], np.int64),
        }
        for key, value in defaults.items():
            arrays[key] = pa.array(value)
            ep_stats[key] = _feature_stats(value, visual=False)
        table = pa.table(arrays).replace_schema_metadata({"huggingface": hf_meta})
        data_path = root / DEFAULT_DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)
        episodes_rows.append({"episode_index": ep, "tasks": [episode["task"]], "length": length})
        stats_rows.append({"episode_index": ep, "stats": ep_stats})
        global_index += length

    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    for key in video_keys:
        all_features[key] = features[key]
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": global_index,
        "total_tasks": len(task_list),
        "total_videos": len(video_keys) * len(episodes),
        "total_chunks": math.ceil(len(episodes) / DEFAULT_CHUNK_SIZE),
        "chunks_size": DEFAULT_CHUNK_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DEFAULT_DATA_PATH,
        "video_path": DEFAULT_VIDEO_PATH if video_keys else None,
        "features": all_features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _write_jsonl(root / "meta" / "episodes.jsonl", episodes_rows)
    _write_jsonl(
        root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(task_list)]
    )
    _write_jsonl(root / "meta" / "episodes_stats.jsonl", stats_rows)
    global_stats = {}
    for key, parts in sums.items():
        x = np.concatenate(parts).astype(np.float64)
        global_stats[key] = {
            "min": x.min(0).tolist(),
            "max": x.max(0).tolist(),
            "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(),
            "count": [len(x)],
        }
    (root / "meta" / "stats.json").write_text(json.dumps(global_stats, indent=4))
    return root


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

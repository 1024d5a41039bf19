"""Read LeRobot datasets (codebase v2.0, v2.1 and v3.0) without lerobot (and without torch).

Layout v2.0 / v2.1 (lerobot <= 0.3; what openpi's pinned lerobot reads), one file per episode::

    <root>/meta/info.json            fps, features, path templates, totals
    <root>/meta/episodes.jsonl       {"episode_index", "tasks", "length"} per episode
    <root>/meta/tasks.jsonl          {"task_index", "task"} per task
    <root>/meta/stats.json           optional (v2.0), global stats per feature
    <root>/meta/episodes_stats.jsonl optional (v2.1), per-episode stats
    <root>/data/chunk-XXX/episode_XXXXXX.parquet
    <root>/videos/chunk-XXX/<key>/episode_XXXXXX.mp4     (features with dtype "video")

Layout v3.0 (lerobot >= 0.4), consecutive episodes packed into shared files::

    <root>/meta/info.json            as above, plus data_files_size_in_mb / video_files_size_in_mb
    <root>/meta/tasks.parquet        task strings (the pandas index) and their task_index
    <root>/meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode: episode_index, tasks,
                                     length, data/chunk_index, data/file_index, dataset_from_index,
                                     dataset_to_index, videos/<key>/{chunk_index, file_index,
                                     from_timestamp, to_timestamp}, stats/<feature>/<stat>, ...
    <root>/meta/stats.json           stats aggregated over all episodes
    <root>/data/chunk-XXX/file-XXX.parquet           the frames of consecutive episodes
    <root>/videos/<key>/chunk-XXX/file-XXX.mp4       the same; an episode's frame with timestamp t
                                     is at from_timestamp + t in its file

The version is read from meta/info.json ("codebase_version"). A dataset is named by a local
folder, or by a repo id: found under `HF_LEROBOT_HOME` (default ~/.cache/huggingface/lerobot),
else fetched from the Hugging Face Hub into it (`pirl.data.hub`; only the files a reader needs:
meta/, then the data files of the selected episodes and, when images are read, their videos).

Images come back as uint8 [H, W, 3] (not lerobot's float CHW); numeric features as numpy arrays;
features of shape (1,) as scalars. Action chunks are assembled like lerobot's `delta_timestamps`:
future frames of the same episode, the last frame repeated past the episode end, with a boolean
`<key>_is_pad`. Writing: `pirl.data.lerobot_writer`.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pirl.data import hub
from pirl.errors import UserError

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_CHUNK_SIZE = 1000
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_TASKS_PATH = "meta/tasks.parquet"
# Columns every LeRobot frame carries; the writer adds them.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VISUAL_DTYPES = ("image", "video")
_OPEN_VIDEOS_PER_THREAD = 8  # video files a loader thread keeps open (their index read once)
# Columns of v3.0's meta/episodes files that the reader needs (plus videos/<key>/... per video key).
V3_EPISODE_COLUMNS = (
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)


class LeRobotFormatError(UserError):
    """A dataset file is missing or unreadable, or a key in it is missing or has the wrong shape;
    the message names the file (and the episode, or the key) and what to do."""


_REPAIR = "re-download or re-convert it (from the Hub: delete it and it is fetched again)"
"""What to do about a corrupt or truncated dataset file (ends error messages)."""


def lerobot_home() -> Path:
    """`$HF_LEROBOT_HOME`, else `$HF_HOME/lerobot`, else ~/.cache/huggingface/lerobot (lerobot's rule)."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(hf_home).expanduser() / "lerobot"


def resolve_root(
    repo_id_or_path: str | os.PathLike, *, revision: str | None = None, progress: bool = True
) -> tuple[Path, str | None]:
    """(dataset folder, Hub repo id or None): a local folder holding meta/info.json, else
    `lerobot_home() / repo_id`, its meta/ fetched from the Hub if it is not there yet."""
    path = Path(repo_id_or_path).expanduser()
    if (path / "meta" / "info.json").is_file():
        return path, None
    name = str(repo_id_or_path)
    is_repo = hub.looks_like_repo_id(name) and not path.exists()
    cached = lerobot_home() / name
    if not path.is_absolute() and (cached / "meta" / "info.json").is_file():
        return cached, name if is_repo else None
    if not is_repo:
        where = f"{path / 'meta' / 'info.json'} does not exist"
        if not path.is_absolute():
            where += f" (nor {cached / 'meta' / 'info.json'})"
        raise LeRobotFormatError(
            f"no LeRobot dataset: {where}. Pass a dataset folder, or a Hub repo id "
            "('org/name'; fetched into HF_LEROBOT_HOME, default ~/.cache/huggingface/lerobot)."
        )
    try:
        files = hub.list_repo_files(name, revision)
    except hub.HubError as error:
        raise hub.HubError(
            f"no LeRobot dataset at {name!r}: no folder {path} (nor {cached}) holds meta/info.json, "
            f"and as a Hub repo id: {error}"
        ) from error
    _fetch_metadata(name, files, cached, revision, progress)
    return cached, name


def _fetch_metadata(
    repo_id: str, files: Sequence[str], root: Path, revision: str | None, progress: bool
) -> None:
    """Fetch every file under meta/ (at least the ones its version needs); info.json last, so an
    interrupted fetch is completed by the next run."""
    if "meta/info.json" not in files:
        offline = " (offline: only the cached files were listed)" if hub.hub_offline() else ""
        raise hub.HubError(
            f"dataset repo {repo_id!r} has no meta/info.json{offline}: not a LeRobot dataset, or not cached"
        )
    # The version says which meta files must exist (offline, the listing holds only cached files).
    version = _read_json(hub.cached_file(repo_id, "meta/info.json", revision)).get("codebase_version")
    if version == "v3.0":
        required = [V3_TASKS_PATH]
        if not any(f.startswith("meta/episodes/") for f in files):
            required.append(V3_EPISODES_PATH.format(chunk_index=0, file_index=0))
    else:
        required = ["meta/episodes.jsonl", "meta/tasks.jsonl"]
    names = [*required, *(f for f in files if f.startswith("meta/") and f != "meta/info.json")]
    hub.fetch_files(repo_id, [*names, "meta/info.json"], root, revision=revision, progress=progress)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeRobotFormatError(f"{path} is not valid JSON ({e}); {_REPAIR}") from e


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path}")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LeRobotFormatError(f"{path}:{line_no} is not valid JSON ({e}); {_REPAIR}") from e
            if not isinstance(row, dict):
                raise LeRobotFormatError(f"{path}:{line_no}: expected a JSON object, got {line[:80]!r}")
            rows.append(row)
    return rows


def _require(mapping: Mapping, key: str, where: Path | str, what: str = "key") -> Any:
    if key not in mapping:
        raise LeRobotFormatError(f"{where}: missing {what} {key!r} (present: {sorted(mapping)})")
    return mapping[key]


def _require_int(mapping: Mapping, key: str, where: Path | str) -> int:
    """An integer entry (ints written as 3.0 pass); anything else names the file and key."""
    value = _require(mapping, key, where)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or value != int(value)
    ):
        raise LeRobotFormatError(f"{where}: {key!r} must be an integer, got {value!r}")
    return int(value)


def _check_features(features: Any, info_path: Path) -> dict[str, dict[str, Any]]:
    """info.json's "features": {name: {"dtype": str, "shape": [int, ...], ...}}; shapes become lists of ints."""
    if not isinstance(features, dict) or not features:
        raise LeRobotFormatError(
            f"{info_path}: 'features' must be a non-empty object {{name: {{dtype, shape}}}}, got {features!r:.80}"
        )
    for key, ft in features.items():
        where = f"{info_path}: features[{key!r}]"
        if not isinstance(ft, dict):
            raise LeRobotFormatError(f"{where} must be an object with 'dtype' and 'shape', got {ft!r:.80}")
        if not isinstance(_require(ft, "dtype", where, "field"), str):
            raise LeRobotFormatError(
                f"{where}['dtype'] must be a string such as 'float32', got {ft['dtype']!r}"
            )
        shape = _require(ft, "shape", where, "field")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            raise LeRobotFormatError(
                f"{where}['shape'] must be a list of positive integers such as [8], got {shape!r}"
            )
    return features


def _episodes_text(episodes: Sequence[int]) -> str:
    episodes = list(episodes)
    if len(episodes) == 1:
        return f"episode {episodes[0]}"
    shown = ", ".join(str(e) for e in episodes[:8]) + (", ..." if len(episodes) > 8 else "")
    return f"episodes {shown}"


def _schema_names(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path} ({what})")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path} ({what}) is not a readable parquet file ({e}); {_REPAIR}") from e


def _read_table(path: Path, columns: Sequence[str] | None, what: str) -> pa.Table:
    """A parquet file (or some of its columns); a missing or unreadable file names itself and `what`."""
    if not path.is_file():
        raise LeRobotFormatError(f"missing file {path} ({what})")
    try:
        return pq.read_table(path, columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path} ({what}) is not a readable parquet file ({e}); {_REPAIR}") from e


@dataclass(frozen=True)
class LeRobotMetadata:
    """The parsed meta/ folder of a dataset (any supported version)."""

    root: Path
    info: dict[str, Any]
    version: str
    """codebase_version from info.json: "v2.0", "v2.1" or "v3.0"."""
    fps: float
    features: dict[str, dict[str, Any]]
    tasks: dict[int, str]
    episodes: tuple[dict[str, Any], ...]
    """One dict per episode, by episode_index: episode_index, tasks, length (v3.0: also the file
    indices, dataset_from/to_index and video timestamps; not the per-episode stats)."""
    stats: dict[str, Any] | None
    repo_id: str | None = None
    """The Hub repo the dataset comes from (missing files are fetched from it); None = local."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of `repo_id`; None = main."""

    @property
    def image_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def numeric_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] not in (*VISUAL_DTYPES, "string")]

    @property
    def episodes_source(self) -> Path:
        """Where the episode list comes from (for messages)."""
        return self.root / ("meta/episodes" if self.version == "v3.0" else "meta/episodes.jsonl")

    @functools.cached_property
    def episode_by_index(self) -> dict[int, dict[str, Any]]:
        return {int(e["episode_index"]): e for e in self.episodes}

    def episode(self, episode_index: int) -> dict[str, Any]:
        """The metadata row of one episode (raises naming the source if there is none)."""
        try:
            return self.episode_by_index[int(episode_index)]
        except KeyError:
            raise LeRobotFormatError(f"{self.episodes_source}: no episode {episode_index}") from None

    def data_file(self, episode_index: int) -> str:
        """The parquet file holding an episode's frames, relative to the root."""
        if self.version == "v3.0":
            row = self.episode(episode_index)
            return self.info.get("data_path", V3_DATA_PATH).format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
            )
        chunk = int(episode_index) // int(self.info.get("chunks_size", DEFAULT_CHUNK_SIZE))
        return self.info.get("data_path", V2_DATA_PATH).format(
            episode_chunk=chunk, episode_index=int(episode_index)
        )

    def video_file(self, episode_index: int, key: str) -> str:
        """The mp4 holding an episode's frames of video feature `key`, relative to the root."""
        if self.version == "v3.0":
            row = self.episode(episode_index)
            return (self.info.get("video_path") or V3_VIDEO_PATH).format(
                video_key=key,
                chunk_index=int(row[f"videos/{key}/chunk_index"]),
                file_index=int(row[f"videos/{key}/file_index"]),
            )
        chunk = int(episode_index) // int(self.info.get("chunks_size", DEFAULT_CHUNK_SIZE))
        return (self.info.get("video_path") or V2_VIDEO_PATH).format(
            episode_chunk=chunk, video_key=key, episode_index=int(episode_index)
        )

    def data_path(self, episode_index: int) -> Path:
        return self.root / self.data_file(episode_index)

    def video_path(self, episode_index: int, key: str) -> Path:
        return self.root / self.video_file(episode_index, key)

    def video_from_timestamp(self, episode_index: int, key: str) -> float:
        """Where the episode starts in its video file (v3.0 packs episodes; v2.x: 0)."""
        if self.version != "v3.0":
            return 0.0
        return float(self.episode(episode_index)[f"videos/{key}/from_timestamp"])

    def files_needed(self, episodes: Sequence[int], videos: bool) -> list[str]:
        """Data files (and video files when `videos`) of the given episodes, relative, deduplicated."""
        names = [self.data_file(ep) for ep in episodes]
        if videos:
            names += [self.video_file(ep, key) for key in self.video_keys for ep in episodes]
        return list(dict.fromkeys(names))

    def fetch(self, names: Sequence[str], progress: bool = True) -> None:
        """Fetch the files among `names` that are missing from the Hub (no-op for a local dataset)."""
        if self.repo_id is not None:
            hub.fetch_files(self.repo_id, names, self.root, revision=self.revision, progress=progress)


def load_metadata(
    repo_id_or_path: str | os.PathLike, *, revision: str | None = None, progress: bool = True
) -> LeRobotMetadata:
    """Parse meta/ of a dataset; a missing file or key raises `LeRobotFormatError` naming both, an
    unsupported codebase_version names it and the supported ones."""
    root, repo_id = resolve_root(repo_id_or_path, revision=revision, progress=progress)
    info_path = root / "meta" / "info.json"
    info = _read_json(info_path)
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{info_path}: expected a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        found = f"codebase_version {version!r}" if version else "no codebase_version (LeRobot before v2.0)"
        raise LeRobotFormatError(
            f"{info_path}: {found} is not supported; pirl reads LeRobot {', '.join(SUPPORTED_VERSIONS)} "
            "(lerobot's conversion scripts upgrade older datasets)"
        )
    fps = _require(info, "fps", info_path)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise LeRobotFormatError(f"{info_path}: 'fps' must be a positive number, got {fps!r}")
    fps = float(fps)
    features = _check_features(_require(info, "features", info_path), info_path)
    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    if version == "v3.0":
        tasks = _read_v3_tasks(root / V3_TASKS_PATH)
        episodes = _read_v3_episodes(root, video_keys)
    else:
        tasks_path = root / "meta" / "tasks.jsonl"
        tasks = {}
        for row in _read_jsonl(tasks_path):
            tasks[_require_int(row, "task_index", tasks_path)] = str(_require(row, "task", tasks_path))
        episodes_path = root / "meta" / "episodes.jsonl"
        episodes = _read_jsonl(episodes_path)
        for row in episodes:
            where = f"{episodes_path} (episode {row.get('episode_index', '?')})"
            row["episode_index"] = _require_int(row, "episode_index", where)
            row["length"] = _require_int(row, "length", where)
            if row["length"] < 0:
                raise LeRobotFormatError(f"{where}: 'length' must be >= 0, got {row['length']}")
    episodes = sorted(episodes, key=lambda r: int(r["episode_index"]))
    stats_path = root / "meta" / "stats.json"
    stats = _read_json(stats_path) if stats_path.is_file() else None
    return LeRobotMetadata(
        root=root,
        info=info,
        version=version,
        fps=fps,
        features=features,
        tasks=tasks,
        episodes=tuple(episodes),
        stats=stats,
        repo_id=repo_id,
        revision=revision,
    )


def _read_v3_tasks(path: Path) -> dict[int, str]:
    """meta/tasks.parquet: lerobot writes a pandas frame indexed by the task string."""
    table = _read_table(path, None, "tasks")
    names = table.column_names
    _require(dict.fromkeys(names), "task_index", path, "column")
    pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_columns = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
    text = next((c for c in ["task", *index_columns, "__index_level_0__"] if c in names), None)
    if text is None:
        raise LeRobotFormatError(f"{path}: no task-string column ('task' or the pandas index) in {names}")
    indices = table.column("task_index").to_pylist()
    return {int(i): str(t) for i, t in zip(indices, table.column(text).to_pylist(), strict=True)}


def _read_v3_episodes(root: Path, video_keys: Sequence[str]) -> list[dict[str, Any]]:
    folder = root / "meta" / "episodes"
    paths = sorted(folder.glob("chunk-*/file-*.parquet"))
    if not paths:
        raise LeRobotFormatError(f"missing episode metadata: no {folder}/chunk-*/file-*.parquet")
    required = [
        *V3_EPISODE_COLUMNS,
        *(f"videos/{k}/{c}" for k in video_keys for c in ("chunk_index", "file_index", "from_timestamp")),
    ]
    rows: list[dict[str, Any]] = []
    for path in paths:
        names = _schema_names(path, "episode metadata")
        missing = [c for c in required if c not in names]
        if missing:
            raise LeRobotFormatError(f"{path}: missing column(s) {missing} (columns: {names})")
        keep = [c for c in names if not c.startswith("stats/")]
        rows.extend(_read_table(path, keep, "episode metadata").to_pylist())
    seen = collections.Counter(int(r["episode_index"]) for r in rows)
    repeated = sorted(e for e, n in seen.items() if n > 1)
    if repeated:
        raise LeRobotFormatError(f"{folder}: episodes {repeated} are listed more than once")
    return rows


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
                f"{path}: column {key!r} has {got} values per frame, but meta/info.json features[{key!r}] "
                f"says shape {list(shape)}; make them agree"
            )
        return flat.reshape(n, *shape) if list(shape) != [1] else flat.reshape(n)
    flat = column.to_numpy(zero_copy_only=False)
    if list(shape) != [1]:
        raise LeRobotFormatError(
            f"{path}: column {key!r} holds scalars, but meta/info.json features[{key!r}] says shape "
            f"{list(shape)}; make them agree"
        )
    return flat


def _decode_image(
    cell: Mapping[str, Any] | bytes | None, root: Path, path: Path, key: str, what: str
) -> np.ndarray:
    """One image cell (PNG/JPEG bytes, or a path to such a file); `what` names the frame for errors."""
    source = f"{path} ({what})"
    if isinstance(cell, Mapping):
        data = cell.get("bytes")
        if data is None and cell.get("path"):
            image_path = Path(cell["path"])
            image_path = image_path if image_path.is_absolute() else root / image_path
            if not image_path.is_file():
                raise LeRobotFormatError(
                    f"{source}: image column {key!r} refers to missing file {image_path}"
                )
            source = f"{image_path} ({what}, referred to by {path})"
            data = image_path.read_bytes()
    else:
        data = cell
    if data is None:
        raise LeRobotFormatError(f"{source}: image column {key!r} has a frame with neither bytes nor path")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LeRobotFormatError(f"{source}: image {key!r} cannot be decoded ({e}); {_REPAIR}") from e


def decode_video_frames(
    video_path: Path, timestamps: Sequence[float], tolerance_s: float = 1e-4, what: str = ""
) -> np.ndarray:
    """Frames of an mp4 at the given timestamps (seconds) as uint8 [N, H, W, 3].

    Seeks to the key frame before the first timestamp and decodes forward (lerobot's semantics);
    a timestamp farther than `tolerance_s` from every decoded frame raises. `what` (e.g. "episode 3,
    'image'") is added to error messages after the file name.
    """
    import av

    source = f"{video_path} ({what})" if what else str(video_path)
    if not video_path.is_file():
        raise LeRobotFormatError(f"missing video file {source}")
    try:
        with av.open(str(video_path)) as container:
            return _decode_frames(container, source, timestamps, tolerance_s)
    except av.error.FFmpegError as e:
        raise LeRobotFormatError(f"{source} cannot be decoded ({_av_reason(e)}); {_REPAIR}") from e


def _av_reason(error: Exception) -> str:
    """PyAV's message without the file name it repeats."""
    return getattr(error, "strerror", None) or str(error)


def _decode_frames(
    container: Any, source: str, timestamps: Sequence[float], tolerance_s: float
) -> np.ndarray:
    """`decode_video_frames` on an open PyAV container (seeks first, so it may be reused); `source`
    names the file (and episode) in errors."""
    import av

    first, last = min(timestamps), max(timestamps)
    frames: list[Any] = []
    times: list[float] = []
    try:
        stream = container.streams.video[0]
        container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            frames.append(frame)  # converted to RGB only if requested (below)
            times.append(t)
            if t >= last - tolerance_s:
                break
    except av.error.FFmpegError as e:
        raise LeRobotFormatError(f"{source} cannot be decoded ({_av_reason(e)}); {_REPAIR}") from e
    if not frames:
        raise LeRobotFormatError(
            f"{source}: no frames decoded at timestamps {list(timestamps)}; the file is truncated or "
            f"does not match the data's timestamps: {_REPAIR}"
        )
    times_arr = np.asarray(times)
    out = []
    for t in timestamps:
        i = int(np.argmin(np.abs(times_arr - t)))
        if abs(times_arr[i] - t) > tolerance_s:
            raise LeRobotFormatError(
                f"{source}: no frame within {tolerance_s}s of timestamp {t:.4f}s (closest {times_arr[i]:.4f}s); "
                "the video does not match the data's timestamps (re-encode it, or raise video_tolerance_s)"
            )
        out.append(frames[i].to_ndarray(format="rgb24"))
    return np.stack(out)


class _ByteBudgetCache:
    """Thread-safe LRU of loaded values under a total byte budget; a key requested by several
    threads at once is loaded once (the others wait for it)."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
        self._size = 0
        self._loading: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], tuple[Any, int]]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
                pending = self._loading.get(key)
                if pending is None:
                    self._loading[key] = threading.Event()
                    break
            pending.wait()  # loaded by another thread (or it failed: then try ourselves)
        try:
            value, size = load()
            with self._lock:
                self._items[key] = (value, size)
                self._size += size
                while self._size > self.budget and len(self._items) > 1:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._size -= dropped
            return value
        finally:
            with self._lock:
                self._loading.pop(key).set()


class LeRobotDataset:
    """Random access to the frames of a LeRobot v2.0 / v2.1 / v3.0 dataset.

    Numeric columns of the selected episodes are read at construction (small); images are decoded
    per request: from parquet (PNG/JPEG bytes; the row group holding the frame is read and cached,
    up to `image_cache_mb`), or from video by timestamp. `item = dataset[i]` is a flat dict keyed by
    feature name, plus "task". Only what is read is fetched from the Hub (see the module docstring).

    Args:
      repo_id_or_path: dataset folder, or repo id (under HF_LEROBOT_HOME, else fetched from the Hub).
      delta_timestamps: {feature: [seconds, ...]} to return that feature as a chunk [len, *shape]
        of frames at those offsets (lerobot's convention), with `<feature>_is_pad` bool[len].
      episodes: restrict to these episode indices (e.g. a train/val split); default all.
      load_images: False skips image and video features (fast access to numeric columns; no video
        file is fetched).
      video_tolerance_s: maximum distance between a requested and a decoded video timestamp.
      image_cache_mb: budget of the cache of parquet image row groups (undecoded bytes).
      revision: Hub revision (branch, tag or commit) when fetching; default main.
      progress: show a progress bar while fetching from the Hub.
    """

    def __init__(
        self,
        repo_id_or_path: str | os.PathLike,
        *,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        episodes: Sequence[int] | None = None,
        load_images: bool = True,
        video_tolerance_s: float = 1e-4,
        image_cache_mb: float = 256,
        revision: str | None = None,
        progress: bool = True,
    ):
        self.meta = load_metadata(repo_id_or_path, revision=revision, progress=progress)
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

        if episodes is None:
            selected = sorted(self.meta.episode_by_index)
        else:
            missing = [e for e in episodes if e not in self.meta.episode_by_index]
            if missing:
                raise LeRobotFormatError(
                    f"{self.meta.episodes_source}: episodes {missing} are not in the dataset"
                )
            selected = [int(e) for e in episodes]
        self.episode_indices: list[int] = selected
        wants_videos = load_images and bool(self.meta.video_keys)
        self.meta.fetch(self.meta.files_needed(selected, videos=wants_videos), progress=progress)

        self._file_rows: dict[int, tuple[Path, int]] = {}  # episode -> (data file, its first row there)
        # Each data file's parquet footer and row-group ends, kept from the read below: a shared
        # v3.0 file's footer is larger than one frame's image, so it is not read again per frame.
        self._footers: dict[Path, tuple[pq.FileMetaData, np.ndarray]] = {}
        columns = self._read_numeric_columns(selected)
        self.columns: dict[str, np.ndarray] = {
            k: np.concatenate(v) if v else np.zeros((0,)) for k, v in columns.items()
        }
        lengths = [int(self.meta.episode(ep)["length"]) for ep in selected]
        self.episode_ends = np.cumsum(lengths, dtype=np.int64)
        self.episode_starts = self.episode_ends - np.asarray(lengths, np.int64)
        self._image_cache = _ByteBudgetCache(int(image_cache_mb * 2**20))
        self._videos = threading.local()  # per thread: open video files (PyAV containers), LRU

    def _read_numeric_columns(self, selected: Sequence[int]) -> dict[str, list[np.ndarray]]:
        """Numeric columns of the selected episodes, in selection order; each data file read once."""
        keys = self.meta.numeric_keys
        by_file: dict[Path, list[int]] = {}
        for ep in selected:
            by_file.setdefault(self.meta.data_path(ep), []).append(ep)
        per_episode: dict[int, dict[str, np.ndarray]] = {}
        for path, eps in by_file.items():
            what = _episodes_text(eps)
            if not path.is_file():
                raise LeRobotFormatError(f"missing file {path} ({what})")
            try:
                parquet = pq.ParquetFile(path)
                names = set(parquet.schema_arrow.names)
                table = parquet.read(columns=[k for k in keys if k in names])
            except (pa.ArrowException, OSError) as e:
                raise LeRobotFormatError(
                    f"{path} ({what}) is not a readable parquet file ({e}); {_REPAIR}"
                ) from e
            if self.meta.version == "v3.0" and "episode_index" not in names:
                raise LeRobotFormatError(f"{path} ({what}): missing column 'episode_index'")
            footer = parquet.metadata
            ends = np.cumsum([footer.row_group(i).num_rows for i in range(footer.num_row_groups)])
            self._footers[path] = (footer, ends)
            file_columns = {k: _column_to_numpy(table, k, self.meta.features[k]["shape"], path) for k in keys}
            for ep in eps:
                start, stop = self._episode_rows(path, table.num_rows, file_columns, ep)
                self._file_rows[ep] = (path, start)
                per_episode[ep] = {k: v[start:stop] for k, v in file_columns.items()}
        return {k: [per_episode[ep][k] for ep in selected] for k in keys}

    def _episode_rows(
        self, path: Path, num_rows: int, file_columns: Mapping[str, np.ndarray], ep: int
    ) -> tuple[int, int]:
        """[start, stop) rows of episode `ep` in its data file, checked against the metadata."""
        row = self.meta.episode(ep)
        declared = int(row["length"])
        if self.meta.version != "v3.0":  # one file per episode
            if num_rows != declared:
                raise LeRobotFormatError(
                    f"{path}: {num_rows} frames, but meta/episodes.jsonl says length {declared} for episode {ep}"
                )
            return 0, num_rows
        rows = np.flatnonzero(file_columns["episode_index"] == ep)
        if len(rows) != declared or (len(rows) and rows[-1] - rows[0] + 1 != len(rows)):
            raise LeRobotFormatError(
                f"{path}: episode {ep} has {len(rows)} frames"
                + (" (not contiguous)" if len(rows) == declared else "")
                + f", but {self.meta.episodes_source} says length {declared}"
            )
        start = int(rows[0]) if len(rows) else 0
        if "index" in file_columns and declared:
            first = int(file_columns["index"][start])
            if first != int(row["dataset_from_index"]):
                raise LeRobotFormatError(
                    f"{path}: episode {ep} starts at global index {first}, but "
                    f"{self.meta.episodes_source} says dataset_from_index {int(row['dataset_from_index'])}"
                )
        return start, start + declared

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
            ep = self.episode_indices[pos]
            for key in self.meta.image_keys:
                rows = frame_rows.get(key, np.asarray([index]))
                images = np.stack([self._parquet_image(ep, key, int(r - start)) for r in rows])
                item[key] = images if key in frame_rows else images[0]
            for key in self.meta.video_keys:
                rows = frame_rows.get(key, np.asarray([index]))
                offset = self.meta.video_from_timestamp(ep, key)
                timestamps = [offset + float(self.columns["timestamp"][r]) for r in rows]
                path = self.meta.video_path(ep, key)
                images = self._video_frames(path, timestamps, f"episode {ep}, {key!r}")
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
                f"{path}: {key!r} frames decode to shape {image.shape}, but meta/info.json features[{key!r}] "
                f"says shape {list(shape)}; make them agree"
            )

    def _parquet_image(self, ep: int, key: str, row_in_episode: int) -> np.ndarray:
        path, first_row = self._file_rows[ep]
        row = first_row + row_in_episode
        footer, ends = self._footers[path]
        group = int(np.searchsorted(ends, row, side="right"))
        group_start = int(ends[group - 1]) if group else 0
        cells = self._image_cache.get(
            (path, group, key), lambda: self._read_cells(path, footer, group, key, ep)
        )
        what = f"episode {ep}, frame {row_in_episode}"
        image = _decode_image(cells[row - group_start], self.meta.root, path, key, what)
        self._check_image_shape(image, key, path)
        return image

    def _read_cells(
        self, path: Path, footer: pq.FileMetaData, group: int, key: str, ep: int
    ) -> tuple[list, int]:
        """One row group of an image column (undecoded cells) and its size."""
        if key not in footer.schema.to_arrow_schema().names:
            raise LeRobotFormatError(f"{path}: missing image column {key!r}")
        try:
            column = pq.ParquetFile(path, metadata=footer).read_row_group(group, columns=[key]).column(key)
        except (pa.ArrowException, OSError) as e:
            raise LeRobotFormatError(
                f"{path} (episode {ep}) is not a readable parquet file ({e}); {_REPAIR}"
            ) from e
        return column.to_pylist(), column.nbytes

    def _video_frames(self, path: Path, timestamps: Sequence[float], what: str) -> np.ndarray:
        """decode_video_frames on this thread's open container of `path` (opening an mp4 reads its
        whole index: for a shared v3.0 file, more than the frames); `what` names the episode."""
        import av

        if not hasattr(self._videos, "open"):
            self._videos.open = collections.OrderedDict()
        containers = self._videos.open
        source = f"{path} ({what})"
        container = containers.pop(path, None)
        if container is None:
            if not path.is_file():
                raise LeRobotFormatError(f"missing video file {source}")
            try:
                container = av.open(str(path))
            except av.error.FFmpegError as e:
                raise LeRobotFormatError(f"{source} cannot be decoded ({_av_reason(e)}); {_REPAIR}") from e
        containers[path] = container  # most recently used last
        while len(containers) > _OPEN_VIDEOS_PER_THREAD:
            containers.popitem(last=False)[1].close()
        return _decode_frames(container, source, timestamps, self.video_tolerance_s)

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

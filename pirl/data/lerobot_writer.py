"""Write LeRobot datasets: codebase v2.1 (the default; what openpi's pinned lerobot reads) or v3.0
(what lerobot >= 0.4 writes), without lerobot (and without torch).

`write_lerobot_dataset(root, episodes, fps, codebase_version="v2.1" | "v3.0")` lays the files out
as lerobot does (see `pirl.data.lerobot` for both layouts). v3.0 follows lerobot 0.4's recorder:
consecutive episodes are appended to one data file (one parquet row group per episode) until it
would exceed `data_files_size_in_mb`, then the next file (chunk-XXX/file-YYY, `chunks_size` files
per chunk); each episode's video is encoded on its own and stream-copied after the previous ones
into one mp4 per `video_files_size_in_mb` (its start is the episode's from_timestamp); one
meta/episodes row per episode with the file indices, frame ranges, video timestamps and stats.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pirl.data.lerobot import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_FEATURES,
    V2_DATA_PATH,
    V2_VIDEO_PATH,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_TASKS_PATH,
    V3_VIDEO_PATH,
    VISUAL_DTYPES,
)

WRITABLE_VERSIONS = ("v2.1", "v3.0")
DEFAULT_DATA_FILE_SIZE_IN_MB = 100  # lerobot 0.4's limits per shared file
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # the quantiles in lerobot 0.4's stats (q01 ... q99)


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


def pick_video_codec(preferred: str | None = None) -> str:
    """The first video encoder PyAV has among `preferred` or libsvtav1, libx264, h264, mpeg4."""
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

    codec = pick_video_codec(codec)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config per file unless told not to
    if codec == "libsvtav1" and min(frames.shape[1:3]) < 64:
        codec = pick_video_codec("libx264")  # SVT-AV1 rejects frames smaller than 64 pixels
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


def video_duration_s(path: Path) -> float:
    """Duration of an mp4's video stream in seconds (what lerobot adds up into from_timestamp)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def concatenate_videos(inputs: Sequence[Path], output: Path) -> None:
    """Stream-copy mp4 files one after the other into `output` (ffmpeg's concat demuxer, no
    re-encoding; every input must have the same codec, size and frame rate)."""
    import av

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        listing = Path(tmp) / "inputs.ffconcat"
        quoted = [str(Path(p).resolve()).replace("'", "'\\''") for p in inputs]
        listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{q}'\n" for q in quoted))
        joined = Path(tmp) / output.name
        with (
            av.open(str(listing), "r", format="concat", options={"safe": "0"}) as source,
            av.open(str(joined), "w", options={"movflags": "faststart"}) as sink,
        ):
            in_stream = source.streams.video[0]
            out_stream = sink.add_stream_from_template(in_stream, opaque=True)  # copy, no codec
            out_stream.time_base = in_stream.time_base
            for packet in source.demux(in_stream):
                if packet.dts is None:  # demuxer flush packets
                    continue
                packet.stream = out_stream
                sink.mux(packet)
        os.replace(joined, output)


def _feature_stats(values: np.ndarray, visual: bool, quantiles: bool) -> dict[str, Any]:
    """lerobot's per-episode stats of one feature: per channel in [0, 1] shaped (3, 1, 1) for
    images, per dimension for vectors; with q01 ... q99 when `quantiles` (v3.0)."""
    if visual:
        x = values.astype(np.float64).reshape(-1, values.shape[-1]) / 255.0
    else:
        x = values.astype(np.float64).reshape(len(values), -1)
    stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    if quantiles:
        for q in QUANTILES:
            stats[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0)
    shape = (3, 1, 1) if visual else (-1,)
    out: dict[str, Any] = {k: v.reshape(shape).tolist() for k, v in stats.items()}
    out["count"] = [len(values)]
    return out


def aggregate_stats(episode_stats: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Dataset stats from per-episode stats with lerobot's formulas: count-weighted means (and
    quantiles), the pooled variance, min of mins, max of maxes."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(k for stats in episode_stats for k in stats):
        parts = [s[key] for s in episode_stats if key in s]
        counts = np.asarray([p["count"][0] for p in parts], np.float64)
        mean = np.asarray([p["mean"] for p in parts], np.float64)
        weights = counts.reshape(-1, *([1] * (mean.ndim - 1)))
        total = counts.sum()
        pooled_mean = (mean * weights).sum(0) / total
        variance = np.asarray([p["std"] for p in parts], np.float64) ** 2
        pooled_var = ((variance + (mean - pooled_mean) ** 2) * weights).sum(0) / total
        agg = {
            "min": np.min([p["min"] for p in parts], axis=0),
            "max": np.max([p["max"] for p in parts], axis=0),
            "mean": pooled_mean,
            "std": np.sqrt(pooled_var),
        }
        for q in (k for k in parts[0] if k[:1] == "q" and k[1:].isdigit()):
            agg[q] = (np.asarray([p[q] for p in parts], np.float64) * weights).sum(0) / total
        out[key] = {k: np.asarray(v).tolist() for k, v in agg.items()}
        out[key]["count"] = [int(total)]
    return out


def _flatten(prefix: str, tree: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"<prefix>/a/b": 1} (lerobot's flatten_dict with "/")."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        out.update(_flatten(name, value) if isinstance(value, Mapping) else {name: value})
    return out


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _tasks_table(task_list: Sequence[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes lerobot's frame: column task_index, indexed by the task."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(task_list)), pa.int64()),
            "__index_level_0__": pa.array(list(task_list), pa.string()),
        }
    )
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def write_lerobot_dataset(
    root: str | os.PathLike,
    episodes: Sequence[Mapping[str, Any]],
    fps: float,
    features: Mapping[str, Mapping[str, Any]] | None = None,
    tasks: Sequence[str] | None = None,
    use_videos: bool = False,
    *,
    codebase_version: str = "v2.1",
    robot_type: str | None = None,
    video_codec: str | None = None,
    overwrite: bool = False,
    chunks_size: int = DEFAULT_CHUNK_SIZE,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
    video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
) -> Path:
    """Write episodes as a LeRobot dataset that this reader and lerobot both read.

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
      codebase_version: "v2.1" (one file per episode) or "v3.0" (episodes packed into shared files).
      robot_type, video_codec: written to info.json / used for encoding (default: first of
        libsvtav1, libx264, mpeg4 that PyAV can encode).
      chunks_size: files per chunk-XXX folder (v2.1: episodes per chunk).
      data_files_size_in_mb, video_files_size_in_mb: v3.0's size limits of the shared files.

    Returns the dataset root.
    """
    if codebase_version not in WRITABLE_VERSIONS:
        raise ValueError(
            f"codebase_version {codebase_version!r}: pirl writes LeRobot {', '.join(WRITABLE_VERSIONS)}"
        )
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
        if ft["dtype"] not in VISUAL_DTYPES and len(ft["shape"]) > 1:
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
    v3 = codebase_version == "v3.0"
    prepared = []
    global_index = 0
    for ep, episode in enumerate(episodes):
        item = _prepare_episode(
            ep, episode, features, user_keys, task_index[episode["task"]], global_index, fps, quantiles=v3
        )
        item["table"] = item["table"].replace_schema_metadata({"huggingface": hf_meta})
        prepared.append(item)
        global_index += item["length"]

    root.mkdir(parents=True, exist_ok=True)
    layout = dict(chunks_size=chunks_size, video_codec=video_codec, fps=fps)
    if v3:
        video_info = _write_v3_files(
            root, prepared, features, task_list, data_files_size_in_mb, video_files_size_in_mb, **layout
        )
    else:
        video_info = _write_v21_files(root, prepared, task_list, **layout)
    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    for key in video_keys:
        all_features[key] = {**features[key], "info": video_info[key]}
    num_episodes = len(episodes)
    fps_value: float | int = int(fps) if float(fps).is_integer() else float(fps)
    info: dict[str, Any] = {
        "codebase_version": codebase_version,
        "robot_type": robot_type,
        "total_episodes": num_episodes,
        "total_frames": global_index,
        "total_tasks": len(task_list),
    }
    if v3:
        info |= {
            "chunks_size": chunks_size,
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb,
            "fps": fps_value,
            "splits": {"train": f"0:{num_episodes}"},
            "data_path": V3_DATA_PATH,
            "video_path": V3_VIDEO_PATH if video_keys else None,
            "features": all_features,
        }
    else:
        info |= {
            "total_videos": len(video_keys) * num_episodes,
            "total_chunks": math.ceil(num_episodes / chunks_size),
            "chunks_size": chunks_size,
            "fps": fps,
            "splits": {"train": f"0:{num_episodes}"},
            "data_path": V2_DATA_PATH,
            "video_path": V2_VIDEO_PATH if video_keys else None,
            "features": all_features,
        }
    # info.json last: a dataset folder without it is not taken for a (complete) dataset.
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    return root


def _prepare_episode(
    ep: int,
    episode: Mapping[str, Any],
    features: Mapping[str, Mapping[str, Any]],
    user_keys: Sequence[str],
    task_index: int,
    global_index: int,
    fps: float,
    quantiles: bool,
) -> dict[str, Any]:
    """One episode's frame table (no video columns), video frames and stats, validated."""
    missing = [k for k in user_keys if k not in episode]
    if missing:
        raise ValueError(f"episode {ep}: missing features {missing} (has {sorted(episode)})")
    length = len(np.asarray(episode[user_keys[0]]))
    if length == 0:
        raise ValueError(f"episode {ep}: no frames")
    arrays: dict[str, pa.Array] = {}
    stats: dict[str, Any] = {}
    videos: dict[str, np.ndarray] = {}
    numeric: dict[str, np.ndarray] = {}
    for key in user_keys:
        ft = features[key]
        value = np.asarray(episode[key])
        want = (length, *ft["shape"]) if ft["shape"] != [1] else (length,)
        if ft["shape"] == [1] and value.shape == (length, 1):
            value = value[:, 0]
        if value.shape != want:
            raise ValueError(f"episode {ep}: feature {key!r} has shape {value.shape}, expected {want}")
        if ft["dtype"] in VISUAL_DTYPES:
            if value.dtype != np.uint8:
                raise ValueError(f"episode {ep}: image feature {key!r} must be uint8, got {value.dtype}")
            stats[key] = _feature_stats(value, visual=True, quantiles=quantiles)
            if ft["dtype"] == "video":
                videos[key] = value
            else:
                cells = [
                    {"bytes": _encode_png(img), "path": f"frame_{i:06d}.png"} for i, img in enumerate(value)
                ]
                arrays[key] = pa.array(cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            value = value.astype(ft["dtype"])
            stats[key] = _feature_stats(value, visual=False, quantiles=quantiles)
            numeric[key] = value
            if ft["shape"] == [1]:
                arrays[key] = pa.array(value)
            else:
                arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), ft["shape"][0])
    frame_index = np.arange(length, dtype=np.int64)
    defaults = {
        "timestamp": (frame_index / fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.full(length, ep, np.int64),
        "index": global_index + frame_index,
        "task_index": np.full(length, task_index, np.int64),
    }
    for key, value in defaults.items():
        arrays[key] = pa.array(value)
        stats[key] = _feature_stats(value, visual=False, quantiles=quantiles)
    return {
        "episode_index": ep,
        "task": episode["task"],
        "length": length,
        "first_index": global_index,
        "table": pa.table(arrays),
        "videos": videos,
        "numeric": numeric,
        "stats": stats,
    }


def _write_v21_files(
    root: Path,
    prepared: Sequence[Mapping[str, Any]],
    task_list: Sequence[str],
    *,
    chunks_size: int,
    video_codec: str | None,
    fps: float,
) -> dict[str, dict[str, Any]]:
    """Data, videos and meta files of a v2.1 dataset (all but info.json); returns the video infos."""
    (root / "meta").mkdir(parents=True, exist_ok=True)
    video_info: dict[str, dict[str, Any]] = {}
    episodes_rows, stats_rows = [], []
    for item in prepared:
        ep = item["episode_index"]
        chunk = ep // chunks_size
        data_path = root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(item["table"], data_path)
        for key, frames in item["videos"].items():
            rel = V2_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=ep)
            video_info[key] = encode_video(frames, root / rel, fps, video_codec)
        episodes_rows.append({"episode_index": ep, "tasks": [item["task"]], "length": item["length"]})
        stats_rows.append({"episode_index": ep, "stats": item["stats"]})
    _write_jsonl(root / "meta" / "episodes.jsonl", episodes_rows)
    _write_jsonl(
        root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(task_list)]
    )
    _write_jsonl(root / "meta" / "episodes_stats.jsonl", stats_rows)
    global_stats = {  # over the frames of every episode: the user's numeric features
        key: _feature_stats(
            np.concatenate([item["numeric"][key] for item in prepared]), visual=False, quantiles=False
        )
        for key in prepared[0]["numeric"]
    }
    (root / "meta" / "stats.json").write_text(json.dumps(global_stats, indent=4))
    return video_info


def _write_v3_files(
    root: Path,
    prepared: Sequence[Mapping[str, Any]],
    features: Mapping[str, Mapping[str, Any]],
    task_list: Sequence[str],
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
    *,
    chunks_size: int,
    video_codec: str | None,
    fps: float,
) -> dict[str, dict[str, Any]]:
    """Data, videos and meta files of a v3.0 dataset (all but info.json); returns the video infos."""
    data_limit = data_files_size_in_mb * 2**20
    rows: list[dict[str, Any]] = [
        {"episode_index": item["episode_index"], "tasks": [item["task"]], "length": item["length"]}
        for item in prepared
    ]
    # Data: episodes appended (one row group each) until the file would pass its size limit.
    chunk = file = 0
    writer: pq.ParquetWriter | None = None
    written = 0
    for item, row in zip(prepared, rows, strict=True):
        table = item["table"]
        if writer is not None and written + table.nbytes >= data_limit:
            writer.close()
            writer, written = None, 0
            chunk, file = _next_file(chunk, file, chunks_size)
        if writer is None:
            path = root / V3_DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=True)
        writer.write_table(table)
        written += table.nbytes
        row |= {
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": item["first_index"],
            "dataset_to_index": item["first_index"] + item["length"],
        }
    if writer is not None:
        writer.close()
    # Videos: each episode encoded on its own, then stream-copied after the previous ones.
    video_info: dict[str, dict[str, Any]] = {}
    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    with tempfile.TemporaryDirectory(dir=root, prefix=".encode-") as tmp:
        for key in video_keys:
            groups: list[tuple[int, int, list[Path]]] = []
            chunk = file = 0
            size = duration = 0.0
            for item, row in zip(prepared, rows, strict=True):
                episode_path = Path(tmp) / key / f"episode_{item['episode_index']:06d}.mp4"
                video_info[key] = encode_video(item["videos"][key], episode_path, fps, video_codec)
                episode_size = episode_path.stat().st_size
                if groups and size + episode_size >= video_files_size_in_mb * 2**20:
                    chunk, file = _next_file(chunk, file, chunks_size)
                    size = duration = 0.0
                if not groups or groups[-1][:2] != (chunk, file):
                    groups.append((chunk, file, []))
                groups[-1][2].append(episode_path)
                episode_duration = video_duration_s(episode_path)
                row |= {
                    f"videos/{key}/chunk_index": chunk,
                    f"videos/{key}/file_index": file,
                    f"videos/{key}/from_timestamp": duration,
                    f"videos/{key}/to_timestamp": duration + episode_duration,
                }
                size += episode_size
                duration += episode_duration
            for chunk_index, file_index, paths in groups:
                target = root / V3_VIDEO_PATH.format(
                    video_key=key, chunk_index=chunk_index, file_index=file_index
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                if len(paths) == 1:
                    shutil.move(paths[0], target)
                else:
                    concatenate_videos(paths, target)
    # Episode metadata: lerobot's columns, files split by the data size limit too.
    (root / "meta").mkdir(parents=True, exist_ok=True)
    chunk = file = 0
    batches: list[tuple[int, int, list[dict[str, Any]]]] = []
    size = 0.0
    for item, row in zip(prepared, rows, strict=True):
        row |= _flatten("stats", item["stats"])
        row_size = len(json.dumps(row))
        if batches and size + row_size >= data_limit:
            chunk, file = _next_file(chunk, file, chunks_size)
            size = 0.0
        if not batches or batches[-1][:2] != (chunk, file):
            batches.append((chunk, file, []))
        row |= {"meta/episodes/chunk_index": chunk, "meta/episodes/file_index": file}
        batches[-1][2].append(row)
        size += row_size
    for chunk_index, file_index, batch in batches:
        path = root / V3_EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(batch), path, compression="snappy")
    pq.write_table(_tasks_table(task_list), root / V3_TASKS_PATH)
    stats = aggregate_stats([item["stats"] for item in prepared])
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    return video_info


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

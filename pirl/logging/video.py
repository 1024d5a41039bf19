"""Videos: mp4 files (imageio-ffmpeg, GIF fallback), GIF bytes for TensorBoard, and env-grid tiling."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def as_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """Validate frames `[T, H, W, 3]` (uint8, or float in [0, 1]) and return them as uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1; got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"frames must be uint8 or float in [0, 1]; got dtype {frames.dtype}")


def video_grid(frames: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile N videos `[N, T, H, W, 3]` into one `[T, rows·H, columns·W, 3]` (blank-padded) video."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(f"expected [N, T, H, W, 3]; got shape {frames.shape}")
    n, t, h, w, c = frames.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, t, h, w, c), frames.dtype)
    padded[:n] = frames
    grid = padded.reshape(rows, columns, t, h, w, c).transpose(2, 0, 3, 1, 4, 5)
    return grid.reshape(t, rows * h, columns * w, c)


def encode_gif(frames: np.ndarray, fps: float = 10.0) -> bytes:
    """Looping animated GIF of frames `[T, H, W, 3]`."""
    from PIL import Image

    frames = as_uint8_frames(frames)
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(round(1000.0 / fps), 1),
        loop=0,
    )
    return buffer.getvalue()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write frames `[T, H, W, 3]` to `path` (mp4 via ffmpeg/libx264); falls back to a .gif.

    Odd heights/widths are padded by one black row/column (yuv420p needs even sizes). Returns the
    path actually written (`path` with suffix .gif after a fallback).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = as_uint8_frames(frames)
    if path.suffix.lower() == ".gif":
        path.write_bytes(encode_gif(frames, fps))
        return path
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    try:
        import imageio.v2 as imageio

        with warnings.catch_warnings():
            # imageio starts ffmpeg with fork + exec; JAX's warning that a fork of its threads may
            # deadlock is about a child that goes on running Python, not one that execs at once.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            with imageio.get_writer(
                path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, format="FFMPEG"
            ) as writer:
                for frame in frames:
                    writer.append_data(frame)
        return path
    except Exception as error:  # no ffmpeg binary, codec missing, ...
        gif_path = path.with_suffix(".gif")
        log.warning("mp4 encoding failed (%r); writing %s instead", error, gif_path)
        path.unlink(missing_ok=True)
        gif_path.write_bytes(encode_gif(frames, fps))
        return gif_path

"""Logging: TensorBoard + JSONL metric writer, mp4/gif videos, console progress bars."""

from pirl.logging.video import encode_gif, video_grid, write_video
from pirl.logging.writer import MetricWriter, format_metrics, progress, read_jsonl

__all__ = [
    "MetricWriter",
    "encode_gif",
    "format_metrics",
    "progress",
    "read_jsonl",
    "video_grid",
    "write_video",
]

"""MetricWriter (TensorBoard + JSONL), videos and the progress helper."""

import io
import math
import struct

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from pirl.logging import MetricWriter, format_metrics, progress, read_jsonl, video_grid, write_video
from pirl.logging import video as video_lib


def read_events(logdir):
    """Parse tensorboard event files (TFRecord: u64 length, u32 crc, payload, u32 crc)."""
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def moving_square(num_frames=6, height=33, width=20):
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, 2 * t : 2 * t + 8, 3:11, 0] = 255
    return frames


def test_metric_writer_scalars_jsonl_and_tensorboard(tmp_path):
    with MetricWriter(tmp_path, flush_secs=1) as writer:
        writer.scalars({"train/actor/policy_loss": jnp.float32(0.5), "env/success_once": 0.25}, step=1)
        writer.scalars(
            {"train/actor/policy_loss": np.array([0.25]), "train/critic/explained_variance": jnp.nan}, 2
        )
        writer.video("env/rollout", moving_square(), step=2, fps=5)
        writer.text("config", "lr: 5e-6")
        with pytest.raises(ValueError, match="not a scalar"):
            writer.scalars({"bad": np.zeros(3)}, 3)
        jsonl = writer.jsonl_path
    records = read_jsonl(jsonl)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["train/actor/policy_loss"] == 0.5 and records[0]["env/success_once"] == 0.25
    assert records[1]["train/critic/explained_variance"] is None  # NaN -> null (strict JSON)
    values = [(e.step, v) for e in read_events(tmp_path) if e.HasField("summary") for v in e.summary.value]
    losses = [(step, v.simple_value) for step, v in values if v.tag == "train/actor/policy_loss"]
    assert losses == [(1, 0.5), (2, 0.25)]
    (image,) = [v.image for _, v in values if v.tag == "env/rollout"]
    assert (image.height, image.width) == (33, 20) and image.encoded_image_string[:6] == b"GIF89a"


def test_inactive_writer_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path / "run", active=False)
    writer.scalars({"a": 1.0}, 0)
    writer.close()
    assert not (tmp_path / "run").exists()


def test_write_video_mp4_odd_sizes_and_gif(tmp_path):
    frames = moving_square()
    path = write_video(tmp_path / "videos" / "rollout.mp4", frames, fps=5)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    decoded = iio.imread(path, plugin="pyav")
    assert decoded.shape == (6, 34, 20, 3)  # odd height padded to even for yuv420p
    gif = write_video(tmp_path / "rollout.gif", frames.astype(np.float32) / 255.0, fps=5)
    assert gif.read_bytes()[:6] == b"GIF89a"
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "bad.mp4", np.zeros((4, 4, 3), np.uint8))


def test_write_video_falls_back_to_gif(tmp_path, monkeypatch):
    import imageio.v2

    def broken_writer(*args, **kwargs):
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(imageio.v2, "get_writer", broken_writer)
    path = video_lib.write_video(tmp_path / "rollout.mp4", moving_square(), fps=5)
    assert path == tmp_path / "rollout.gif" and path.read_bytes()[:6] == b"GIF89a"


def test_video_grid_tiles_envs():
    videos = np.stack([np.full((2, 4, 5, 3), i, np.uint8) for i in range(3)])  # 3 envs
    grid = video_grid(videos, columns=2)
    assert grid.shape == (2, 8, 10, 3)
    assert grid[0, 0, 0, 0] == 0 and grid[0, 0, 5, 0] == 1 and grid[0, 4, 0, 0] == 2 and grid[0, 4, 5, 0] == 0


def test_progress_and_format_metrics():
    out = io.StringIO()
    bar = progress(total=3, desc="rl", disable=False, file=out, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(format_metrics({"train/actor/lr": 5e-6}))
    bar.close()
    assert bar.n == 3 and "rl" in out.getvalue() and "3/3" in out.getvalue()
    assert list(progress(range(4), disable=True)) == [0, 1, 2, 3]
    shown = format_metrics(
        {"train/actor/policy_loss": jnp.float32(math.pi), "x": 1.0}, keys=["train/actor/policy_loss"]
    )
    assert shown == {"policy_loss": "3.142"}

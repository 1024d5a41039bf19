"""pirl.data: LeRobot write/read (parquet images and video), format errors, transforms with openpi's
semantics, named configs and the batch loader (shapes, values, determinism, resume, sharding).

Datasets are written here with `write_lerobot_dataset`: 3 episodes, 32x32 images, state 8-D,
actions 7-D, two tasks. Every frame's values encode (episode, frame) so reads can be checked exactly.
"""

import io
import itertools
import json
import random

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece
import tyro
from openpi_client import image_tools

from pirl.data import configs, lerobot, lerobot_writer, loader
from pirl.data import transforms as T
from pirl.data.normalize import NormStats
from pirl.errors import UserError

LENGTHS = (9, 12, 7)
TASKS = ("pick up the red bowl", "open the top drawer")
FPS = 10
HORIZON = 4


def frame_image(ep: int, t: int, channel_offset: int = 0) -> np.ndarray:
    """A smooth 32x32 image whose mean colour identifies (ep, t) (smooth so video codecs keep it)."""
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 2 + ep * 60, yy * 2 + t * 15, np.full_like(xx, 40 + channel_offset + 10 * t)], -1)
    return (base % 256).astype(np.uint8)


def make_episodes() -> list[dict]:
    episodes = []
    for ep, length in enumerate(LENGTHS):
        t = np.arange(length)
        episodes.append(
            {
                "image": np.stack([frame_image(ep, i) for i in t]),
                "wrist_image": np.stack([frame_image(ep, i, 100) for i in t]),
                "state": (ep * 100 + t[:, None] + np.arange(8)[None] / 10).astype(np.float32),
                "actions": (ep * 1000 + t[:, None] * 10 + np.arange(7)[None]).astype(np.float32),
                "task": TASKS[ep % 2],
            }
        )
    return episodes


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return lerobot_writer.write_lerobot_dataset(
        tmp_path_factory.mktemp("ds") / "toy", make_episodes(), fps=FPS
    )


@pytest.fixture(scope="module")
def dataset(dataset_root):
    return lerobot.LeRobotDataset(
        dataset_root, delta_timestamps={"actions": [i / FPS for i in range(HORIZON)]}
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from pirl.models.tokenizer import PaligemmaTokenizer

    words = ["pick", "up", "the", "red", "bowl", "open", "top", "drawer", "put", "it", "on", "plate"]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(200)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        vocab_size=60,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("sp") / "tok.model"
    path.write_bytes(proto.getvalue())
    return PaligemmaTokenizer(path, max_len=16)


# ------------------------------------------------------------------------------------ read / write


def test_written_layout_is_lerobot_v21(dataset_root):
    info = json.loads((dataset_root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    assert info["features"]["image"]["dtype"] == "image" and info["features"]["image"]["shape"] == [32, 32, 3]
    assert info["features"]["state"] == {"dtype": "float32", "shape": [8], "names": None}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    episodes = [
        json.loads(line) for line in (dataset_root / "meta" / "episodes.jsonl").read_text().splitlines()
    ]
    assert episodes[1] == {"episode_index": 1, "tasks": [TASKS[1]], "length": LENGTHS[1]}
    tasks = [json.loads(line) for line in (dataset_root / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": i, "task": t} for i, t in enumerate(TASKS)]
    stats = [
        json.loads(line) for line in (dataset_root / "meta" / "episodes_stats.jsonl").read_text().splitlines()
    ]
    assert np.asarray(stats[0]["stats"]["image"]["mean"]).shape == (3, 1, 1)
    assert stats[0]["stats"]["state"]["count"] == [LENGTHS[0]]
    table = pq.read_table(dataset_root / "data" / "chunk-000" / "episode_000002.parquet")
    assert table.num_rows == LENGTHS[2]
    assert table.schema.field("image").type.names == ["bytes", "path"]
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {
        "_type": "Image"
    }
    np.testing.assert_array_equal(table.column("index").to_numpy(), sum(LENGTHS[:2]) + np.arange(LENGTHS[2]))


def test_read_back_values(dataset):
    assert len(dataset) == sum(LENGTHS)
    episodes = make_episodes()
    index = LENGTHS[0] + 5  # episode 1, frame 5
    item = dataset[index]
    np.testing.assert_array_equal(item["image"], episodes[1]["image"][5])
    np.testing.assert_array_equal(item["wrist_image"], episodes[1]["wrist_image"][5])
    np.testing.assert_array_equal(item["state"], episodes[1]["state"][5])
    assert item["task"] == TASKS[1] and int(item["task_index"]) == 1
    assert int(item["frame_index"]) == 5 and int(item["episode_index"]) == 1 and int(item["index"]) == index
    assert float(item["timestamp"]) == pytest.approx(0.5)
    np.testing.assert_array_equal(item["actions"], episodes[1]["actions"][5 : 5 + HORIZON])
    assert not item["actions_is_pad"].any()


def test_action_chunk_repeats_last_frame_past_episode_end(dataset):
    episodes = make_episodes()
    item = dataset[LENGTHS[0] - 2]  # second-to-last frame of episode 0
    expected = episodes[0]["actions"][[7, 8, 8, 8]]
    np.testing.assert_array_equal(item["actions"], expected)
    np.testing.assert_array_equal(item["actions_is_pad"], [False, False, True, True])


def test_episode_subset_and_repo_id_under_lerobot_home(dataset_root, monkeypatch):
    monkeypatch.setenv("HF_LEROBOT_HOME", str(dataset_root.parent))
    subset = lerobot.LeRobotDataset("toy", episodes=[2], load_images=False)
    assert len(subset) == LENGTHS[2] and "image" not in subset[0]
    np.testing.assert_array_equal(subset[0]["state"], make_episodes()[2]["state"][0])


def _video_codec_or_skip() -> str:
    try:
        return lerobot_writer.pick_video_codec()
    except RuntimeError as e:
        pytest.skip(f"PyAV cannot encode video here: {e}")


def test_video_dataset_decodes_frames_by_timestamp(tmp_path):
    _video_codec_or_skip()
    episodes = make_episodes()[:2]
    root = lerobot_writer.write_lerobot_dataset(tmp_path / "vid", episodes, fps=FPS, use_videos=True)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["image"]["dtype"] == "video" and info["total_videos"] == 4
    assert info["features"]["image"]["info"]["video.fps"] == FPS
    assert (root / "videos" / "chunk-000" / "image" / "episode_000001.mp4").is_file()
    dataset = lerobot.LeRobotDataset(root)
    for ep, t in [(0, 0), (0, 8), (1, 3), (1, 11)]:
        item = dataset[sum(LENGTHS[:ep]) + t]
        assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
        # Lossy codec: close to the source frame and closer to it than to its neighbours.
        errors = [
            np.abs(item["image"].astype(int) - episodes[ep]["image"][s]).mean() for s in range(LENGTHS[ep])
        ]
        assert errors[t] < 8 and int(np.argmin(errors)) == t


def test_missing_info_json_names_the_file_once(tmp_path):
    with pytest.raises(UserError, match=r"info\.json") as info:
        lerobot.LeRobotDataset(tmp_path / "nothing_here")
    assert str(info.value).count(str(tmp_path / "nothing_here")) == 1, str(info.value)


def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_info_key_names_file_and_key(dataset_root, tmp_path):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["fps"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(lerobot.LeRobotFormatError, match=r"info\.json.*'fps'"):
        lerobot.LeRobotDataset(root)


def test_missing_parquet_column_names_file_and_key(dataset_root, tmp_path):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    pq.write_table(pq.read_table(path).drop(["state"]), path)
    with pytest.raises(lerobot.LeRobotFormatError, match=r"episode_000001\.parquet.*'state'"):
        lerobot.LeRobotDataset(root)


def test_wrong_shape_names_file_and_key(dataset_root, tmp_path):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["actions"]["shape"] = [6]
    info["features"]["wrist_image"]["shape"] = [16, 16, 3]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(lerobot.LeRobotFormatError, match=r"episode_000000\.parquet.*'actions'.*\[6\]"):
        lerobot.LeRobotDataset(root)
    info["features"]["actions"]["shape"] = [7]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(lerobot.LeRobotFormatError, match=r"episode_000000\.parquet.*'wrist_image'"):
        lerobot.LeRobotDataset(root)[0]


@pytest.mark.parametrize(
    "file, edit, expected",
    [
        ("info.json", lambda m: m.update(features=[1, 2]), r"info\.json: 'features' must be"),
        (
            "info.json",
            lambda m: m["features"]["state"].update(shape="8"),
            r"info\.json: features\['state'\]\['shape'\]",
        ),
        (
            "info.json",
            lambda m: m["features"]["state"].pop("dtype"),
            r"info\.json: features\['state'\].*'dtype'",
        ),
        (
            "info.json",
            lambda m: m.update(fps="ten"),
            r"info\.json: 'fps' must be a positive number, got 'ten'",
        ),
        (
            "episodes.jsonl",
            lambda rows: rows[1].update(length="x"),
            r"episodes\.jsonl \(episode 1\): 'length'",
        ),
        ("tasks.jsonl", lambda rows: rows[0].pop("task_index"), r"tasks\.jsonl: missing key 'task_index'"),
    ],
)
def test_malformed_metadata_names_file_and_key(dataset_root, tmp_path, file, edit, expected):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    path = root / "meta" / file
    if file.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        edit(rows)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=expected):
        lerobot.LeRobotDataset(root)


def test_truncated_parquet_names_file_and_episode(dataset_root, tmp_path):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        UserError, match=r"episode_000001\.parquet \(episode 1\) is not a readable.*re-download"
    ):
        lerobot.LeRobotDataset(root)
    assert len(lerobot.LeRobotDataset(root, episodes=[0, 2])) == LENGTHS[0] + LENGTHS[2]


def test_undecodable_image_names_file_episode_and_frame(dataset_root, tmp_path):
    root = _copy_dataset(dataset_root, tmp_path / "bad")
    path = root / "data" / "chunk-000" / "episode_000002.parquet"
    table = pq.read_table(path)
    cells = table.column("wrist_image").to_pylist()
    cells[3] = {**cells[3], "bytes": cells[3]["bytes"][:40]}  # a truncated PNG
    column = table.schema.get_field_index("wrist_image")
    pq.write_table(table.set_column(column, table.schema.field(column), [cells]), path)
    dataset = lerobot.LeRobotDataset(root)
    dataset[LENGTHS[0] + LENGTHS[1] + 2]  # other frames of the episode decode
    with pytest.raises(
        UserError, match=r"episode_000002\.parquet \(episode 2, frame 3\): image 'wrist_image'"
    ):
        dataset[LENGTHS[0] + LENGTHS[1] + 3]


def test_truncated_video_names_file_and_episode(tmp_path):
    _video_codec_or_skip()
    root = lerobot_writer.write_lerobot_dataset(
        tmp_path / "vid", make_episodes()[:2], fps=FPS, use_videos=True
    )
    path = root / "videos" / "chunk-000" / "image" / "episode_000001.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    dataset = lerobot.LeRobotDataset(root)
    assert dataset[0]["image"].shape == (32, 32, 3)  # episode 0 still decodes
    with pytest.raises(
        UserError, match=r"episode_000001\.mp4 \(episode 1, 'image'\) cannot be decoded.*re-download"
    ):
        dataset[LENGTHS[0]]


def test_writer_rejects_inconsistent_episodes(tmp_path):
    episodes = make_episodes()
    episodes[1]["state"] = episodes[1]["state"][:, :5]
    with pytest.raises(ValueError, match=r"episode 1: feature 'state'"):
        lerobot_writer.write_lerobot_dataset(tmp_path / "x", episodes, fps=FPS)
    with pytest.raises(ValueError, match="'task'"):
        lerobot_writer.write_lerobot_dataset(
            tmp_path / "y", [{"state": np.zeros((3, 2), np.float32)}], fps=FPS
        )


# ------------------------------------------------------------------------------------ LeRobot v3.0

V3_TASKS = (*TASKS, "put the cup on the plate")


def make_v3_episodes() -> list[dict]:
    """The v2.1 test episodes, the third with a third task."""
    episodes = make_episodes()
    episodes[2]["task"] = V3_TASKS[2]
    return episodes


@pytest.fixture(scope="module", params=["image", "video"])
def v3_root(request, tmp_path_factory):
    """v3.0 with images in parquet or as mp4. The size limits (between the sizes of episodes 0+1
    and 0+1+2) pack episodes 0 and 1 into one data / video file and start a new one (in chunk-001:
    one file per chunk) for episode 2."""
    video = request.param == "video"
    if video:
        _video_codec_or_skip()
    return lerobot_writer.write_lerobot_dataset(
        tmp_path_factory.mktemp("v3") / request.param,
        make_v3_episodes(),
        fps=FPS,
        use_videos=video,
        codebase_version="v3.0",
        robot_type="panda",
        chunks_size=1,
        data_files_size_in_mb=0.0023 if video else 0.0093,
        video_files_size_in_mb=0.0052,
    )


def test_written_layout_is_lerobot_v30(v3_root):
    """Checked against lerobot 0.4's LeRobotDatasetMetadata / LeRobotDataset._save_episode_*."""
    video = v3_root.name == "video"
    info = json.loads((v3_root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "panda"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 3
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == (
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video else None
    )
    assert {"chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "splits"} <= set(info)
    assert "total_chunks" not in info and "total_videos" not in info  # v2.1-only fields
    assert info["features"]["image"]["dtype"] == ("video" if video else "image")
    assert set(lerobot.DEFAULT_FEATURES) <= set(info["features"])
    if video:
        assert info["features"]["image"]["info"]["video.fps"] == FPS

    data_files = sorted((v3_root / "data").glob("chunk-*/file-*.parquet"))
    assert [p.relative_to(v3_root).as_posix() for p in data_files] == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    first = pq.ParquetFile(data_files[0])
    assert first.metadata.num_row_groups == 2  # one row group per appended episode
    table = first.read()
    np.testing.assert_array_equal(table.column("episode_index").to_numpy(), np.repeat([0, 1], LENGTHS[:2]))
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(sum(LENGTHS[:2])))
    np.testing.assert_array_equal(
        table.column("timestamp").to_numpy()[LENGTHS[0] :], (np.arange(12) / FPS).astype(np.float32)
    )
    assert ("image" in table.column_names) != video
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["state"]["length"] == 8

    episode_files = sorted((v3_root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    assert episode_files and episode_files[0].relative_to(v3_root).as_posix() == (
        "meta/episodes/chunk-000/file-000.parquet"
    )
    rows = [row for path in episode_files for row in pq.read_table(path).to_pylist()]
    assert [r["episode_index"] for r in rows] == [0, 1, 2]
    assert [r["tasks"] for r in rows] == [[V3_TASKS[0]], [V3_TASKS[1]], [V3_TASKS[2]]]
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0), (0, 0), (1, 0)]
    bounds = np.cumsum([0, *LENGTHS])
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [
        (int(a), int(b)) for a, b in itertools.pairwise(bounds)
    ]
    stats = {k for k in rows[0] if k.startswith("stats/")}
    for stat in ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"):
        assert {f"stats/state/{stat}", f"stats/image/{stat}", f"stats/index/{stat}"} <= stats
    assert np.asarray(rows[0]["stats/image/mean"]).shape == (3, 1, 1)
    assert rows[1]["stats/state/count"] == [LENGTHS[1]]
    assert {"meta/episodes/chunk_index", "meta/episodes/file_index"} <= set(rows[0])
    if video:
        for key in ("image", "wrist_image"):
            assert [(r[f"videos/{key}/chunk_index"], r[f"videos/{key}/file_index"]) for r in rows] == [
                (0, 0),
                (0, 0),
                (1, 0),
            ]
            assert (
                rows[0][f"videos/{key}/from_timestamp"] == 0.0
                and rows[2][f"videos/{key}/from_timestamp"] == 0.0
            )
            assert rows[1][f"videos/{key}/from_timestamp"] == pytest.approx(LENGTHS[0] / FPS)
            assert rows[1][f"videos/{key}/to_timestamp"] == pytest.approx(sum(LENGTHS[:2]) / FPS)
            assert (v3_root / "videos" / key / "chunk-001" / "file-000.mp4").is_file()

    tasks = pq.read_table(v3_root / "meta" / "tasks.parquet")  # a pandas frame indexed by the task
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert tasks.column("task_index").to_pylist() == [0, 1, 2]
    assert tasks.column(pandas_meta["index_columns"][0]).to_pylist() == list(V3_TASKS)
    stats_json = json.loads((v3_root / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(
        stats_json["state"]["mean"],
        np.concatenate([e["state"] for e in make_v3_episodes()]).mean(0),
        rtol=1e-6,
    )
    assert stats_json["state"]["count"] == [sum(LENGTHS)] and np.asarray(
        stats_json["image"]["std"]
    ).shape == (3, 1, 1)


def test_v30_reads_back_exactly_and_as_v21(v3_root, dataset):
    """Every frame: the same sample (keys, dtypes, values; images exact from parquet) as the v2.1
    copy of the episodes, tasks from meta/tasks.parquet; video frames found by timestamp."""
    video = v3_root.name == "video"
    ds = lerobot.LeRobotDataset(v3_root, delta_timestamps={"actions": [i / FPS for i in range(HORIZON)]})
    assert ds.meta.version == "v3.0" and len(ds) == len(dataset) and ds.tasks == dict(enumerate(V3_TASKS))
    episodes = make_v3_episodes()
    for index in range(len(ds)):
        item, reference = ds[index], dataset[index]
        assert item.keys() == reference.keys()
        ep = int(item["episode_index"])
        assert item["task"] == V3_TASKS[ep]
        for key in reference:
            if key in ("task", "task_index") or (video and key in ("image", "wrist_image")):
                continue
            assert np.asarray(item[key]).dtype == np.asarray(reference[key]).dtype, key
            np.testing.assert_array_equal(item[key], reference[key], err_msg=key)
        if video:  # lossy: closest to its own source frame
            t = int(item["frame_index"])
            errors = [np.abs(item["image"].astype(int) - f).mean() for f in episodes[ep]["image"]]
            assert int(np.argmin(errors)) == t and errors[t] < 8, (ep, t)
    # An episode subset from both files, in the requested order.
    subset = lerobot.LeRobotDataset(v3_root, episodes=[2, 0], load_images=not video)
    assert len(subset) == LENGTHS[2] + LENGTHS[0]
    np.testing.assert_array_equal(subset[0]["state"], episodes[2]["state"][0])
    np.testing.assert_array_equal(subset[LENGTHS[2]]["actions"], episodes[0]["actions"][0])
    if not video:
        np.testing.assert_array_equal(subset[LENGTHS[2] + 3]["wrist_image"], episodes[0]["wrist_image"][3])


def test_unknown_codebase_version_names_it_and_the_supported_ones(dataset_root, tmp_path):
    for version in ("v1.6", "v4.0", None):
        root = _copy_dataset(dataset_root, tmp_path / f"bad_{version}")
        info = json.loads((root / "meta" / "info.json").read_text())
        info["codebase_version"] = version
        (root / "meta" / "info.json").write_text(json.dumps(info))
        found = f"'{version}'" if version else "no codebase_version"
        with pytest.raises(lerobot.LeRobotFormatError, match=rf"{found}.*v2\.0, v2\.1, v3\.0"):
            lerobot.LeRobotDataset(root)
    with pytest.raises(ValueError, match=r"v2\.1, v3\.0"):
        lerobot_writer.write_lerobot_dataset(
            tmp_path / "x", make_episodes(), fps=FPS, codebase_version="v2.0"
        )


def test_v30_unreadable_files_name_file_and_episodes(tmp_path):
    root = lerobot_writer.write_lerobot_dataset(
        tmp_path / "v3", make_v3_episodes(), fps=FPS, codebase_version="v3.0", data_files_size_in_mb=0.0093
    )
    path = root / "data" / "chunk-000" / "file-000.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(lerobot.LeRobotFormatError, match=r"file-000\.parquet \(episodes 0, 1\).*parquet"):
        lerobot.LeRobotDataset(root)
    lerobot.LeRobotDataset(root, episodes=[2])  # the other file still reads
    (root / "meta" / "tasks.parquet").unlink()
    with pytest.raises(lerobot.LeRobotFormatError, match=r"missing file .*tasks\.parquet"):
        lerobot.LeRobotDataset(root, episodes=[2])


# ------------------------------------------------------------------------------------ transforms


def test_repack_and_flat_paths():
    sample = {"a": {"b": 1, "c": 2}, "d": 3}
    assert T.repack(sample, {"x": "a/b", "y": {"z": "d"}}) == {"x": 1, "y": {"z": 3}}
    with pytest.raises(KeyError, match="'nope'"):
        T.repack(sample, {"x": "nope"})


def test_delta_and_absolute_actions_with_mask():
    assert T.make_bool_mask(2, -1, 1) == (True, True, False, True)
    state = np.arange(8, dtype=np.float32)
    actions = np.ones((3, 7), np.float32) * 10
    sample = {"state": state, "actions": actions}
    delta = T.delta_actions(sample, T.make_bool_mask(6, -1))
    expected = actions.copy()
    expected[:, :6] -= state[:6]
    np.testing.assert_array_equal(delta["actions"], expected)
    np.testing.assert_array_equal(sample["actions"], actions)  # input untouched (pure)
    back = T.absolute_actions(delta, T.make_bool_mask(6, -1))
    np.testing.assert_array_equal(back["actions"], actions)
    assert T.delta_actions(sample, None) is sample


def test_normalize_formulas_only_over_stats_dims():
    stats = {
        "state": NormStats(
            mean=np.arange(8.0), std=np.full(8, 2.0), q01=np.full(8, -1.0), q99=np.full(8, 3.0)
        )
    }
    x = np.arange(7, dtype=np.float32) * 3  # fewer dims than the stats: use the first 7
    z = T.normalize({"state": x}, stats)["state"]
    np.testing.assert_allclose(z, (x - np.arange(7.0)) / (2.0 + 1e-6), rtol=1e-6)
    q = T.normalize({"state": x}, stats, use_quantiles=True)["state"]
    np.testing.assert_allclose(q, (x + 1.0) / (4.0 + 1e-6) * 2 - 1, rtol=1e-6)
    assert q.max() > 1  # no clipping
    # Unnormalize: padded dims beyond the stats pass through (z-score: openpi pads std with 1, so x·(1 + 1e-6)).
    padded = np.concatenate([np.full(8, 0.5, np.float32), np.full(4, 7.0, np.float32)])
    for quantile in (False, True):
        out = T.unnormalize({"state": padded}, stats, use_quantiles=quantile)["state"]
        np.testing.assert_allclose(out[8:], 7.0, rtol=2e-6)
        back = T.normalize({"state": out[:8]}, stats, use_quantiles=quantile)["state"]
        np.testing.assert_allclose(back, 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="q01"):
        T.normalize({"state": x}, {"state": NormStats(mean=np.zeros(8), std=np.ones(8))}, use_quantiles=True)


@pytest.mark.parametrize("shape", [(32, 32, 3), (48, 32, 3), (2, 20, 50, 3)])
def test_resize_with_pad_is_openpi_clients(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = T.resize_with_pad(images, 28, 28)
    assert out.shape == (*shape[:-3], 28, 28, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image_tools.resize_with_pad(images, 28, 28))
    # tf.image.resize_with_pad's semantics: a 16x32 image fills the width, centred with zero rows.
    wide = T.resize_with_pad(np.full((16, 32, 3), 200, np.uint8), 28, 28)
    assert (wide[7:21] == 200).all() and not wide[:7].any() and not wide[21:].any()
    with pytest.raises(TypeError, match="uint8"):
        T.resize_with_pad(images.astype(np.float32), 28, 28)


def test_image_helpers_and_padding():
    np.testing.assert_allclose(T.images_to_float(np.array([0, 255], np.uint8)), [-1.0, 1.0])
    np.testing.assert_array_equal(T.to_uint8_hwc(np.full((3, 4, 5), 0.5)).shape, (4, 5, 3))
    padded = T.pad_states_and_actions({"state": np.ones(8), "actions": np.ones((2, 7))}, 32)
    assert padded["state"].shape == (32,) and padded["actions"].shape == (2, 32)
    assert padded["state"][8:].sum() == 0 and padded["actions"][:, 7:].sum() == 0


def test_libero_inputs_and_outputs():
    image = np.full((8, 8, 3), 7, np.uint8)
    sample = {
        "observation/image": image,
        "observation/wrist_image": image + 1,
        "observation/state": np.arange(8.0),
        "actions": np.ones((4, 7)),
        "prompt": "go",
    }
    out = T.libero_inputs(sample)
    assert out["image_mask"] == {"base_0_rgb": True, "left_wrist_0_rgb": True, "right_wrist_0_rgb": False}
    np.testing.assert_array_equal(out["image"]["left_wrist_0_rgb"], image + 1)
    np.testing.assert_array_equal(out["image"]["right_wrist_0_rgb"], np.zeros_like(image))
    assert out["prompt"] == "go" and out["actions"].shape == (4, 7)
    assert T.libero_outputs({"actions": np.ones((4, 32))})["actions"].shape == (4, 7)


def test_tokenize_prompt(tokenizer):
    out = T.tokenize_prompt({"prompt": "pick up the red bowl", "state": np.zeros(8)}, tokenizer)
    tokens, mask = tokenizer.tokenize("pick up the red bowl")
    np.testing.assert_array_equal(out["tokenized_prompt"], tokens)
    np.testing.assert_array_equal(out["tokenized_prompt_mask"], mask)
    assert "prompt" not in out


# ------------------------------------------------------------------------------------ configs


def test_named_configs_exist_and_are_consistent():
    names = configs.data_config_names()
    for name in (
        "pi0_libero",
        "pi0_maniskill",
        "pi05_libero",
        "pi05_maniskill",
        "pi05_metaworld",
        "pi05_calvin",
        "pi0_custom",
        "pi0_realworld",
        "pi0_aloha_robotwin",
    ):
        assert name in names
        cfg = configs.get_data_config(name)
        assert cfg.name == name
        assert cfg.norm_type == ("quantile" if name.startswith("pi05") else "zscore")
        assert set(cfg.camera_map.values()) <= set(cfg.repack_map)
        assert len(cfg.dataset_state_keys) == len(cfg.state_keys)  # every state key is repacked
        assert len(cfg.dataset_action_keys) == len(cfg.action_keys)
        if cfg.delta_mask is not None:
            assert len(cfg.delta_mask) <= cfg.action_dim
    libero = configs.get_data_config("pi0_libero")
    assert libero.delta_mask == (True,) * 6 + (False,) and libero.action_horizon == 50
    assert configs.get_data_config("pi05_libero").delta_mask is None
    with pytest.raises(KeyError, match="pi0_libero"):
        configs.get_data_config("pi0_libro")
    with pytest.raises(dataclasses_frozen_error()):
        libero.repo_id = "x"


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_custom_config_from_command_line_overrides():
    cfg = tyro.cli(
        configs.DataConfig,
        default=configs.get_data_config("pi0_custom"),
        args=[
            "--repo-id", "/data/my_robot",
            "--repack", "observation/image", "observation.images.front", "observation/state", "observation.state",
            "actions", "action",
            "--cameras", "base_0_rgb", "observation/image",
            "--state-dim", "6",
            "--delta-action-mask", "5", "-1",
        ],
    )  # fmt: skip
    assert cfg.repo_id == "/data/my_robot" and cfg.camera_map == {"base_0_rgb": "observation/image"}
    assert cfg.dataset_state_keys == ["observation.state"] and cfg.dataset_action_keys == ["action"]
    assert cfg.delta_mask == (True,) * 5 + (False,) and cfg.state_dim == 6
    assert configs.asset_id_for("/data/my_robot") == "my_robot"
    assert configs.asset_id_for("physical-intelligence/libero") == "physical-intelligence/libero"


def test_pipeline_sample_values(dataset, tokenizer):
    stats = {
        "state": NormStats(mean=np.full(8, 100.0), std=np.full(8, 4.0)),
        "actions": NormStats(mean=np.full(7, 1.0), std=np.full(7, 2.0)),
    }
    data_cfg = configs.get_data_config("pi0_libero", action_horizon=HORIZON)
    transform = configs.make_transforms(
        data_cfg,
        model_action_dim=32,
        image_resolution=(28, 28),
        tasks=dataset.tasks,
        norm_stats=stats,
        tokenizer=tokenizer,
    )
    raw = dataset[LENGTHS[0] + 2]
    sample = transform(raw)
    assert sample["image"]["base_0_rgb"].shape == (28, 28, 3)
    np.testing.assert_array_equal(sample["image"]["base_0_rgb"], T.resize_with_pad(raw["image"], 28, 28))
    assert sample["image_mask"]["right_wrist_0_rgb"] == np.False_
    np.testing.assert_allclose(sample["state"][:8], (raw["state"] - 100) / (4 + 1e-6), rtol=1e-6)
    assert sample["state"].shape == (32,) and not sample["state"][8:].any()
    delta = raw["actions"].copy()
    delta[:, :6] -= raw["state"][:6]
    np.testing.assert_allclose(sample["actions"][:, :7], (delta - 1) / (2 + 1e-6), rtol=1e-5)
    assert sample["actions"].shape == (HORIZON, 32) and not sample["actions"][:, 7:].any()
    np.testing.assert_array_equal(sample["tokenized_prompt"], tokenizer.tokenize(TASKS[1])[0])
    # Output transforms invert the pipeline's action part.
    outputs = configs.output_transforms(data_cfg, stats)
    restored = outputs({"actions": sample["actions"], "state": sample["state"]})["actions"]
    np.testing.assert_allclose(restored, raw["actions"], rtol=1e-4, atol=1e-3)


def test_pipeline_rejects_wrong_dims(dataset):
    data_cfg = configs.get_data_config("pi0_libero", action_horizon=HORIZON, state_dim=6)
    transform = configs.make_transforms(
        data_cfg,
        model_action_dim=32,
        image_resolution=(28, 28),
        tasks=dataset.tasks,
        norm_stats=None,
        tokenizer=None,
    )
    with pytest.raises(ValueError, match="state-dim 8"):
        transform(dataset[0])


# ------------------------------------------------------------------------------------ loader


@pytest.fixture(scope="module")
def transform(dataset, tokenizer):
    data_cfg = configs.get_data_config("pi0_libero", action_horizon=HORIZON)
    return configs.make_transforms(
        data_cfg, model_action_dim=32, image_resolution=(28, 28), tasks=dataset.tasks, norm_stats=None,
        tokenizer=tokenizer,
    )  # fmt: skip


def test_loader_rejects_a_batch_larger_than_the_dataset(dataset, transform):
    with pytest.raises(UserError, match=f"has {len(dataset)} frames, fewer than one batch of 64"):
        loader.BatchLoader(dataset, transform, 64, num_workers=0)


def test_loader_batches_shapes_and_epoch_coverage(dataset, transform):
    with loader.BatchLoader(dataset, transform, batch_size=4, seed=1, num_workers=2) as batches:
        assert batches.batches_per_epoch == 7
        seen = []
        for batch in batches.batches(7):
            assert batch["image"]["base_0_rgb"].shape == (4, 28, 28, 3)
            assert batch["image_mask"]["base_0_rgb"].shape == (4,)
            assert batch["state"].shape == (4, 32) and batch["actions"].shape == (4, HORIZON, 32)
            assert batch["tokenized_prompt"].shape == (4, 16) and batch["tokenized_prompt"].dtype == np.int32
            seen.extend(np.round(batch["state"][:, 0], 3))
        assert batches.position == loader.LoaderPosition(1, 0)
    expected = np.concatenate([make_episodes()[e]["state"][:, 0] for e in range(3)])
    assert len(set(seen)) == 28 and set(seen) <= set(np.round(expected, 3))


def test_loader_is_deterministic_and_resumes(dataset, transform):
    def states(loader_obj, n):
        return [b["state"][:, 0] for b in loader_obj.batches(n)]

    full = states(loader.BatchLoader(dataset, transform, 4, seed=3, num_workers=2), 10)  # crosses an epoch
    inline = states(loader.BatchLoader(dataset, transform, 4, seed=3, num_workers=0), 10)
    np.testing.assert_array_equal(full, inline)
    first = loader.BatchLoader(dataset, transform, 4, seed=3, num_workers=2)
    head = states(first, 6)
    saved = loader.LoaderPosition.from_dict(json.loads(json.dumps(first.position.to_dict())))
    assert saved == loader.LoaderPosition(0, 6)
    resumed = loader.BatchLoader(dataset, transform, 4, seed=3, num_workers=2, position=saved)
    np.testing.assert_array_equal(head + states(resumed, 4), full)
    other_seed = states(loader.BatchLoader(dataset, transform, 4, seed=4, num_workers=0), 1)
    assert not np.array_equal(other_seed[0], full[0])


def test_loader_device_batches_with_sharding(dataset, transform):
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch_size = len(jax.devices())
    with loader.BatchLoader(dataset, transform, batch_size, num_workers=1) as batches:
        batch = next(batches.device_batches(sharding))
    assert isinstance(batch["state"], jax.Array) and batch["state"].sharding == sharding
    assert batch["image"]["base_0_rgb"].dtype == np.uint8
    assert len(batch["state"].addressable_shards) == len(jax.devices())


def test_loader_rows_split_the_global_batch_and_state_is_per_process(dataset, transform, tmp_path):
    """Two simulated processes' rows together are the 1-process batches; each reads only its rows;
    the saved state restores the position and refuses a changed seed or batch size."""

    class Recording:
        def __init__(self):
            self.read = []

        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            self.read.append(int(index))
            return dataset[index]

    whole = loader.BatchLoader(dataset, transform, 6, seed=2, num_workers=0)
    parts = [Recording(), Recording()]
    halves = [
        loader.BatchLoader(part, transform, 6, seed=2, num_workers=1, rows=rows)
        for part, rows in zip(parts, ([0, 1, 2], [3, 4, 5]), strict=True)
    ]
    for full, a, b in zip(whole.batches(5), halves[0].batches(5), halves[1].batches(5), strict=True):
        np.testing.assert_array_equal(full["state"], np.concatenate([a["state"], b["state"]]))
        np.testing.assert_array_equal(full["actions"], np.concatenate([a["actions"], b["actions"]]))
    expected = [whole.batch_indices(loader.LoaderPosition(0, i)) for i in range(4)] + [
        whole.batch_indices(loader.LoaderPosition(1, 0))
    ]
    assert sorted(parts[0].read) == sorted(np.concatenate([e[:3] for e in expected]).tolist())
    assert sorted(parts[1].read) == sorted(np.concatenate([e[3:] for e in expected]).tolist())

    path = halves[1].save_state(tmp_path)
    assert path == tmp_path / "loader" / "process_0-of-1.json"
    saved = json.loads(path.read_text())
    assert saved["rows"] == [3, 4, 5] and (saved["epoch"], saved["batch"]) == (1, 1)
    fresh = loader.BatchLoader(dataset, transform, 6, seed=2, num_workers=0, rows=[3, 4, 5])
    assert fresh.restore_state(tmp_path) and fresh.position == halves[1].position
    assert not fresh.restore_state(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"seed=2.*seed=9"):
        loader.BatchLoader(dataset, transform, 6, seed=9, num_workers=0).restore_state(tmp_path)
    with pytest.raises(ValueError, match="increasing positions"):
        loader.BatchLoader(dataset, transform, 6, rows=[4, 2])

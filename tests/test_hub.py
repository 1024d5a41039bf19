"""Hub datasets without the network: a LeRobot v3.0 dataset (videos, several tasks, episodes packed
into shared files) is put in a Hugging Face cache laid out as huggingface_hub lays it out
(`datasets--<org>--<name>/{blobs, refs/main, snapshots/<commit>/...}`), and read by repo id with
HF_HUB_OFFLINE=1: only the files a reader needs land in HF_LEROBOT_HOME, the frames equal the local
dataset's, files missing from the cache are named, and `python -m pirl.norm_stats` works end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from pirl.data import hub, lerobot, lerobot_writer

ROOT = Path(__file__).resolve().parents[1]
REPO = "pirl-test/toy"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LENGTHS = (6, 9, 5, 7)
TASKS = ("pick up the red bowl", "open the top drawer", "put the cup on the plate")


def make_episodes() -> list[dict]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    episodes = []
    for ep, length in enumerate(LENGTHS):
        t = np.arange(length)
        image = np.stack([np.stack([xx * 4 + ep * 50, yy * 4 + i * 20, xx + yy + i], -1) for i in t]) % 256
        episodes.append(
            {
                "image": image.astype(np.uint8),
                "state": (ep * 10 + t[:, None] + rng.normal(size=(length, 8))).astype(np.float32),
                "actions": rng.normal(size=(length, 7)).astype(np.float32),
                "task": TASKS[ep % 3],
            }
        )
    return episodes


def hub_cache_with(dataset: Path, cache: Path, repo_id: str = REPO) -> Path:
    """Lay `dataset` out as huggingface_hub's cache does; returns the snapshot folder."""
    storage = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    files = {p.relative_to(dataset).as_posix(): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n"
    files[".gitattributes"] = b"*.mp4 filter=lfs\n"
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    try:
        lerobot_writer.pick_video_codec()
    except RuntimeError as e:
        pytest.skip(f"PyAV cannot encode video here: {e}")
    return lerobot_writer.write_lerobot_dataset(
        tmp_path_factory.mktemp("hub_src") / "toy",
        make_episodes(),
        fps=10,
        use_videos=True,
        codebase_version="v3.0",
        data_files_size_in_mb=0.0005,
        video_files_size_in_mb=0.004,
    )


@pytest.fixture
def offline_hub(local_dataset, tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the dataset, an empty HF_LEROBOT_HOME."""
    cache = tmp_path / "hub"
    snapshot = hub_cache_with(local_dataset, cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot"))
    return snapshot


def fetched(tmp_path: Path) -> set[str]:
    root = tmp_path / "lerobot" / REPO
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_repo_id_fetches_only_the_files_needed(offline_hub, local_dataset, tmp_path):
    meta = {
        p.relative_to(local_dataset).as_posix() for p in (local_dataset / "meta").rglob("*") if p.is_file()
    }
    data = {
        p.relative_to(local_dataset).as_posix() for p in (local_dataset / "data").rglob("*") if p.is_file()
    }
    assert len(data) > 1 and len(meta) > 4  # episodes packed into several data / episode-metadata files

    numeric = lerobot.LeRobotDataset(REPO, load_images=False, progress=False)
    assert fetched(tmp_path) == meta | data  # no videos, no README
    home = tmp_path / "lerobot" / REPO
    a_data_file = sorted(data)[0]
    assert os.path.samefile(home / a_data_file, offline_hub / a_data_file)  # linked: one copy on disk
    assert not os.path.samefile(home / "meta/info.json", offline_hub / "meta/info.json")  # copied
    assert numeric.meta.repo_id == REPO and numeric.meta.version == "v3.0"
    local = lerobot.LeRobotDataset(local_dataset, load_images=False)
    for index in range(len(local)):
        a, b = numeric[index], local[index]
        assert a.keys() == b.keys() and a["task"] == b["task"]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    # Images of episode 3 only: its video files join, the others stay on the Hub.
    subset = lerobot.LeRobotDataset(REPO, episodes=[3], progress=False)
    wanted = set(subset.meta.files_needed([3], videos=True))
    videos = {name for name in fetched(tmp_path) if name.startswith("videos/")}
    assert videos == {n for n in wanted if n.startswith("videos/")} and len(videos) == 1
    np.testing.assert_array_equal(
        subset[2]["image"], lerobot.LeRobotDataset(local_dataset)[sum(LENGTHS[:3]) + 2]["image"]
    )


def test_offline_names_every_missing_file(offline_hub, local_dataset, tmp_path):
    meta = lerobot.load_metadata(local_dataset)
    gone = [meta.data_file(1), meta.video_file(3, "image")]
    for name in gone:
        (offline_hub / name).unlink()
    with pytest.raises(hub.HubError) as error:
        lerobot.LeRobotDataset(REPO, progress=False)
    message = str(error.value)
    assert "HF_HUB_OFFLINE=1" in message and REPO in message and str(tmp_path / "hub") in message
    assert "2 file(s)" in message and all(f"\n  {name}" in message for name in gone)
    # Nothing of the repo cached at all: the error says so, naming meta/info.json and the cache.
    with pytest.raises(
        hub.HubError, match=r"HF_HUB_OFFLINE=1.*no snapshot of dataset 'pirl-test/other'.*meta/info\.json"
    ):
        lerobot.load_metadata("pirl-test/other")
    # A name that is no repo id and no folder: the local error, naming info.json once.
    with pytest.raises(lerobot.LeRobotFormatError, match=r"info\.json") as local_error:
        lerobot.load_metadata(tmp_path / "nothing_here")
    assert str(local_error.value).count("info.json") == 1


def test_norm_stats_cli_on_an_offline_hub_repo(offline_hub, local_dataset, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PIRL_"))},
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_LEROBOT_HOME": str(tmp_path / "lerobot"),
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "pirl.norm_stats", "--config-name", "pi0_libero", "--repo-id", REPO]
    result = subprocess.run(
        [*command, "--assets-dir", str(tmp_path / "assets")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = json.loads((tmp_path / "assets" / "pi0_libero" / REPO / "norm_stats.json").read_text())
    states = np.concatenate([e["state"] for e in make_episodes()])
    np.testing.assert_allclose(stats["norm_stats"]["state"]["mean"], states.mean(0), rtol=1e-5, atol=1e-5)
    assert not any(name.startswith("videos/") for name in fetched(tmp_path))


def test_online_lists_the_repo_and_downloads_only_what_is_read(local_dataset, tmp_path, monkeypatch):
    """The online path with huggingface_hub's two calls replaced by fakes serving `local_dataset`:
    the repo is listed once, meta/ and the data files are downloaded, no video, no README."""
    import huggingface_hub

    listing = sorted(p.relative_to(local_dataset).as_posix() for p in local_dataset.rglob("*") if p.is_file())
    downloads: list[str] = []

    def fake_download(repo_id, filename, *, repo_type, revision, cache_dir):
        assert (repo_id, repo_type, revision) == (REPO, "dataset", "v3.0")
        downloads.append(filename)
        target = Path(cache_dir) / "fake" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((local_dataset / filename).read_bytes())
        return str(target)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: [*listing, "README.md"]
    )
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot"))
    dataset = lerobot.LeRobotDataset(REPO, load_images=False, revision="v3.0", progress=False)
    wanted = {n for n in listing if n.startswith(("meta/", "data/"))}
    assert set(downloads) == wanted  # meta/ (info.json placed last: a complete meta/ or none), data
    assert [name for name in downloads if name.startswith("meta/")][-1] == "meta/info.json"
    assert fetched(tmp_path) == wanted
    assert len(dataset) == sum(LENGTHS) and dataset.meta.revision == "v3.0"

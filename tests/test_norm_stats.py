"""Norm stats: streaming statistics vs exact numpy, the CLI end to end (openpi's JSON format and
location, delta-action chunks, max_frames), warnings and widening of tiny ranges, loading back."""

import json
import logging

import numpy as np
import pytest

from pirl import norm_stats as cli
from pirl.data import configs, lerobot_writer
from pirl.data.normalize import (
    NormStats,
    RunningStats,
    load_norm_stats,
    save_norm_stats,
    widen_small_ranges,
)

LENGTHS = (15, 22, 9, 30)


def make_episodes() -> list[dict]:
    rng = np.random.default_rng(0)
    episodes = []
    for ep, length in enumerate(LENGTHS):
        state = rng.normal(size=(length, 8)).astype(np.float32) * np.arange(1, 9) + ep
        state[:, 7] = 0.04  # a constant gripper dim: tiny std, narrow quantile range
        episodes.append(
            {
                "image": np.zeros((length, 8, 8, 3), np.uint8),
                "wrist_image": np.zeros((length, 8, 8, 3), np.uint8),
                "state": state,
                "actions": rng.uniform(-2, 3, size=(length, 7)).astype(np.float32),
                "task": f"task {ep % 2}",
            }
        )
    return episodes


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def dataset_root(tmp_path_factory, request):
    """The same episodes as LeRobot v2.1 and as v3.0 (episodes packed 2-3 per data file)."""
    return lerobot_writer.write_lerobot_dataset(
        tmp_path_factory.mktemp("ns") / "toy_ds",
        make_episodes(),
        fps=10,
        codebase_version=request.param,
        data_files_size_in_mb=0.02,
    )


def exact_state_and_actions(horizon: int, delta_mask) -> tuple[np.ndarray, np.ndarray]:
    states, actions = [], []
    for episode in make_episodes():
        length = len(episode["state"])
        for t in range(length):
            rows = [min(t + h, length - 1) for h in range(horizon)]
            chunk = episode["actions"][rows].copy()
            if delta_mask is not None:
                m = len(delta_mask)
                chunk[:, :m] -= np.where(delta_mask, episode["state"][t, :m], 0)
            states.append(episode["state"][t])
            actions.append(chunk)
    return np.stack(states), np.concatenate(actions)


def test_running_stats_match_numpy_with_range_growth():
    rng = np.random.default_rng(1)
    # Later batches widen the range, forcing histogram re-binning.
    batches = [
        rng.normal(size=(500, 3)) * scale + shift for scale, shift in [(1, 0), (3, 1), (0.5, -4), (6, 2)]
    ]
    stats = RunningStats()
    for batch in batches:
        stats.update(batch)
    data = np.concatenate(batches)
    result = stats.get_statistics()
    np.testing.assert_allclose(result.mean, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(result.std, data.std(0), rtol=1e-8)
    width = stats.bin_width()
    for q, got in ((0.01, result.q01), (0.99, result.q99)):
        # The histogram returns the left edge of the bin holding the ceil(q·n)-th smallest value, i.e.
        # numpy's inverted-CDF quantile up to a bin width (re-binning can shift counts by one bin).
        exact = np.quantile(data, q, axis=0, method="inverted_cdf")
        assert np.all(np.abs(got - exact) <= 2 * width), (q, got, exact, width)


def test_running_stats_needs_two_vectors():
    stats = RunningStats()
    stats.update(np.ones((1, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.get_statistics()


@pytest.mark.parametrize("config_name", ["pi0_libero", "pi05_libero"])
def test_cli_writes_openpi_json_with_exact_values(dataset_root, tmp_path, config_name):
    assets = tmp_path / "assets"
    path = cli.main(config_name, repo_id=str(dataset_root), assets_dir=str(assets))
    assert path == assets / config_name / "toy_ds" / "norm_stats.json"
    data = json.loads(path.read_text())
    assert list(data) == ["norm_stats"] and set(data["norm_stats"]) == {"state", "actions"}
    for key, dim in (("state", 8), ("actions", 7)):
        entry = data["norm_stats"][key]
        assert set(entry) == {"mean", "std", "q01", "q99"}
        assert all(isinstance(v, list) and len(v) == dim for v in entry.values())
    cfg = configs.get_data_config(config_name)
    state, actions = exact_state_and_actions(cfg.action_horizon, cfg.delta_mask)
    loaded = load_norm_stats(path.parent)
    for key, values in (("state", state), ("actions", actions)):
        np.testing.assert_allclose(loaded[key].mean, values.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(loaded[key].std, values.std(0), rtol=1e-4, atol=1e-5)
        span = values.max(0) - values.min(0)
        tol = 2 * span / 5000 + 1e-6  # within histogram resolution
        for q, got in ((0.01, loaded[key].q01), (0.99, loaded[key].q99)):
            assert np.all(np.abs(got - np.quantile(values, q, axis=0, method="inverted_cdf")) <= tol)
    # The config's own loader finds the file in the same place.
    assert configs.get_data_config(
        config_name, repo_id=str(dataset_root), assets_dir=str(assets)
    ).load_norm_stats()


def test_cli_warns_and_widens_tiny_ranges(dataset_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        path = cli.main(
            "pi05_libero",
            repo_id=str(dataset_root),
            assets_dir=str(tmp_path),
            min_std=0.5,
            min_quantile_range=0.2,
        )
    assert any("state dim 7" in r.message and "std" in r.message for r in caplog.records)
    assert any("state dim 7" in r.message and "q01" in r.message for r in caplog.records)
    state = load_norm_stats(path.parent)["state"]
    assert state.std[7] == pytest.approx(0.5)
    assert state.q99[7] - state.q01[7] == pytest.approx(0.2, rel=1e-5)
    assert (state.q01[7] + state.q99[7]) / 2 == pytest.approx(0.04, abs=1e-3)
    assert state.std[0] > 0.5  # wide dims untouched


def test_max_frames_limits_the_stream(dataset_root):
    cfg = configs.get_data_config("pi05_libero", repo_id=str(dataset_root))
    stats = cli.compute_norm_stats(cfg, max_frames=20, progress=False)
    full = cli.compute_norm_stats(cfg, progress=False)
    assert not np.allclose(stats["state"].mean, full["state"].mean)


def test_load_norm_stats_from_checkpoint_assets(tmp_path):
    stats = {"state": NormStats(mean=np.zeros(3), std=np.ones(3), q01=-np.ones(3), q99=np.ones(3))}
    save_norm_stats(tmp_path / "ckpt" / "1000" / "assets" / "physical-intelligence" / "libero", stats)
    loaded = load_norm_stats(tmp_path / "ckpt" / "1000")
    np.testing.assert_array_equal(loaded["state"].q99, np.ones(3))
    loaded = load_norm_stats(tmp_path / "ckpt" / "1000", asset_id="physical-intelligence/libero")
    np.testing.assert_array_equal(loaded["state"].std, np.ones(3))
    with pytest.raises(FileNotFoundError, match=r"pirl\.norm_stats"):
        load_norm_stats(tmp_path / "nowhere")


def test_widen_small_ranges_leaves_wide_dims():
    stats = NormStats(
        mean=np.zeros(2), std=np.array([1e-8, 2.0]), q01=np.array([0.0, -1.0]), q99=np.array([0.0, 1.0])
    )
    out = widen_small_ranges("x", stats, min_std=0.1, min_quantile_range=0.5)
    np.testing.assert_allclose(out.std, [0.1, 2.0])
    np.testing.assert_allclose(out.q01, [-0.25, -1.0])
    np.testing.assert_allclose(out.q99, [0.25, 1.0])

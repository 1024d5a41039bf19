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
    return pi0.init_params(MODEL, jax.random.key(0))


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

"""On-device env <-> model adapter: prompt table, normalisation, delta actions, camera mapping."""

import jax.numpy as jnp
import numpy as np
import pytest

from pirl.data.configs import get_data_config
from pirl.data.normalize import NormStats
from pirl.errors import UserError
from pirl.models.config import Pi0Config
from pirl.policies.env_io import (
    env_actions_to_model,
    env_obs_to_model,
    make_env_adapter,
    model_actions_to_env,
)

STATS = {
    "state": NormStats.from_json({"mean": [0.1] * 8, "std": [2.0] * 8, "q01": [-1.0] * 8, "q99": [3.0] * 8}),
    "actions": NormStats.from_json(
        {"mean": [0.2] * 7, "std": [0.5] * 7, "q01": [-0.5] * 7, "q99": [0.5] * 7}
    ),
}


def _tokenize(prompt):
    tokens = np.zeros(16, np.int32)
    tokens[: len(prompt)] = [ord(c) % 50 + 1 for c in prompt]
    return tokens, tokens > 0


@pytest.mark.parametrize("norm_type", ["zscore", "quantile"])
@pytest.mark.parametrize("delta", [0, 6])
def test_actions_round_trip_through_normalisation_and_delta(norm_type, delta):
    data = get_data_config("pi0_custom", norm_type=norm_type, delta_action_mask=(6, -1) if delta else None)
    adapter = make_env_adapter(data, ["ab", "cde"], _tokenize, STATS)
    rng = np.random.default_rng(0)
    state = jnp.asarray(rng.uniform(-0.2, 0.2, (3, 8)), jnp.float32)
    env_actions = jnp.asarray(rng.uniform(-0.4, 0.4, (3, 5, 7)), jnp.float32)
    model_actions = env_actions_to_model(adapter, env_actions, 32, state)
    assert model_actions.shape == (3, 5, 32) and float(jnp.abs(model_actions[..., 7:]).max()) == 0.0
    back = model_actions_to_env(adapter, jnp.pad(model_actions, ((0, 0), (0, 5), (0, 0))), state)
    np.testing.assert_allclose(back, env_actions, atol=1e-5)
    if delta:  # the model sees the action relative to the state on the delta dims only
        shifted = env_actions_to_model(adapter, env_actions, 32, state + 1.0)
        assert not np.allclose(shifted[..., :6], model_actions[..., :6])
        np.testing.assert_allclose(shifted[..., 6], model_actions[..., 6])
        with pytest.raises(ValueError, match="pass the env state"):
            model_actions_to_env(adapter, model_actions)


def test_observation_mapping_and_errors():
    cfg = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
    adapter = make_env_adapter(get_data_config("pi0_custom"), ["ab", "cde"], _tokenize, STATS)
    env_obs = {
        "agentview_image": jnp.full((2, 28, 28, 3), 255, jnp.uint8),
        "wrist_image": jnp.zeros((2, 28, 28, 3), jnp.uint8),
        "state": jnp.full((2, 8), 2.1),
    }
    obs = env_obs_to_model(adapter, cfg, env_obs, jnp.array([1, 0]))
    np.testing.assert_allclose(obs.images["base_0_rgb"], 1.0)
    np.testing.assert_allclose(obs.images["left_wrist_0_rgb"], -1.0)
    assert obs.image_masks["right_wrist_0_rgb"].tolist() == [False, False]
    np.testing.assert_allclose(obs.state[:, :8], (2.1 - 0.1) / (2.0 + 1e-6), rtol=1e-6)
    assert obs.state.shape == (2, 32) and float(jnp.abs(obs.state[:, 8:]).max()) == 0.0
    np.testing.assert_array_equal(obs.tokenized_prompt[0], _tokenize("cde")[0])
    # A 56x56 render is resized to the model's 28x28 on device.
    big = dict(env_obs, agentview_image=jnp.zeros((2, 56, 56, 3), jnp.uint8))
    assert env_obs_to_model(adapter, cfg, big, jnp.array([0, 0])).images["base_0_rgb"].shape == (2, 28, 28, 3)
    with pytest.raises(UserError, match="delta mask covers 9 dims"):
        make_env_adapter(get_data_config("pi0_custom", delta_action_mask=(9,)), ["a"], _tokenize, STATS)
    with pytest.raises(ValueError, match="max_token_len"):
        env_obs_to_model(adapter, Pi0Config.tiny(max_token_len=8), env_obs, jnp.array([0, 0]))

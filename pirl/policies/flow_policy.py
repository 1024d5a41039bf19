"""Flow-SDE / Flow-Noise policies over π0 / π0.5: stochastic denoising rollouts and their log-probs.

The action expert's Euler ODE (openpi's sampler: t from 1 to 0 in K steps of dt = -1/K) becomes a
Markov chain of Gaussian transitions x_{i+1} ~ N(mu_i, s_i^2):
- Flow-SDE: mu = x - Δv - (σ_i²Δ / 2t_i)(x + (1 - t_i)v), s = σ_i sqrt(Δ), σ_i = a sqrt(t_i / (1 - t_i))
  (at t_0 = 1 the denominator uses 1 - t_1, so σ_0 = a sqrt(K)).
- Flow-Noise: mu = x - Δv (the ODE step), s = the noise head's std read from the expert's tokens.
Steps that are not stochastic take the ODE step exactly as `pi0.sample_actions` does, so the
eval-mode chain reproduces it bit for bit. A rollout stores the chain [B, K+1, H, A] and, for the
single-step mode, which step k was stochastic; `log_prob_and_value` rescores the stored transition(s)
under new params with one prefix pass plus one expert pass (K expert passes for the joint mode).

All functions are pure; jit them at the top with the configs (and `mode`) static, e.g.
`jax.jit(sample, static_argnames=("policy_cfg", "model_cfg", "mode"))`.
"""

import dataclasses
import math
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.models.value_head import apply_value_head, init_value_head
from pirl.policies.config import FlowPolicyConfig
from pirl.policies.masks import cast_frozen, trainable_mask
from pirl.policies.noise_head import apply_noise_head, init_noise_head

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_2PIE = 0.5 * math.log(2.0 * math.pi * math.e)


@dataclasses.dataclass(frozen=True)
class DenoiseSchedule:
    """Static per-step constants of a K-step schedule (numpy, folded into the compiled program)."""

    times: np.ndarray
    """f32[K+1] flow times fed to the velocity, accumulated in float32 exactly like openpi (t += dt)."""
    dt: float
    """Euler step -1/K (a Python float, as in openpi, so the ODE step rounds identically)."""
    sde_std: np.ndarray
    """f32[K] Flow-SDE transition std s_i = σ_i sqrt(Δ)."""
    sde_shrink: np.ndarray
    """f32[K] Flow-SDE mean correction weight σ_i² Δ / (2 t_i)."""
    one_minus_t: np.ndarray
    """f32[K] 1 - t_i with t_i = 1 - i/K exactly."""


def denoise_schedule(num_steps: int, noise_level: float) -> DenoiseSchedule:
    """The schedule's constants; σ and friends are computed in float64 from t_i = 1 - i/K."""
    k = num_steps
    dt = -1.0 / k
    times = np.empty(k + 1, np.float32)
    times[0] = np.float32(1.0)
    for i in range(k):  # same float32 accumulation as openpi's `time + dt` loop
        times[i + 1] = times[i] + np.float32(dt)
    t = 1.0 - np.arange(k, dtype=np.float64) / k
    delta = 1.0 / k
    denom = np.where(np.arange(k) == 0, delta, 1.0 - t)  # at t_0 = 1: 1 - t_1 = Δ
    sigma = noise_level * np.sqrt(t / denom)
    return DenoiseSchedule(
        times=times,
        dt=dt,
        sde_std=(sigma * math.sqrt(delta)).astype(np.float32),
        sde_shrink=(sigma**2 * delta / (2.0 * t)).astype(np.float32),
        one_minus_t=(1.0 - t).astype(np.float32),
    )


@flax.struct.dataclass
class SampleOutput:
    """One rollout call's actions and everything PPO needs to rescore them (a pytree)."""

    actions: Float[Array, "b h a"]
    """Final denoised actions x_K (= chain[:, -1])."""
    chain: Float[Array, "b k1 h a"]
    """Denoise chain x_0 (noise) .. x_K (actions), K+1 entries."""
    means: Float[Array, "b k h a"]
    """Transition means per step (the ODE step where the step is deterministic)."""
    stds: Float[Array, "b k h a"]
    """Transition stds per step (0 where the step is deterministic)."""
    log_probs: Array
    """Old log-probs, aggregated per logprob_type: [B, chunk, env_dim] | [B, chunk] | [B]."""
    denoise_index: Int[Array, " b"]
    """Single-step mode: the stochastic step k in [0, K); -1 when all (joint) or none (eval) are."""
    value: Float[Array, " b"]
    """Critic value (expert critic: mean over the K steps); zeros without a value head."""


def aggregate_log_probs(token_log_probs: Float[Array, "b c d"], logprob_type: str) -> Array:
    """[B, chunk, env_dim] per-element log-probs -> token_level (as is), action_level [B, chunk], chunk_level [B]."""
    if logprob_type == "token_level":
        return token_log_probs
    if logprob_type == "action_level":
        return token_log_probs.sum(axis=-1)
    if logprob_type == "chunk_level":
        return token_log_probs.sum(axis=(-2, -1))
    raise ValueError(f"unknown logprob_type {logprob_type!r}")


def normal_log_prob(
    x: Float[Array, "*s"], mean: Float[Array, "*s"], std: Float[Array, "*s"]
) -> Float[Array, "*s"]:
    """Element-wise log N(x; mean, std²); 0 where std == 0 (a deterministic step carries no density)."""
    safe_std = jnp.where(std > 0, std, 1.0)
    log_prob = -jnp.log(safe_std) - _HALF_LOG_2PI - 0.5 * jnp.square((x - mean) / safe_std)
    return jnp.where(std > 0, log_prob, 0.0)


def _check_configs(policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config) -> None:
    if policy_cfg.action_chunk > model_cfg.action_horizon:
        raise ValueError(
            f"action_chunk {policy_cfg.action_chunk} exceeds the model's action_horizon {model_cfg.action_horizon}"
        )
    if policy_cfg.action_env_dim > model_cfg.action_dim:
        raise ValueError(
            f"action_env_dim {policy_cfg.action_env_dim} exceeds the model's action_dim {model_cfg.action_dim}"
        )


def _check_params(params: dict, policy_cfg: FlowPolicyConfig) -> None:
    if "model" not in params:
        raise ValueError("policy params need a 'model' entry (see init_policy_params)")
    if policy_cfg.add_value_head and "value_head" not in params:
        raise ValueError(
            "add_value_head=True but params have no 'value_head'; build them with init_policy_params"
        )
    if policy_cfg.noise_method == "flow_noise" and "noise_head" not in params:
        raise ValueError(
            "noise_method='flow_noise' needs params['noise_head']; build them with init_policy_params"
        )


def init_policy_params(
    policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config, rng: jax.Array, model_params: dict | None = None
) -> dict:
    """{"model": openpi tree, "value_head": ... (if add_value_head), "noise_head": ... (flow_noise)}.

    `model_params` (e.g. a loaded SFT checkpoint) is used as is; otherwise the model is initialised.
    The leaves RL keeps frozen (`masks.trainable_mask`) are stored as `model_cfg.frozen_dtype`.
    """
    _check_configs(policy_cfg, model_cfg)
    rng_model, rng_value, rng_noise = jax.random.split(rng, 3)
    params = {"model": model_params if model_params is not None else pi0.init_params(model_cfg, rng_model)}
    if policy_cfg.add_value_head:
        in_dim = model_cfg.llm.width if policy_cfg.value_after_vlm else model_cfg.expert.width
        params["value_head"] = init_value_head(rng_value, in_dim, policy_cfg.value_head_hidden)
    if policy_cfg.noise_method == "flow_noise":
        params["noise_head"] = init_noise_head(
            rng_noise, model_cfg.expert.width, policy_cfg.noise_head_hidden, model_cfg.action_dim
        )
    return cast_frozen(params, trainable_mask(params, policy_cfg, model_cfg), model_cfg.frozen_dtype)


def _value(value_params: dict, features: Float[Array, "b d"]) -> Float[Array, " b"]:
    value = apply_value_head(value_params, features)
    return value.reshape(features.shape[0])


def _expert_value(
    params: dict, policy_cfg: FlowPolicyConfig, suffix_out: Float[Array, "b h d"]
) -> Float[Array, " b"]:
    """Critic on the expert's action tokens (π0): mean over the first action_chunk tokens."""
    batch = suffix_out.shape[0]
    if not policy_cfg.add_value_head or policy_cfg.value_after_vlm:
        return jnp.zeros((batch,), jnp.float32)
    tokens = suffix_out[:, : policy_cfg.action_chunk] if policy_cfg.chunk_critic_input else suffix_out
    features = jnp.mean(tokens.astype(jnp.float32), axis=1)
    if policy_cfg.detach_critic_input:
        features = jax.lax.stop_gradient(features)
    return _value(params["value_head"], features)


def _vlm_value(params: dict, cache: pi0.PrefixCache, mode: str = "mean_token") -> Float[Array, " b"]:
    """Critic on the VLM (π0.5): prefix output averaged over the valid image and prompt tokens
    (mode 'mean_token'), or the prefix's first / last position ('first_token' / 'last_token')."""
    if mode in ("first_token", "last_token"):
        token = cache.prefix_out[:, 0 if mode == "first_token" else -1]
        return _value(params["value_head"], token.astype(jnp.float32))
    weights = cache.prefix_mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(cache.prefix_out.astype(jnp.float32) * weights, axis=1)
    features = pooled / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return _value(params["value_head"], features)


def _transition(
    params: dict,
    policy_cfg: FlowPolicyConfig,
    model_cfg: Pi0Config,
    schedule: DenoiseSchedule,
    cache: pi0.PrefixCache,
    state: Float[Array, "b s"],
    x: Float[Array, "b h a"],
    step: Int[Array, " b"],
    stochastic: Bool[Array, " b"],
    level: Float[Array, " b"] | None = None,
) -> tuple[Float[Array, "b h a"], Float[Array, "b h a"], Float[Array, "b h d"]]:
    """Mean and std of x_{step+1} given x = x_step (std 0 and the plain ODE step where not stochastic).

    `level`: a per-example Flow-SDE noise level scaling a schedule built for level 1 (σ ∝ a, so the
    std scales by a and the mean correction by a²); None = the schedule's own level."""
    time = jnp.asarray(schedule.times)[step]
    v, suffix_out = pi0.predict_velocity(params["model"], model_cfg, cache, state, x, time)
    ode_mean = x + schedule.dt * v  # exactly openpi's Euler update
    flag = stochastic[:, None, None]
    if policy_cfg.noise_method == "flow_sde":
        shrink = jnp.asarray(schedule.sde_shrink)[step][:, None, None]
        sde_std = jnp.asarray(schedule.sde_std)[step][:, None, None]
        if level is not None:
            scale = level.astype(jnp.float32)[:, None, None]
            shrink, sde_std = shrink * scale**2, sde_std * scale
        one_minus_t = jnp.asarray(schedule.one_minus_t)[step][:, None, None]
        sde_mean = ode_mean - shrink * (x + one_minus_t * v)
        mean = jnp.where(flag, sde_mean, ode_mean)
        std = jnp.broadcast_to(sde_std, x.shape)
    else:
        mean = ode_mean
        std = apply_noise_head(params["noise_head"], suffix_out, policy_cfg.noise_logvar_range)
    std = jnp.where(flag, std, 0.0)
    return mean, std, suffix_out


def _schedule_and_level(
    policy_cfg: FlowPolicyConfig, noise_level: Array | float | None, batch: int
) -> tuple[DenoiseSchedule, Float[Array, " b"] | None]:
    """The denoise schedule, and the per-example level that scales it (None: the config's constant
    level, folded into the schedule). A given level uses a level-1 schedule scaled at run time."""
    if noise_level is None:
        return denoise_schedule(policy_cfg.num_steps, policy_cfg.noise_level), None
    level = jnp.broadcast_to(jnp.asarray(noise_level, jnp.float32), (batch,))
    return denoise_schedule(policy_cfg.num_steps, 1.0), level


def _scored(policy_cfg: FlowPolicyConfig, per_step: Float[Array, "b n h a"]) -> Float[Array, "b n c d"]:
    return per_step[:, :, : policy_cfg.action_chunk, : policy_cfg.action_env_dim]


def _draws(
    rng: jax.Array, batch: int, num_steps: int, action_shape: tuple[int, int]
) -> tuple[Float[Array, "b h a"], Int[Array, " b"], Float[Array, "k b h a"]]:
    """The sampler's random draws: x_0, the stochastic step k, and the transition noise.

    `rng` is one key for the whole batch, or keys[B] (one per example): then every example's draws
    depend on its own key only, not on which other examples share the call."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    if rng.ndim == (1 if typed else 2):  # a batch of keys (typed, or raw uint32[B, 2])
        if rng.shape[0] != batch:
            raise ValueError(f"got {rng.shape[0]} per-example keys for a batch of {batch}")
        x0, step, eps = jax.vmap(lambda key: _draws(key, 1, num_steps, action_shape))(rng)
        return x0[:, 0], step[:, 0], jnp.moveaxis(eps[:, :, 0], 0, 1)
    rng_noise, rng_step, rng_eps = jax.random.split(rng, 3)
    x0 = jax.random.normal(rng_noise, (batch, *action_shape), jnp.float32)
    step = jax.random.randint(rng_step, (batch,), 0, num_steps, jnp.int32)
    eps = jax.random.normal(rng_eps, (num_steps, batch, *action_shape), jnp.float32)
    return x0, step, eps


def sample(
    params: dict,
    policy_cfg: FlowPolicyConfig,
    model_cfg: Pi0Config,
    rng: jax.Array,
    obs: pi0.Observation,
    mode: Literal["train", "eval"] = "train",
    noise: Float[Array, "b h a"] | None = None,
    noise_level: Array | float | None = None,
) -> SampleOutput:
    """Denoise one action chunk per observation: one prefix pass, then K expert steps (lax.scan).

    mode="train": Flow-SDE single-step draws k ~ U{0..K-1} per sample and makes only step k
    stochastic; joint mode makes every step stochastic. mode="eval": the pure ODE (equal to
    `pi0.sample_actions(params["model"], model_cfg, rng, obs, num_steps=K, noise=chain[:, 0])`).
    `noise` overrides the initial x_0 ~ N(0, I). `rng` is one key, or keys[B] (one per example, so
    that an example's draws do not depend on how the batch is split). `noise_level` (scalar or [B],
    e.g. `policy_cfg.noise_level_at(global_step)`) overrides the Flow-SDE level; rescore with the same.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    _check_configs(policy_cfg, model_cfg)
    _check_params(params, policy_cfg)
    num_steps = policy_cfg.num_steps
    batch = obs.state.shape[0]
    schedule, level = _schedule_and_level(policy_cfg, noise_level, batch)
    shape = (batch, model_cfg.action_horizon, model_cfg.action_dim)
    x0, step_draw, eps = _draws(rng, batch, num_steps, shape[1:])
    x0 = x0 if noise is None else noise.astype(jnp.float32)

    steps = jnp.arange(num_steps, dtype=jnp.int32)
    if mode == "eval":
        denoise_index = jnp.full((batch,), -1, jnp.int32)
        stochastic = jnp.zeros((num_steps, batch), bool)
    elif policy_cfg.joint_logprob:
        denoise_index = jnp.full((batch,), -1, jnp.int32)
        stochastic = jnp.ones((num_steps, batch), bool)
    else:
        denoise_index = step_draw
        stochastic = steps[:, None] == denoise_index[None, :]

    cache = pi0.prefill(params["model"], model_cfg, obs)

    def denoise_step(x, inputs):
        step, step_eps, step_stochastic = inputs
        step_b = jnp.broadcast_to(step, (batch,))
        mean, std, suffix_out = _transition(
            params, policy_cfg, model_cfg, schedule, cache, obs.state, x, step_b, step_stochastic, level
        )
        x_next = jnp.where(step_stochastic[:, None, None], mean + std * step_eps, mean)
        log_prob = normal_log_prob(x_next, mean, std)
        value = _expert_value(params, policy_cfg, suffix_out)
        return x_next, (x_next, mean, std, log_prob, value)

    _, (xs, means, stds, log_probs, values) = jax.lax.scan(denoise_step, x0, (steps, eps, stochastic))
    to_batch_major = lambda a: jnp.moveaxis(a, 0, 1)  # noqa: E731
    xs, means, stds, log_probs = map(to_batch_major, (xs, means, stds, log_probs))
    chain = jnp.concatenate([x0[:, None], xs], axis=1)

    if policy_cfg.joint_logprob:
        initial = normal_log_prob(x0, jnp.zeros_like(x0), jnp.ones_like(x0))
        per_step = jnp.concatenate([initial[:, None], log_probs], axis=1)
    else:
        # The one stochastic step (eval: all zeros, as every step is deterministic).
        index = jnp.maximum(denoise_index, 0)[:, None, None, None]
        per_step = jnp.take_along_axis(log_probs, index, axis=1)
    token_log_probs = jnp.mean(_scored(policy_cfg, per_step), axis=1)

    if policy_cfg.add_value_head and policy_cfg.value_after_vlm:
        value = _vlm_value(params, cache, policy_cfg.value_vlm_mode)
    else:
        value = jnp.mean(values, axis=0)
    return SampleOutput(
        actions=chain[:, -1],
        chain=chain,
        means=means,
        stds=stds,
        log_probs=aggregate_log_probs(token_log_probs, policy_cfg.logprob_type),
        denoise_index=denoise_index,
        value=value,
    )


def log_prob_and_value(
    params: dict,
    policy_cfg: FlowPolicyConfig,
    model_cfg: Pi0Config,
    obs: pi0.Observation,
    chain: Float[Array, "b k1 h a"],
    denoise_index: Int[Array, " b"],
    noise_level: Array | float | None = None,
) -> tuple[Array, Float[Array, " b"], Float[Array, " b"]]:
    """Rescore stored transitions under `params`: (log_probs as in SampleOutput, entropy [B], value [B]).

    Single-step mode rescores only transition k = denoise_index (one prefix pass + one expert pass);
    joint mode rescores all K (one prefix pass + K expert passes, lax.scan) plus log N(x_0; 0, I),
    averaged over the K+1 terms. Entropy is Flow-Noise's mean Gaussian entropy ½ log(2πe s²) over
    the scored elements (zeros for Flow-SDE, whose std does not depend on params). The value is the
    expert critic at the rescored step(s) (mean over steps) or the VLM critic. Differentiate it
    w.r.t. the trainable leaves only (`masks.trainable_value_and_grad`, as the update does).
    `noise_level`: the Flow-SDE level the chain was sampled with (scalar or [B]; None = the config's).
    """
    _check_configs(policy_cfg, model_cfg)
    _check_params(params, policy_cfg)
    num_steps = policy_cfg.num_steps
    if chain.ndim != 4 or chain.shape[1] != num_steps + 1:
        raise ValueError(f"chain must be [B, K+1={num_steps + 1}, H, A], got shape {chain.shape}")
    batch = chain.shape[0]
    schedule, level = _schedule_and_level(policy_cfg, noise_level, batch)
    chain = chain.astype(jnp.float32)
    cache = pi0.prefill(params["model"], model_cfg, obs)
    always = jnp.ones((batch,), bool)

    def rescore(x, x_next, step):
        mean, std, suffix_out = _transition(
            params, policy_cfg, model_cfg, schedule, cache, obs.state, x, step, always, level
        )
        log_prob = normal_log_prob(x_next, mean, std)
        entropy = jnp.log(std) + _HALF_LOG_2PIE
        return log_prob, entropy, _expert_value(params, policy_cfg, suffix_out)

    if policy_cfg.joint_logprob:

        def scan_step(carry, inputs):
            return carry, rescore(*inputs)

        steps = jnp.broadcast_to(jnp.arange(num_steps, dtype=jnp.int32)[:, None], (num_steps, batch))
        xs = (jnp.moveaxis(chain[:, :-1], 1, 0), jnp.moveaxis(chain[:, 1:], 1, 0), steps)
        _, (log_probs, entropies, values) = jax.lax.scan(scan_step, None, xs)
        x0 = chain[:, 0]
        initial = normal_log_prob(x0, jnp.zeros_like(x0), jnp.ones_like(x0))
        log_probs = jnp.concatenate([initial[:, None], jnp.moveaxis(log_probs, 0, 1)], axis=1)
        entropies = jnp.concatenate(
            [jnp.full_like(x0, _HALF_LOG_2PIE)[:, None], jnp.moveaxis(entropies, 0, 1)], axis=1
        )
        expert_values = jnp.mean(values, axis=0)
    else:
        step = jnp.clip(denoise_index.astype(jnp.int32), 0, num_steps - 1)
        index = step[:, None, None, None]
        x = jnp.take_along_axis(chain, index, axis=1)[:, 0]
        x_next = jnp.take_along_axis(chain, index + 1, axis=1)[:, 0]
        log_prob, entropy, expert_values = rescore(x, x_next, step)
        log_probs, entropies = log_prob[:, None], entropy[:, None]

    token_log_probs = jnp.mean(_scored(policy_cfg, log_probs), axis=1)
    if policy_cfg.noise_method == "flow_noise":
        entropy = jnp.mean(_scored(policy_cfg, entropies), axis=(1, 2, 3))
    else:
        entropy = jnp.zeros((batch,), jnp.float32)
    if policy_cfg.add_value_head and policy_cfg.value_after_vlm:
        value = _vlm_value(params, cache, policy_cfg.value_vlm_mode)
    else:
        value = expert_values
    return aggregate_log_probs(token_log_probs, policy_cfg.logprob_type), entropy, value

"""The on-paper cost model (pirl.distributed.cost_model): FLOP count against XLA, memory and
traffic arithmetic over a mesh. Nothing is compiled (the XLA check only lowers)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from pirl.distributed import cost_model
from pirl.distributed.mesh import MeshConfig
from pirl.models import pi0
from pirl.models.config import Pi0Config

TINY = Pi0Config.tiny()


def test_forward_flops_match_xla_cost_analysis():
    obs = jax.eval_shape(lambda: pi0.fake_observation(TINY, 1))
    actions = jax.ShapeDtypeStruct((1, TINY.action_horizon, TINY.action_dim), jnp.float32)

    def loss(params, obs, actions):
        return jnp.mean(pi0.compute_loss(params, TINY, jax.random.PRNGKey(0), obs, actions))

    xla = jax.jit(loss).lower(pi0.abstract_params(TINY), obs, actions).cost_analysis()["flops"]
    # XLA counts each scanned layer loop once; the analytic count skips elementwise ops (norms,
    # softmax, GELU), a few % at the tiny widths (0.2% at full size, see docs/scaling.md).
    analytic = sum(cost_model.forward_flops(TINY, joint=True, loop_bodies_once=True).values())
    assert analytic == pytest.approx(xla, rel=0.06)
    assert analytic < xla


def test_step_flops_follow_what_is_trained():
    fwd = cost_model.forward_flops(TINY, joint=False)
    ppo = cost_model.ppo_update_flops_per_sample(TINY)
    assert ppo["prefix_forward"] == fwd["siglip"] + fwd["llm_prefix"]  # frozen: forward only
    assert ppo["expert_fwd_bwd"] == 3 * fwd["expert_suffix"]  # no remat in the tiny config
    remat = dataclasses.replace(TINY, remat=True)
    # Remat recomputes each layer's forward but its MLP down projection (XLA drops it as dead code).
    expert = cost_model.ppo_update_flops_per_sample(remat)["expert_fwd_bwd"]
    assert 3.5 * fwd["expert_suffix"] < expert < 4 * fwd["expert_suffix"]
    sft = cost_model.sft_flops_per_sample(remat)
    assert sft["total"] == 3 * sft["forward"] + sft["remat_recompute"]
    assert 0.5 * sft["forward"] < sft["remat_recompute"] < sft["forward"]
    assert sft["forward"] == sum(cost_model.forward_flops(TINY, joint=True).values())
    assert cost_model.sft_flops_per_sample(TINY)["remat_recompute"] == 0.0


def test_memory_and_traffic_scale_with_the_mesh():
    params = pi0.abstract_params(TINY)
    groups = cost_model.param_groups(params)
    total = pi0.param_count(params)
    assert sum(groups.values()) == total and min(groups.values()) > 0
    trainable = groups["expert"] + groups["projections"]
    chip = cost_model.ChipSpec("test chip", 100e12, 16e9, 100e9, 10e9)

    def estimate(sizes, **kwargs):
        return cost_model.estimate_step(
            "ppo",
            TINY,
            params,
            trainable,
            MeshConfig(axis_sizes=sizes),
            chip,
            global_batch=64,
            micro_batch=16,
            mfu=0.5,
            **kwargs,
        )

    four, eight = estimate((2, 4)), estimate((1, 8))
    assert four["memory_bytes_per_chip"]["params"] == pytest.approx(total * 4 / 4)
    assert eight["memory_bytes_per_chip"]["params"] == pytest.approx(total * 4 / 8)
    assert four["compute_s"] == pytest.approx(four["step_flops"] / (8 * 100e12 * 0.5))
    # 4 micro-batches, each gathering all params and reduce-scattering the trainable grads over fsdp.
    assert four["fsdp_bytes_received_per_chip"] == pytest.approx(4 * 3 / 4 * 4 * (total + trainable))
    assert eight["data_bytes_received_per_chip"] == 0  # no data axis, no all-reduce
    replicated = estimate((2, 4), replicate_frozen=True)
    assert replicated["fsdp_bytes_received_per_chip"] < four["fsdp_bytes_received_per_chip"]
    assert replicated["memory_bytes_per_chip"]["params"] > four["memory_bytes_per_chip"]["params"]
    with pytest.raises(ValueError, match="fixed sizes"):
        estimate((-1, 4))

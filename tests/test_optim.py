"""Optimizer: frozen leaves, value-head lr, clipping over trainable grads, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.rl import optim


def make_params():
    rng = np.random.default_rng(0)
    return {
        "vlm": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32).at[0, 0].set(-0.0)},
        "expert": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "bias": jnp.zeros((2,))},
        "value_head": {"kernel": jnp.asarray(rng.normal(size=(2, 1)), jnp.float32)},
    }


TRAINABLE = {"vlm": {"kernel": False}, "expert": {"kernel": True, "bias": True}, "value_head": {"kernel": True}}
VALUE_HEAD = {"vlm": {"kernel": False}, "expert": {"kernel": False, "bias": False}, "value_head": {"kernel": True}}


def loss_fn(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["vlm"]["kernel"]) @ params["expert"]["kernel"] + params["expert"]["bias"]
    pred = (hidden @ params["value_head"]["kernel"])[:, 0]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"loss": loss}


def make_batch(n=8):
    rng = np.random.default_rng(1)
    return {"x": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), "y": jnp.asarray(rng.normal(size=(n,)), jnp.float32)}


def test_frozen_leaves_bit_identical_and_stateless():
    cfg = optim.OptimizerConfig(lr=1e-2, value_lr=1e-1)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params = make_params()
    opt_state = optimizer.init(params)
    # No Adam moments are allocated for the frozen VLM kernel.
    state_sizes = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size") and x.ndim > 0)
    trainable_size = 3 * 2 + 2 + 2 * 1
    assert state_sizes == 2 * trainable_size

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: loss_fn(p, batch)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates, TRAINABLE), opt_state

    new_params = params
    for _ in range(3):
        new_params, opt_state = step(new_params, opt_state, make_batch())
    before = np.asarray(params["vlm"]["kernel"]).view(np.uint32)
    after = np.asarray(new_params["vlm"]["kernel"]).view(np.uint32)
    np.testing.assert_array_equal(before, after)  # bit-identical, -0.0 included
    assert not np.allclose(params["expert"]["kernel"], new_params["expert"]["kernel"])


def test_value_lr_applies_to_value_head_only():
    # First AdamW step without decay/clip moves every trainable leaf by ≈ lr·sign(grad).
    cfg = optim.OptimizerConfig(lr=1e-3, value_lr=0.25, weight_decay=0.0, clip_grad_norm=0.0)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params = make_params()
    grads = jax.grad(lambda p: loss_fn(p, make_batch())[0])(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(np.abs(updates["value_head"]["kernel"]), 0.25, rtol=1e-4)
    np.testing.assert_allclose(np.abs(updates["expert"]["kernel"]), 1e-3, rtol=1e-4)
    assert np.all(np.asarray(updates["vlm"]["kernel"]) == 0)


def test_clip_and_grad_norm_ignore_frozen_gradients():
    cfg = optim.OptimizerConfig(lr=1.0, clip_grad_norm=1.0)
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["vlm"]["kernel"] = jnp.full((4, 3), 1e6)  # huge but frozen
    grads["expert"]["bias"] = jnp.array([0.3, -0.4])  # norm 0.5 < 1: must not be scaled down
    metrics = optim.optimizer_metrics(cfg, grads, 0, TRAINABLE)
    assert np.isclose(float(metrics["train/actor/grad_norm"]), 0.5)
    assert float(metrics["train/actor/lr"]) == 1.0
    preprocess = optim.gradient_preprocessing(cfg, TRAINABLE)
    clipped, _ = preprocess.update(grads, preprocess.init(params), params)
    np.testing.assert_allclose(clipped["expert"]["bias"], [0.3, -0.4], rtol=1e-6)
    assert np.all(np.asarray(clipped["vlm"]["kernel"]) == 0)
    grads["expert"]["bias"] = jnp.array([3.0, -4.0])  # norm 5: scaled to norm 1
    clipped, _ = preprocess.update(grads, preprocess.init(params), params)
    np.testing.assert_allclose(clipped["expert"]["bias"], [0.6, -0.8], rtol=1e-6)


def test_accumulation_over_two_micro_batches_equals_full_batch():
    cfg = optim.OptimizerConfig(lr=1e-2, value_lr=1e-2)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params, batch = make_params(), make_batch(8)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, num_micro_is_two):
        num_micro = 2 if num_micro_is_two else 1
        (loss, aux), grads = optim.accumulate_gradients(loss_fn, params, batch, num_micro, trainable_mask=TRAINABLE)
        updates, _ = optimizer.update(grads, opt_state, params)
        return loss, aux, grads, optim.apply_updates(params, updates, TRAINABLE)

    step = jax.jit(step, static_argnums=2)
    loss1, aux1, grads1, new1 = step(params, opt_state, False)
    loss2, aux2, grads2, new2 = step(params, opt_state, True)
    (ref_loss, _), ref_grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    np.testing.assert_allclose(loss2, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(aux2["loss"], ref_loss, rtol=1e-6)
    for a, b, ref, t in zip(
        jax.tree.leaves(grads1), jax.tree.leaves(grads2), jax.tree.leaves(ref_grads), jax.tree.leaves(TRAINABLE), strict=True
    ):
        if t:
            np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(b, ref, rtol=1e-5, atol=1e-7)
        else:
            assert np.all(np.asarray(b) == 0)  # frozen: no gradient computed
    for a, b in zip(jax.tree.leaves(new1), jax.tree.leaves(new2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by num_micro=3"):
        optim.accumulate_gradients(loss_fn, params, batch, 3)


def test_multisteps_accumulation_and_no_value_head():
    cfg = optim.OptimizerConfig(lr=1e-2, accumulate_steps=2, weight_decay=0.0)
    optimizer = optim.make_optimizer(cfg)  # everything trainable, no value head
    params = {"w": jnp.ones((3,))}
    state = optimizer.init(params)
    updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)  # accumulating
    updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -1e-2, rtol=1e-4)


def test_bad_masks_are_reported():
    with pytest.raises(ValueError, match="structure of the params"):
        optim.param_labels({"a": jnp.zeros(2), "b": jnp.zeros(2)}, {"a": True})
    with pytest.raises(ValueError, match="Python bools"):
        optim.param_labels({"a": jnp.zeros(2)}, {"a": jnp.array(True)})

"""SFT on the tiny model (LoRA on the LLM) over a dataset written in the test: the loss falls,
frozen params stay bit-identical, checkpoints hold openpi-layout params and norm stats, resume
reproduces an uninterrupted run bit for bit; LoRA / expert-only masks freeze openpi's leaves.

Compilation dominates on the CPU, so all SFT runs use one model (tiny, one camera, LoRA) and share
compiled steps through a module-scoped persistent compilation cache (same HLO -> cache hit).
"""

import io
import json
import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from pirl import norm_stats as norm_stats_cli
from pirl.checkpoints.openpi_jax import flatten_params, load_openpi_params
from pirl.data import configs, lerobot_writer
from pirl.data.normalize import load_norm_stats
from pirl.distributed.mesh import MeshConfig, make_mesh, param_shardings
from pirl.logging.writer import read_jsonl
from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.policies import masks
from pirl.rl import optim
from pirl.sft import train as sft_train
from pirl.sft.config import SFTConfig, sft_config_for, sft_presets
from pirl.sft.train import init_params as sft_init_params
from pirl.sft.train import train_sft, trainable_mask

HORIZON = 4


def make_episodes() -> list[dict]:
    rng = np.random.default_rng(0)
    episodes = []
    for ep, length in enumerate((14, 11, 9, 10)):
        t = np.linspace(0, 1, length)[:, None]
        state = (np.sin(t * 3 + np.arange(8)) + ep * 0.1).astype(np.float32)
        episodes.append(
            {
                "image": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
                "wrist_image": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
                "state": state,
                "actions": (np.cos(t * 2 + np.arange(7)) * (1 + ep % 2)).astype(np.float32),
                "task": ("pick up the red bowl", "open the top drawer")[ep % 2],
            }
        )
    return episodes


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Share compiled steps between the runs of this module (restored afterwards)."""
    from jax._src import compilation_cache as cc

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    dataset = lerobot_writer.write_lerobot_dataset(root / "toy", make_episodes(), fps=10)
    words = ["pick", "up", "the", "red", "bowl", "open", "top", "drawer", "put", "it", "on", "plate"]
    rng = random.Random(0)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(rng.choice(words) for _ in range(6)) for _ in range(200)),
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
    (root / "tok.model").write_bytes(proto.getvalue())
    norm_stats_cli.main("pi0_libero", repo_id=str(dataset), assets_dir=str(root / "assets"))
    return root


def make_config(workdir, name: str, **overrides) -> SFTConfig:
    data = configs.get_data_config(
        "pi0_libero",
        repo_id=str(workdir / "toy"),
        assets_dir=str(workdir / "assets"),
        action_horizon=HORIZON,
        cameras=(("base_0_rgb", "observation/image"),),
    )
    # The frozen LLM stored in bf16 (as at full size): LoRA SFT, EMA, resume and export cover it.
    model = Pi0Config.tiny(
        action_horizon=HORIZON,
        image_keys=("base_0_rgb",),
        paligemma_variant="dummy_lora",
        frozen_dtype="bfloat16",
    )
    defaults = dict(
        model=model,
        data=data,
        tokenizer_path=str(workdir / "tok.model"),
        batch_size=8,
        num_steps=6,
        lr=3e-3,
        warmup_steps=0,
        decay_steps=1000,
        final_lr=3e-3,
        ema_decay=0.9,
        log_interval=1,
        save_interval=3,
        eval_interval=3,
        val_fraction=0.25,
        val_batches=1,
        num_workers=2,
        mesh=MeshConfig(axis_sizes=(4, 2)),
        log_dir=str(workdir / name / "logs"),
        checkpoint_dir=str(workdir / name / "ckpt"),
        progress=False,
    )
    return SFTConfig(**{**defaults, **overrides})


@pytest.mark.slow
def test_lora_sft_lowers_loss_freezes_llm_and_resumes_exactly(workdir):
    """One compiled model (LoRA on the LLM) for all runs: full run, then 3 + resume 3."""
    full = make_config(workdir, "full")
    result = train_sft(full)
    assert result["step"] == 6
    rows = read_jsonl(workdir / "full" / "logs" / "metrics.jsonl")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    assert {"train/grad_norm", "train/lr"} <= set(rows[0])
    assert rows[0]["train/lr"] == pytest.approx(3e-3)
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(val) == 2 and np.isfinite(val).all()
    assert list((workdir / "full" / "logs").glob("events.out.tfevents.*"))
    step_dir = workdir / "full" / "ckpt" / "6"
    assert (step_dir / "state").is_dir() and (step_dir / "params").is_dir()
    exported = flatten_params(load_openpi_params(step_dir))  # openpi layout: <ckpt>/<step>/params
    assert "action_in_proj/kernel" in exported and any(k.startswith("PaliGemma/img") for k in exported)
    assert set(load_norm_stats(step_dir)) == {"state", "actions"}
    # The step is a complete policy: model + data config, tokenizer next to the norm stats.
    from pirl.policies.trained import find_policy_description

    described = find_policy_description(step_dir)
    assert described is not None and described.model == full.model and described.data == full.data
    assert (step_dir / "assets" / "tokenizer.model").read_bytes() == Path(full.tokenizer_path).read_bytes()

    # Frozen leaves (the LLM's non-LoRA weights) are bit-identical to the initial params.
    init_rng, _ = jax.random.split(jax.random.PRNGKey(full.seed))
    abstract = pi0.abstract_params(full.model)
    shardings = param_shardings(abstract, make_mesh(full.mesh))
    initial = flatten_params(jax.device_get(sft_init_params(full, init_rng, shardings)))
    mask = flatten_params(trainable_mask(abstract))
    frozen = [k for k, trainable in mask.items() if not trainable]
    assert frozen and all(k.startswith("PaliGemma/llm") and "lora" not in k for k in frozen)
    assert not any("_1" in k.split("llm/")[1] for k in frozen)  # the expert is not LoRA: trainable
    for key in frozen:
        assert exported[key].dtype == initial[key].dtype == jnp.bfloat16, key
        assert np.asarray(exported[key]).tobytes() == np.asarray(initial[key]).tobytes(), key
    assert all(exported[k].dtype == np.float32 for k in mask if mask[k])
    changed = [k for k in mask if mask[k] and not np.array_equal(exported[k], initial[k])]
    assert any("lora" in k for k in changed) and "action_in_proj/kernel" in changed

    # The same run in two halves: 3 steps, stop, resume to 6 -> identical EMA params and losses.
    train_sft(make_config(workdir, "split", num_steps=3))
    saved = json.loads((workdir / "split" / "ckpt" / "3" / "loader" / "process_0-of-1.json").read_text())
    assert (saved["epoch"], saved["batch"], saved["rows"]) == (0, 3, list(range(8)))  # 4 batches/epoch
    resumed = train_sft(make_config(workdir, "split"))
    assert resumed["step"] == 6
    split = flatten_params(load_openpi_params(workdir / "split" / "ckpt" / "6"))
    for key, value in exported.items():
        np.testing.assert_array_equal(split[key], value, err_msg=key)
    split_rows = read_jsonl(workdir / "split" / "logs" / "metrics.jsonl")
    np.testing.assert_array_equal([r["train/loss"] for r in split_rows if "train/loss" in r], losses)


def test_trainable_masks_follow_openpi():
    base = flatten_params(trainable_mask(pi0.abstract_params(Pi0Config.tiny())))
    assert all(base.values())
    expert_only = flatten_params(
        trainable_mask(pi0.abstract_params(Pi0Config.tiny()), train_expert_only=True)
    )
    for key, trainable in expert_only.items():
        in_vlm = key.startswith("PaliGemma/img") or (key.startswith("PaliGemma/llm") and "_1" not in key)
        assert trainable == (not in_vlm), key
    both_lora = Pi0Config.tiny(paligemma_variant="dummy_lora", action_expert_variant="dummy_lora")
    mask = flatten_params(trainable_mask(pi0.abstract_params(both_lora)))
    for key, trainable in mask.items():
        assert trainable == (not key.startswith("PaliGemma/llm") or "lora" in key), key


def test_sft_and_rl_share_one_frozen_mechanism(monkeypatch):
    """SFT and the RL update take gradients and build optimizers through the same two functions of
    pirl.policies.masks; a LoRA model's frozen LLM is bf16 and gets no Adam moments."""
    calls = []
    value_and_grad, optimizer = masks.trainable_value_and_grad, masks.trainable_optimizer

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(masks, "trainable_value_and_grad", spy("grad", value_and_grad))
    monkeypatch.setattr(masks, "trainable_optimizer", spy("optimizer", optimizer))

    config = SFTConfig(
        model=Pi0Config.tiny(action_horizon=50, paligemma_variant="dummy_lora", frozen_dtype="bfloat16")
    )
    abstract = sft_train.frozen_params_cast(config, pi0.abstract_params(config.model))
    mask = trainable_mask(abstract)
    tx = sft_train.make_optimizer(config, mask)
    sft_train.make_train_step(config, tx, mask)
    assert calls == ["optimizer", "grad"]
    frozen = [x for x, t in zip(jax.tree.leaves(abstract), jax.tree.leaves(mask), strict=True) if not t]
    trainable = [x for x, t in zip(jax.tree.leaves(abstract), jax.tree.leaves(mask), strict=True) if t]
    assert frozen and all(x.dtype == jnp.bfloat16 for x in frozen)
    assert all(x.dtype == jnp.float32 for x in trainable)
    state = jax.eval_shape(tx.init, abstract)
    assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == 2 * sum(x.size for x in trainable)

    calls.clear()
    params = {"w": jnp.ones((2,)), "frozen": jnp.ones((2,), jnp.bfloat16)}
    rl_mask = {"w": True, "frozen": False}
    optim.make_optimizer(optim.OptimizerConfig(), rl_mask)
    _, grads = optim.accumulate_gradients(
        lambda p, b: (jnp.sum(p["w"] * p["frozen"] * b["x"].sum()), {}),
        params,
        {"x": jnp.ones((2, 2))},
        1,
        trainable_mask=rl_mask,
    )
    assert calls == ["optimizer", "grad"] and grads["frozen"] is None


def test_presets_cover_every_data_config():
    presets = sft_presets()
    assert set(presets) == {f"{name}_sft" for name in configs.data_config_names()}
    pi05 = sft_config_for("pi05_libero")
    assert pi05.model.pi05 and pi05.model.action_horizon == 10 and pi05.data.norm_type == "quantile"
    assert sft_config_for("pi0_libero").model.action_horizon == 50
    # Full fine-tuning of the full-size model does not fit 80 GB per device data-parallel: FSDP.
    assert {cfg.mesh.axis_sizes for _, cfg in presets.values()} == {(1, -1)}
    with pytest.raises(ValueError, match="action_horizon"):
        SFTConfig(model=Pi0Config(action_horizon=10), data=configs.get_data_config("pi0_libero"))

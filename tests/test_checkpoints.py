"""openpi JAX (orbax) and openpi-PyTorch (safetensors) checkpoint import / export.

Small checkpoints are written from the tiny config's parameter trees (the shapes of
`pi0.init_params`, filled with distinct random values so that a wrong transpose or a swapped pair
cannot round-trip by accident); full-size trees are only ever abstract (jax.eval_shape).
"""

import logging
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from pirl.checkpoints import (
    CheckpointMismatchError,
    export_pytorch_params,
    flatten_params,
    load_openpi_params,
    load_pytorch_params,
    load_pytorch_state_dict,
    merge_lora_params,
    merge_missing_params,
    pytorch_key_map,
    save_openpi_params,
    unflatten_params,
)
from pirl.checkpoints.pytorch import EMBED_TOKENS_KEY, EXPERT_LM_HEAD_KEY, LLM_LM_HEAD_KEY
from pirl.models import pi0
from pirl.models.config import Pi0Config

VIT = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
LLM = "paligemma_with_expert.paligemma.model.language_model."
EXPERT = "paligemma_with_expert.gemma_expert.model."


def _randomized(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def tiny(request):
    cfg = Pi0Config.tiny(pi05=request.param)
    # Shapes of init_params (eval_shape: no slow init), values distinct and random.
    params = _randomized(pi0.abstract_params(cfg), seed=int(request.param))
    return cfg, params


@pytest.fixture(scope="module")
def jax_ckpt(tiny, tmp_path_factory):
    _, params = tiny
    path = tmp_path_factory.mktemp("openpi_jax")
    save_openpi_params(params, path)
    return path


@pytest.fixture(scope="module")
def torch_file(tiny, tmp_path_factory):
    cfg, params = tiny
    return export_pytorch_params(params, cfg, tmp_path_factory.mktemp("openpi_torch"))


def _assert_trees_equal(actual, expected):
    flat_a, flat_e = flatten_params(actual), flatten_params(expected)
    assert sorted(flat_a) == sorted(flat_e)
    for key, value in flat_e.items():
        got = np.asarray(flat_a[key])
        assert got.dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(got, np.asarray(value), err_msg=key)


def _with(tree, key, value):
    flat = flatten_params(tree)
    flat[key] = value
    return unflatten_params(flat)


def _without(tree, key):
    flat = flatten_params(tree)
    del flat[key]
    return unflatten_params(flat)


# ------------------------------------------------------------------------------------ openpi JAX


def test_openpi_jax_round_trip_is_exact(tiny, jax_ckpt):
    cfg, params = tiny
    assert (jax_ckpt / "params" / "_METADATA").exists()
    loaded = load_openpi_params(jax_ckpt, expected=cfg)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    _assert_trees_equal(loaded, params)
    # The params directory itself works too, and an abstract tree is as good as the config.
    _assert_trees_equal(load_openpi_params(jax_ckpt / "params", expected=pi0.abstract_params(cfg)), params)
    # Cast while restoring.
    bf16 = load_openpi_params(jax_ckpt, expected=cfg, dtype=jnp.bfloat16)
    _assert_trees_equal(bf16, jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params))


def test_openpi_jax_restores_with_sharding(tiny, jax_ckpt):
    cfg, params = tiny
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    loaded = load_openpi_params(jax_ckpt, expected=cfg, sharding=sharding)
    leaves = jax.tree.leaves(loaded)
    assert all(isinstance(x, jax.Array) and x.sharding == sharding for x in leaves)
    _assert_trees_equal(loaded, params)
    per_leaf = jax.tree.map(lambda _: sharding, params)
    _assert_trees_equal(load_openpi_params(jax_ckpt, expected=cfg, sharding=per_leaf), params)


def test_openpi_jax_strips_nnx_value_level_and_keeps_bf16(tiny, tmp_path):
    cfg, params = tiny
    # openpi's training saves an nnx.State: every leaf sits under a trailing "value" key.
    bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    with_value = jax.tree.map(lambda x: {"value": x}, bf16)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(tmp_path / "params", args=ocp.args.PyTreeSave({"params": with_value}))
    loaded = load_openpi_params(tmp_path, expected=cfg)
    _assert_trees_equal(loaded, jax.tree.map(np.asarray, bf16))


def test_openpi_jax_errors_name_the_key(tiny, jax_ckpt, tmp_path):
    cfg, params = tiny
    abstract = pi0.abstract_params(cfg)

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "params")):
        load_openpi_params(tmp_path / "nope", expected=cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="params"):
        load_openpi_params(tmp_path / "empty", expected=cfg)

    key = "PaliGemma/llm/layers/mlp_1/linear"
    shape = abstract["PaliGemma"]["llm"]["layers"]["mlp_1"]["linear"].shape
    wrong = (*shape[:-1], shape[-1] + 1)
    message = f"mis-shaped key '{key}': expected shape {wrong}, found {shape}"
    with pytest.raises(CheckpointMismatchError, match=re.escape(message)):
        load_openpi_params(jax_ckpt, expected=_with(abstract, key, jax.ShapeDtypeStruct(wrong, jnp.float32)))

    extra = "PaliGemma/llm/layers/attn/q_einsum/lora_a"
    lora_tree = _with(abstract, extra, jax.ShapeDtypeStruct((4, 8, 64, 2), jnp.float32))
    with pytest.raises(CheckpointMismatchError, match=f"missing key '{extra}'"):
        load_openpi_params(jax_ckpt, expected=lora_tree)
    # A base checkpoint into a LoRA tree: allowed when asked, and the LoRA leaf comes from the defaults.
    partial = load_openpi_params(jax_ckpt, expected=lora_tree, missing_regex=".*lora.*")
    _assert_trees_equal(partial, params)
    defaults = _with(params, extra, np.full((4, 8, 64, 2), 0.5, np.float32))
    merged = merge_missing_params(partial, defaults)
    np.testing.assert_array_equal(flatten_params(merged)[extra], 0.5)

    dropped = "action_in_proj/bias"
    with pytest.raises(CheckpointMismatchError, match=f"unexpected key '{dropped}'"):
        load_openpi_params(jax_ckpt, expected=_without(abstract, dropped))
    loaded = load_openpi_params(jax_ckpt, expected=_without(abstract, dropped), ignore_unexpected=True)
    assert dropped not in flatten_params(loaded)

    with pytest.raises(FileExistsError, match="overwrite"):
        save_openpi_params(params, jax_ckpt)


# ------------------------------------------------------------------------------- openpi PyTorch


def test_pytorch_export_matches_openpi_converter(tiny, torch_file):
    """Spot-checks against the formulas of openpi's examples/convert_jax_model_to_pytorch.py."""
    cfg, params = tiny
    state = load_file(torch_file)
    key_map = pytorch_key_map(cfg)
    # Same keys as the key map, with the tied embedding under save_model's kept name (lm_head).
    assert set(state) == (set(key_map) - {EMBED_TOKENS_KEY}) | {LLM_LM_HEAD_KEY}
    for key, (_, shape) in key_map.items():
        assert state[LLM_LM_HEAD_KEY if key == EMBED_TOKENS_KEY else key].shape == shape, key

    llm, img = params["PaliGemma"]["llm"], params["PaliGemma"]["img"]
    i, n, h = 1, cfg.llm.num_heads, cfg.llm.head_dim
    d_llm, d_exp = cfg.llm.width, cfg.expert.width
    q = llm["layers"]["attn"]["q_einsum"]["w"][i]
    np.testing.assert_array_equal(
        state[LLM + f"layers.{i}.self_attn.q_proj.weight"], q.transpose(0, 2, 1).reshape(n * h, d_llm)
    )
    kv = llm["layers"]["attn"]["kv_einsum_1"]["w"]
    np.testing.assert_array_equal(state[EXPERT + f"layers.{i}.self_attn.k_proj.weight"], kv[i, 0, 0].T)
    np.testing.assert_array_equal(state[EXPERT + f"layers.{i}.self_attn.v_proj.weight"], kv[i, 1, 0].T)
    o = llm["layers"]["attn"]["attn_vec_einsum_1"]["w"]
    np.testing.assert_array_equal(
        state[EXPERT + f"layers.{i}.self_attn.o_proj.weight"], o[i].reshape(n * h, d_exp).transpose(1, 0)
    )
    gating = llm["layers"]["mlp"]["gating_einsum"]
    np.testing.assert_array_equal(state[LLM + f"layers.{i}.mlp.gate_proj.weight"], gating[i, 0].T)
    np.testing.assert_array_equal(state[LLM + f"layers.{i}.mlp.up_proj.weight"], gating[i, 1].T)
    np.testing.assert_array_equal(
        state[LLM + f"layers.{i}.mlp.down_proj.weight"], llm["layers"]["mlp"]["linear"][i].T
    )
    np.testing.assert_array_equal(
        state[LLM + f"layers.{i}.input_layernorm.weight"], llm["layers"]["pre_attention_norm"]["scale"][i]
    )
    np.testing.assert_array_equal(state[LLM_LM_HEAD_KEY], llm["embedder"]["input_embedding"])

    width = cfg.siglip.width
    np.testing.assert_array_equal(
        state[VIT + "embeddings.patch_embedding.weight"], img["embedding"]["kernel"].transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(
        state[VIT + "embeddings.position_embedding.weight"], img["pos_embedding"].reshape(-1, width)
    )
    attn = img["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]
    np.testing.assert_array_equal(
        state[VIT + "encoder.layers.0.self_attn.q_proj.weight"],
        attn["query"]["kernel"][0].reshape(-1, width).T,
    )
    np.testing.assert_array_equal(
        state[VIT + "encoder.layers.0.self_attn.q_proj.bias"], attn["query"]["bias"][0].reshape(-1)
    )
    np.testing.assert_array_equal(
        state[VIT + "encoder.layers.0.self_attn.out_proj.weight"],
        attn["out"]["kernel"][0].reshape(-1, width).T,
    )
    np.testing.assert_array_equal(
        state["paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight"],
        img["head"]["kernel"].T,
    )
    np.testing.assert_array_equal(state["action_in_proj.weight"], params["action_in_proj"]["kernel"].T)
    if cfg.pi05:
        dense = llm["layers"]["pre_ffw_norm_1"]["Dense_0"]
        np.testing.assert_array_equal(
            state[EXPERT + f"layers.{i}.post_attention_layernorm.dense.weight"], dense["kernel"][i].T
        )
        np.testing.assert_array_equal(
            state[EXPERT + "norm.dense.bias"], llm["final_norm_1"]["Dense_0"]["bias"]
        )
        assert "state_proj.weight" not in state and "time_mlp_in.weight" in state
    else:
        np.testing.assert_array_equal(state[EXPERT + "norm.weight"], llm["final_norm_1"]["scale"])
        assert "state_proj.weight" in state and "time_mlp_in.weight" not in state
    # The action expert's unused lm_head is written (openpi's strict loader wants it), as zeros.
    assert state[EXPERT_LM_HEAD_KEY].shape == (cfg.vocab_size, d_exp) and not state[EXPERT_LM_HEAD_KEY].any()
    assert (torch_file.parent / "config.json").exists()


def test_pytorch_round_trip_is_exact(tiny, torch_file, tmp_path):
    cfg, params = tiny
    _assert_trees_equal(load_pytorch_params(torch_file, cfg), params)
    _assert_trees_equal(load_pytorch_params(torch_file.parent, pi0.abstract_params(cfg)), params)

    # bfloat16 export (openpi's converter default), stored as BF16 and loaded back as bfloat16.
    bf16_file = export_pytorch_params(params, cfg, tmp_path / "bf16", dtype="bfloat16", expert_lm_head=False)
    with safe_open(bf16_file, framework="np") as f:
        assert f.get_slice("action_in_proj.weight").get_dtype() == "BF16"
        assert EXPERT_LM_HEAD_KEY not in f.keys()  # noqa: SIM118
    as_bf16 = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
    _assert_trees_equal(load_pytorch_params(bf16_file, cfg), as_bf16)
    _assert_trees_equal(
        load_pytorch_params(bf16_file, cfg, dtype=np.float32), jax.tree.map(np.float32, as_bf16)
    )

    # The tied embedding under its other name (or both names), and shards split over two files.
    state = load_pytorch_state_dict(torch_file)
    renamed = {(EMBED_TOKENS_KEY if k == LLM_LM_HEAD_KEY else k): v for k, v in state.items()}
    save_file(renamed, tmp_path / "renamed.safetensors")
    _assert_trees_equal(load_pytorch_params(tmp_path / "renamed.safetensors", cfg), params)
    keys = sorted(state)
    shards = tmp_path / "shards"
    shards.mkdir()
    save_file({k: state[k] for k in keys[::2]}, shards / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[1::2]}, shards / "model-00002-of-00002.safetensors")
    _assert_trees_equal(load_pytorch_params(shards, cfg), params)


def test_pytorch_errors_name_the_key(tiny, torch_file, tmp_path, caplog):
    cfg, params = tiny
    state = load_pytorch_state_dict(torch_file)

    missing = EXPERT + "layers.2.mlp.up_proj.weight"
    save_file({k: v for k, v in state.items() if k != missing}, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"missing key '{missing}'"):
        load_pytorch_params(tmp_path / "missing.safetensors", cfg)

    bad = dict(state)
    bad["action_in_proj.weight"] = np.zeros((3, 5), np.float32)
    expected_shape = state["action_in_proj.weight"].shape
    save_file(bad, tmp_path / "bad.safetensors")
    message = f"'action_in_proj.weight': expected shape {expected_shape}, found (3, 5)"
    with pytest.raises(CheckpointMismatchError, match=re.escape(message)):
        load_pytorch_params(tmp_path / "bad.safetensors", cfg)

    extra = {**state, "value_head.weight": np.ones((1, 4), np.float32)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"value_head\.weight"):
        load_pytorch_params(tmp_path / "extra.safetensors", cfg, strict=True)
    with caplog.at_level(logging.WARNING, logger="pirl.checkpoints.pytorch"):
        _assert_trees_equal(load_pytorch_params(tmp_path / "extra.safetensors", cfg), params)
    assert "value_head.weight" in caplog.text

    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_pytorch_params(tmp_path / "nothing_here", cfg)

    # The other model family's file: π0 and π0.5 differ in their top-level projections.
    other = Pi0Config.tiny(pi05=not cfg.pi05)
    with pytest.raises(CheckpointMismatchError, match="missing key"):
        load_pytorch_params(torch_file, other)

    # LoRA has no PyTorch counterpart: export refuses, loading can skip it.
    lora_key = "PaliGemma/llm/layers/attn/q_einsum_1/lora_a"
    lora_params = _with(params, lora_key, np.zeros((4, 8, 64, 2), np.float32))
    with pytest.raises(CheckpointMismatchError, match=r"lora_a.*merge_lora_params"):
        export_pytorch_params(lora_params, None, tmp_path / "lora")
    lora_abstract = _with(
        pi0.abstract_params(cfg), lora_key, jax.ShapeDtypeStruct((4, 8, 64, 2), jnp.float32)
    )
    _assert_trees_equal(load_pytorch_params(torch_file, lora_abstract, missing_regex=".*lora.*"), params)

    with pytest.raises(CheckpointMismatchError, match=r"params to export does not match.*missing key"):
        export_pytorch_params(params, other, tmp_path / "wrong_cfg")


# ------------------------------------------------------------------------------- full-size maps


def _openpi_torch_keys(pi05: bool) -> set[str]:
    """The state-dict keys of openpi's PI0Pytorch for full-size π0 / π0.5, enumerated independently."""
    keys = {VIT + f"embeddings.{n}" for n in ("patch_embedding.weight", "patch_embedding.bias")}
    keys |= {
        VIT + "embeddings.position_embedding.weight",
        VIT + "post_layernorm.weight",
        VIT + "post_layernorm.bias",
    }
    for i in range(27):
        for name in (
            "layer_norm1",
            "layer_norm2",
            "mlp.fc1",
            "mlp.fc2",
            *(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")),
        ):
            keys |= {VIT + f"encoder.layers.{i}.{name}.weight", VIT + f"encoder.layers.{i}.{name}.bias"}
    keys |= {
        f"paligemma_with_expert.paligemma.model.multi_modal_projector.linear.{p}" for p in ("weight", "bias")
    }
    keys |= {LLM + "embed_tokens.weight", LLM + "norm.weight", EXPERT_LM_HEAD_KEY}
    norms = (
        (
            "input_layernorm.dense.weight",
            "input_layernorm.dense.bias",
            "post_attention_layernorm.dense.weight",
            "post_attention_layernorm.dense.bias",
        )
        if pi05
        else ("input_layernorm.weight", "post_attention_layernorm.weight")
    )
    proj = [f"self_attn.{p}_proj.weight" for p in "qkvo"] + [
        f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")
    ]
    for i in range(18):
        keys |= {
            LLM + f"layers.{i}.{n}"
            for n in (*proj, "input_layernorm.weight", "post_attention_layernorm.weight")
        }
        keys |= {EXPERT + f"layers.{i}.{n}" for n in (*proj, *norms)}
    keys |= {EXPERT + n for n in (("norm.dense.weight", "norm.dense.bias") if pi05 else ("norm.weight",))}
    linears = (
        "action_in_proj",
        "action_out_proj",
        *(
            ("time_mlp_in", "time_mlp_out")
            if pi05
            else ("state_proj", "action_time_mlp_in", "action_time_mlp_out")
        ),
    )
    keys |= {f"{m}.{p}" for m in linears for p in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_full_size_key_map_covers_every_leaf(pi05):
    abstract = pi0.abstract_params(Pi0Config(pi05=pi05))  # eval_shape: nothing allocated
    flat = flatten_params(abstract)
    key_map = pytorch_key_map(abstract)
    assert set(key_map) == _openpi_torch_keys(pi05)
    assert {src for src, _ in key_map.values()} - {""} == set(flat)  # every JAX leaf has a torch home
    # Element counts agree leaf by leaf (plus the expert's extra lm_head): no duplicated or lost weights.
    jax_count = sum(int(np.prod(v.shape)) for v in flat.values())
    assert jax_count == (3_353_433_872 if pi05 else 3_238_048_528)  # openpi's published counts
    torch_count = sum(int(np.prod(s)) for _, s in key_map.values())
    assert torch_count == jax_count + 257_152 * 1024
    shapes = {k: s for k, (_, s) in key_map.items()}
    expected = {
        VIT + "embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        VIT + "embeddings.position_embedding.weight": (256, 1152),
        VIT + "encoder.layers.26.self_attn.q_proj.weight": (1152, 1152),
        VIT + "encoder.layers.26.self_attn.q_proj.bias": (1152,),
        VIT + "encoder.layers.0.mlp.fc1.weight": (4304, 1152),
        "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight": (2048, 1152),
        LLM + "embed_tokens.weight": (257_152, 2048),
        LLM + "layers.17.self_attn.q_proj.weight": (2048, 2048),
        LLM + "layers.17.self_attn.k_proj.weight": (256, 2048),
        LLM + "layers.17.self_attn.o_proj.weight": (2048, 2048),
        LLM + "layers.0.mlp.gate_proj.weight": (16_384, 2048),
        LLM + "layers.0.mlp.down_proj.weight": (2048, 16_384),
        EXPERT + "layers.3.self_attn.q_proj.weight": (2048, 1024),
        EXPERT + "layers.3.self_attn.v_proj.weight": (256, 1024),
        EXPERT + "layers.3.self_attn.o_proj.weight": (1024, 2048),
        EXPERT + "layers.3.mlp.up_proj.weight": (4096, 1024),
        "action_in_proj.weight": (1024, 32),
        "action_out_proj.weight": (32, 1024),
        EXPERT_LM_HEAD_KEY: (257_152, 1024),
    }
    if pi05:
        expected |= {
            EXPERT + "layers.5.input_layernorm.dense.weight": (3072, 1024),
            EXPERT + "norm.dense.bias": (3072,),
            "time_mlp_in.weight": (1024, 1024),
        }
    else:
        expected |= {"state_proj.weight": (1024, 32), "action_time_mlp_in.weight": (1024, 2048)}
    assert {k: shapes[k] for k in expected} == expected


# ---------------------------------------------------------------------------------- LoRA merging


def test_merge_lora_matches_lora_modules(tmp_path):
    """Merged weights reproduce pirl.models.lora's Einsum / FeedForward outputs with LoRA, per layer."""
    from pirl.models import lora

    depth, n, d, h, f, rank = 2, 4, 8, 4, 16, 2
    attn = (
        ("q_einsum", "BTD,NDH->BTNH", (n, d, h), 0),
        ("kv_einsum_1", "BSD,2KDH->2BSKH", (2, 1, d, h), 1),
        ("attn_vec_einsum", "BTNH,NHD->BTD", (n, h, d), 0),
    )
    configs = (lora.LoRAConfig(rank=rank, alpha=3.0), lora.LoRAConfig(rank=rank, alpha=1.0))  # 1.5, 0.5
    rng = np.random.default_rng(0)
    normal = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    layers, modules, inputs = {"attn": {}}, {}, {}
    for name, eqn, shape, expert in attn:
        module = lora.Einsum(shape=shape, lora=configs[expert])
        x = normal((1, 3, n, h) if name == "attn_vec_einsum" else (1, 3, d))
        init = lambda key, x, module=module, eqn=eqn: module.init(key, eqn, x)  # noqa: E731
        abstract = jax.eval_shape(init, jax.random.key(0), x)["params"]
        layers["attn"][name] = jax.tree.map(lambda s: normal((depth, *s.shape)), abstract)
        modules[name], inputs[name] = (module, eqn), x
    ffn = lora.FeedForward(features=d, hidden_dim=f, lora=configs[0])
    x_ffn = normal((1, 3, d))
    layers["mlp"] = jax.tree.map(
        lambda s: normal((depth, *s.shape)), jax.eval_shape(ffn.init, jax.random.key(0), x_ffn)["params"]
    )
    params = {"PaliGemma": {"llm": {"layers": layers}}, "action_in_proj": {"bias": normal((d,))}}

    merged = merge_lora_params(params, (1.5, 0.5))
    flat = flatten_params(merged)
    assert not any("lora" in k for k in flat)
    np.testing.assert_array_equal(flat["action_in_proj/bias"], params["action_in_proj"]["bias"])
    for i in range(depth):
        for name, (module, eqn) in modules.items():
            layer = jax.tree.map(lambda a, i=i: a[i], layers["attn"][name])
            want = module.apply({"params": layer}, eqn, inputs[name])
            got = jnp.einsum(eqn, inputs[name], merged["PaliGemma"]["llm"]["layers"]["attn"][name]["w"][i])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
        plain = lora.FeedForward(features=d, hidden_dim=f)
        want = ffn.apply({"params": jax.tree.map(lambda a, i=i: a[i], layers["mlp"])}, x_ffn)
        got = plain.apply(
            {"params": jax.tree.map(lambda a, i=i: a[i], merged["PaliGemma"]["llm"]["layers"]["mlp"])}, x_ffn
        )
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_merged_lora_params_export(tiny, tmp_path):
    cfg, params = tiny
    rng = np.random.default_rng(1)
    flat = flatten_params(params)
    q = flat["PaliGemma/llm/layers/attn/q_einsum_1/w"]  # (depth, N, D, H)
    flat["PaliGemma/llm/layers/attn/q_einsum_1/lora_a"] = rng.standard_normal((*q.shape[:-1], 2)).astype(
        np.float32
    )
    flat["PaliGemma/llm/layers/attn/q_einsum_1/lora_b"] = rng.standard_normal(
        (*q.shape[:-2], 2, q.shape[-1])
    ).astype(np.float32)
    merged = merge_lora_params(unflatten_params(flat), (1.0, 2.0))
    delta = np.einsum(
        "lndr,lnrh->lndh",
        flat["PaliGemma/llm/layers/attn/q_einsum_1/lora_a"],
        flat["PaliGemma/llm/layers/attn/q_einsum_1/lora_b"],
    )
    np.testing.assert_allclose(
        flatten_params(merged)["PaliGemma/llm/layers/attn/q_einsum_1/w"], q + 2.0 * delta, rtol=1e-6
    )
    file = export_pytorch_params(merged, cfg, tmp_path)
    _assert_trees_equal(load_pytorch_params(file, cfg), merged)

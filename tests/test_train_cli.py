"""The training entry point: preset registry, overrides, mesh presets, early errors."""

import subprocess
import sys

import pytest

import configs
from configs import meshes
from pirl import train
from pirl.rl.config import RLConfig

RL_PRESETS = [
    "pi0_libero_ppo",
    "pi0_libero_grpo",
    "pi05_libero_ppo",
    "pi05_libero_grpo",
    "pi0_maniskill_ppo",
    "pi0_demo_cpu",
]


def test_registry_has_every_rl_preset():
    presets = configs.all_presets()
    for name in RL_PRESETS:
        assert name in presets
        desc, cfg = presets[name]
        assert isinstance(cfg, RLConfig) and cfg.name == name and desc


def test_unknown_name_lists_valid_names():
    with pytest.raises(SystemExit) as e:
        train.parse_config(["pi0_libero_pp"])
    message = str(e.value)
    assert "pi0_libero_ppo" in message and "Did you mean" in message
    with pytest.raises(KeyError, match="Valid names"):
        configs.get_preset("nope")


def test_overrides_apply_to_the_chosen_preset():
    cfg = train.parse_config(
        ["pi0_libero_ppo", "--update-epochs", "2", "--env.num-envs", "32", "--optim.lr", "1e-5"]
    )
    assert cfg.update_epochs == 2 and cfg.env.num_envs == 32 and cfg.optim.lr == 1e-5
    assert cfg.model.paligemma_variant == "gemma_2b"  # untouched fields keep the preset's values


def test_mesh_flag_selects_a_named_mesh():
    cfg = train.parse_config(["pi0_libero_ppo", "--mesh", "tpu-v5p-64"])
    assert cfg.mesh == meshes.get_mesh("tpu-v5p-64")
    with pytest.raises(SystemExit, match="tpu-v5p-64"):
        train.parse_config(["pi0_libero_ppo", "--mesh", "tpu-v9"])


def test_bad_batch_arithmetic_fails_early(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["pi0_libero_ppo", "--global-batch-size", "1000"])
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # undo tyro's boxed line wrapping
    assert "global_batch_size=1000 must be a multiple of micro_batch_size=32" in err


def test_real_preset_without_checkpoint_says_what_to_pass():
    from pirl.rl.trainer import load_model_params

    with pytest.raises(ValueError, match="--init-checkpoint"):
        load_model_params(configs.get_preset("pi0_libero_ppo"))


def test_help_lists_presets():
    out = subprocess.run(
        [sys.executable, "-m", "pirl.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for name in RL_PRESETS:
        assert name in out.stdout

"""`--rlinf-config`: RLinf YAMLs (written here with the structure of RLinf's examples/embodiment/config)
composed and mapped into RLConfigs; the RLinf-named presets equal what their recipes say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import configs.rl as rl_presets
from pirl.errors import UserError
from pirl.rl import rlinf_config
from pirl.train import parse_config

# ----------------------------------------------------------------------------- the test's RLinf tree
# Group files hold the defaults RLinf's recipes compose; the recipes below override a few of them.

ENV_GROUPS = {
    "libero_spatial": dict(
        env_type="libero",
        task_suite_name="libero_spatial",
        auto_reset=False,
        ignore_terminations=False,
        max_steps_per_rollout_epoch=240,
        max_episode_steps=240,
        use_rel_reward=True,
        use_step_penalty=False,
        reward_coef=1.0,
        reset_gripper_open=True,
        is_eval=False,
        seed=0,
        group_size=1,
        use_fixed_reset_state_ids=True,
        specific_reset_id=None,
        video_cfg=dict(save_video=True, video_base_dir="${runner.logger.log_path}/video/train"),
        init_params=dict(camera_heights=256, camera_widths=256),
    ),
    "libero_10": dict(
        env_type="libero",
        task_suite_name="libero_10",
        auto_reset=False,
        ignore_terminations=False,
        max_steps_per_rollout_epoch=512,
        max_episode_steps=512,
        use_rel_reward=True,
        reward_coef=5.0,
        seed=0,
        group_size=1,
        video_cfg=dict(save_video=True, video_base_dir="${runner.logger.log_path}/video/train"),
        init_params=dict(camera_heights=256, camera_widths=256),
    ),
    "maniskill_put_on_plate_in_scene_25_main": dict(
        env_type="maniskill",
        auto_reset=False,
        ignore_terminations=False,
        use_rel_reward=True,
        seed=0,
        group_size=1,
        use_fixed_reset_state_ids=True,
        max_steps_per_rollout_epoch=80,
        max_episode_steps=80,
        init_params=dict(
            id="PutOnPlateInScene25Main-v3", sim_backend="gpu", max_episode_steps="${..max_episode_steps}"
        ),
    ),
}


def _model_group(config_name: str, num_steps: int, pi05: bool) -> dict:
    openpi = dict(
        config_name=config_name,
        num_images_in_input=2,
        noise_level=0.5,
        action_chunk="${..num_action_chunks}",
        num_steps="${..num_steps}",
        train_expert_only=True,
        action_env_dim="${..action_dim}",
        noise_method="flow_sde",
        add_value_head="${..add_value_head}",
        detach_critic_input=None if pi05 else False,
        use_dsrl=False,
        dsrl_hidden_dims=[128, 128, 128],
    )
    if pi05:
        openpi |= dict(value_after_vlm=False, value_vlm_mode="mean_token")
    return dict(
        model_type="openpi",
        model_path="/path/to/model/openpi",
        precision=None,
        num_action_chunks=10,
        action_dim=7,
        is_lora=False,
        lora_rank=32,
        use_proprio=True,
        num_steps=num_steps,
        add_value_head=False,
        openpi=openpi,
    )


def _recipe(
    env_group: str,
    model_group: str,
    *,
    algorithm: dict,
    train_env: dict,
    actor_model: dict,
    optim: dict,
    **top,
) -> dict:
    base_algorithm = dict(
        normalize_advantages=True,
        kl_penalty="kl",
        group_size=1,
        reward_coef=1.0,
        reward_type="chunk_level",
        logprob_type="chunk_level",
        entropy_type="token_level",
        update_epoch=4,
        adv_type="gae",
        loss_type="actor_critic",
        loss_agg_func="token-mean",
        kl_beta=0.0,
        entropy_bonus=0,
        clip_ratio_high=0.2,
        clip_ratio_low=0.2,
        clip_ratio_c=3.0,
        value_clip=0.2,
        huber_delta=10.0,
        gamma=0.99,
        gae_lambda=0.95,
        filter_rewards=False,
        rewards_lower_bound=0.1,
        rewards_upper_bound=0.9,
    )
    recipe = dict(
        defaults=[
            f"env/{env_group}@env.train",
            f"env/{env_group}@env.eval",
            f"model/{model_group}@actor.model",
            "hybrid_engines/fsdp@actor.fsdp_config",
            {"override hydra/job_logging": "stdout"},
        ],
        hydra=dict(run=dict(dir="."), searchpath=["file://${oc.env:EMBODIED_PATH}/config/"]),
        cluster=dict(num_nodes=1),
        runner=dict(
            task_type="embodied",
            logger=dict(log_path="../results", experiment_name="x"),
            max_epochs=1000,
            max_steps=-1,
            only_eval=False,
            val_check_interval=-1,
            save_interval=40,
            resume_dir=None,
        ),
        algorithm=base_algorithm | algorithm,
        env=dict(
            group_name="EnvGroup",
            train=train_env,
            eval=dict(rollout_epoch=1, total_num_envs=500, auto_reset=True, ignore_terminations=True),
        ),
        rollout=dict(
            group_name="RolloutGroup",
            recompute_logprobs=False,
            pipeline_stage_num=1,
            model=dict(precision="${actor.model.precision}"),
        ),
        actor=dict(
            group_name="ActorGroup",
            training_backend="fsdp",
            micro_batch_size=128,
            global_batch_size=2048,
            seed=42,
            model=actor_model,
            optim=dict(
                lr=5.0e-6,
                value_lr=1.0e-4,
                adam_beta1=0.9,
                adam_beta2=0.95,
                adam_eps=1.0e-08,
                weight_decay=0.01,
                critic_warmup_steps=0,
            )
            | optim,
            fsdp_config=dict(
                sharding_strategy="no_shard", mixed_precision=dict(param_dtype="${actor.model.precision}")
            ),
        ),
        reward=dict(use_reward_model=False),
        critic=dict(use_critic_model=False),
    )
    for key, value in top.items():
        recipe[key] = recipe[key] | value
    return recipe


LIBERO_TRAIN = dict(rollout_epoch=8, total_num_envs=64)
GRPO = dict(group_size=8, adv_type="grpo", loss_type="actor", filter_rewards=True)
GRPO_ENV = dict(reward_coef="${algorithm.reward_coef}", group_size="${algorithm.group_size}")

RECIPES = {
    "libero_spatial_ppo_openpi": (
        rl_presets.pi0_libero_ppo,
        _recipe(
            "libero_spatial",
            "pi0",
            algorithm={},
            train_env=LIBERO_TRAIN | dict(max_episode_steps=240, max_steps_per_rollout_epoch=240),
            actor_model=dict(num_action_chunks=5, add_value_head=True, openpi=dict(detach_critic_input=True)),
            optim=dict(clip_grad=1.0),
        ),
    ),
    "libero_10_grpo_openpi": (
        rl_presets.pi0_libero_grpo,
        _recipe(
            "libero_10",
            "pi0",
            algorithm=GRPO | dict(update_epoch=2),
            train_env=LIBERO_TRAIN | GRPO_ENV | dict(max_episode_steps=480, max_steps_per_rollout_epoch=480),
            actor_model=dict(model_path="/path/to/model/RLinf-Pi0-LIBERO-Long-SFT"),
            optim=dict(clip_grad=2.0),
        ),
    ),
    "libero_spatial_ppo_openpi_pi05": (
        rl_presets.pi05_libero_ppo,
        _recipe(
            "libero_spatial",
            "pi0_5",
            algorithm=dict(update_epoch=1),
            train_env=LIBERO_TRAIN | dict(max_episode_steps=240, max_steps_per_rollout_epoch=240),
            actor_model=dict(
                num_action_chunks=5, num_steps=3, add_value_head=True, openpi=dict(value_after_vlm=True)
            ),
            optim=dict(clip_grad=1.0),
        ),
    ),
    "libero_10_grpo_openpi_pi05": (
        rl_presets.pi05_libero_grpo,
        _recipe(
            "libero_10",
            "pi0_5",
            algorithm=GRPO | dict(update_epoch=4),
            train_env=LIBERO_TRAIN | GRPO_ENV | dict(max_episode_steps=480, max_steps_per_rollout_epoch=480),
            actor_model=dict(num_steps=4),
            optim=dict(clip_grad=1.0),
        ),
    ),
    "maniskill_ppo_openpi": (
        rl_presets.pi0_maniskill_ppo,
        _recipe(
            "maniskill_put_on_plate_in_scene_25_main",
            "pi0",
            algorithm=dict(
                logprob_type="token_level",
                entropy_type="chunk_level",
                bootstrap_type="always",
                entropy_bonus=0.005,
                rewards_lower_bound=0.0,
                rewards_upper_bound=1.0,
            ),
            train_env=dict(
                rollout_epoch=1, total_num_envs=320, auto_reset=True, use_fixed_reset_state_ids=False
            ),
            actor_model=dict(
                num_action_chunks=5,
                action_dim=7,
                add_value_head=True,
                openpi=dict(
                    config_name="pi0_maniskill",
                    noise_method="flow_noise",
                    action_horizon=8,
                    noise_params=[0.16, 0.12, 200],
                    detach_critic_input=True,
                    joint_logprob=True,
                    value_after_vlm=False,
                ),
            ),
            optim=dict(lr=7.91e-6, value_lr=1.55e-4, clip_grad=1.0),
            runner=dict(val_check_interval=10, save_interval=50),
            env=dict(eval=dict(rollout_epoch=1, total_num_envs=320)),
        ),
    ),
}
RECIPES["maniskill_ppo_openpi"][1]["actor"] |= dict(micro_batch_size=32, global_batch_size=5120, seed=0)


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlinf") / "config"
    for name, group in ENV_GROUPS.items():
        _write(root / "env" / f"{name}.yaml", group)
    _write(root / "model" / "pi0.yaml", _model_group("pi0_libero", 4, pi05=False))
    _write(root / "model" / "pi0_5.yaml", _model_group("pi05_libero", 5, pi05=True))
    _write(root / "hybrid_engines" / "fsdp.yaml", dict(strategy="fsdp", sharding_strategy="full_shard"))
    for name, (_, recipe) in RECIPES.items():
        _write(root / f"{name}.yaml", recipe)
    return root


def _diff(a, b, prefix: str = "") -> list[str]:
    out = []
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            out += _diff(x, y, f"{prefix}{field.name}.")
        elif x != y:
            out.append(f"{prefix}{field.name}: RLinf {x!r} vs preset {y!r}")
    return out


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_preset_equals_its_rlinf_recipe(config_dir, recipe):
    preset = RECIPES[recipe][0]()
    allow = recipe == "maniskill_ppo_openpi"  # auto-reset and bootstrap 'always': MJX cannot
    imported = rlinf_config.read_rlinf_config(config_dir / f"{recipe}.yaml", allow_unsupported=allow)
    # name: the file's; micro_batch_size: RLinf's is per device, pirl's global (memory only).
    read = dataclasses.replace(imported.config, name=preset.name, micro_batch_size=preset.micro_batch_size)
    assert _diff(read, preset) == []
    assert imported.config.micro_batch_size == RECIPES[recipe][1]["actor"]["micro_batch_size"]


def test_maniskill_recipe_names_what_mjx_cannot_do(config_dir):
    with pytest.raises(UserError) as err:
        rlinf_config.read_rlinf_config(config_dir / "maniskill_ppo_openpi.yaml")
    assert "env.train.auto_reset" in str(err.value) and "algorithm.bootstrap_type" in str(err.value)
    imported = rlinf_config.read_rlinf_config(
        config_dir / "maniskill_ppo_openpi.yaml", allow_unsupported=True
    )
    assert set(imported.blocking) == {"env.train.auto_reset", "algorithm.bootstrap_type"}
    assert "noise_anneal" in imported.unsupported["actor.model.openpi.noise_params"]
    assert imported.config.env.auto_reset is False and not imported.config.episode_weights_active


def test_defaults_list_interpolations_and_order(config_dir):
    merged = rlinf_config.compose(config_dir / "libero_10_grpo_openpi.yaml")
    train = merged["env"]["train"]
    assert train["task_suite_name"] == "libero_10"  # composed from env/libero_10.yaml
    assert train["max_episode_steps"] == 480  # the recipe's own value wins over the group's 512
    assert train["reward_coef"] == 1.0  # ${algorithm.reward_coef} over the group's 5.0, typed
    assert train["group_size"] == 8
    assert train["video_cfg"]["video_base_dir"] == "../results/video/train"  # embedded interpolation
    assert merged["actor"]["model"]["openpi"]["action_chunk"] == 10  # ${..num_action_chunks}
    assert merged["actor"]["fsdp_config"]["sharding_strategy"] == "no_shard"
    assert merged["actor"]["fsdp_config"]["strategy"] == "fsdp"
    assert merged["env"]["eval"]["task_suite_name"] == "libero_10"  # the same group at another package
    assert "defaults" not in merged


def test_self_in_defaults_puts_the_file_first(tmp_path):
    _write(tmp_path / "grp" / "a.yaml", dict(x=1, y=2))
    path = _write(tmp_path / "r.yaml", dict(defaults=["_self_", "grp/a@sub"], sub=dict(x=5, z="${.x}")))
    assert rlinf_config.compose(path)["sub"] == dict(x=1, z=1, y=2)


def test_unknown_and_unsupported_keys_are_named(config_dir, tmp_path):
    recipe = yaml.safe_load((config_dir / "libero_spatial_ppo_openpi.yaml").read_text())
    recipe["algorithm"]["my_new_knob"] = 3
    recipe["actor"]["model"]["openpi"] = dict(recipe["actor"]["model"]["openpi"], noise_anneal=True)
    path = config_dir / "custom.yaml"
    _write(path, recipe)
    with pytest.raises(UserError) as err:
        rlinf_config.read_rlinf_config(path)
    message = str(err.value)
    assert "algorithm.my_new_knob: 3: unknown RLinf key" in message
    assert "actor.model.openpi.noise_anneal" in message
    imported = rlinf_config.read_rlinf_config(path, allow_unsupported=True)
    assert "algorithm.my_new_knob" in imported.report()
    # Keys without a meaning in pirl are reported with the reason, not silently dropped.
    assert "FSDP" in imported.unsupported["actor.fsdp_config.sharding_strategy"]
    assert "does not add a KL term" in imported.unsupported["algorithm.kl_beta"]
    assert "no effect for openpi" in imported.unsupported["algorithm.entropy_type"]
    every_key = rlinf_config.flatten(rlinf_config.compose(path))
    assert set(every_key) == set(imported.mapped) | set(imported.unsupported)


def test_missing_group_file_and_bad_interpolation(tmp_path):
    path = _write(tmp_path / "r.yaml", dict(defaults=["env/nowhere@env.train"]))
    with pytest.raises(UserError, match=r"env/nowhere\.yaml"):
        rlinf_config.compose(path)
    path = _write(tmp_path / "s.yaml", dict(a="${b.c}"))
    with pytest.raises(UserError, match=r"b\.c does not exist"):
        rlinf_config.compose(path)


def test_cli_reads_the_rlinf_yaml_and_applies_overrides(config_dir):
    path = str(config_dir / "libero_spatial_ppo_openpi.yaml")
    cfg = parse_config(["--rlinf-config", path, "--total-steps", "7"])
    assert cfg.total_steps == 7
    assert cfg.update_epochs == 4 and cfg.env.backend == "libero" and cfg.env.name == "libero_spatial"
    cfg = parse_config([f"--rlinf-config={path}", "--rlinf-allow-unsupported"])
    assert cfg.total_steps == 1000

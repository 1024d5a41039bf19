"""Read an RLinf embodied-training YAML (its `examples/embodiment/config/*.yaml`) into an `RLConfig`.

`read_rlinf_config(path)` composes the file as RLinf's Hydra does, then maps every key:

* Composition. The `defaults` list is resolved from the config's own directory, laid out like
  RLinf's `examples/embodiment/config` (`env/libero_spatial@env.train` loads `env/libero_spatial.yaml`
  into `env.train`; without `@` the group path is the package); `hydra/...` entries are Hydra's own
  and skipped; `_self_` orders the file's own content (last when absent, Hydra's default for a
  primary config). The defaults are merged in order, dictionaries key by key. Then `${a.b}` (from
  the root) and `${..x}` (relative: one dot = the node holding the key, each further dot one level
  up) interpolations are resolved, and `${oc.env:NAME,default}`; a value that is one whole
  interpolation keeps its type.
* Mapping. Every leaf key either sets a pirl field (`RLinfImport.mapped`: key -> "field = value"),
  or is listed in `RLinfImport.unsupported` with the reason pirl does not use it. Keys pirl cannot
  honour with the given value (a KL penalty, noise annealing, DSRL, auto-reset on the MJX backend,
  ...) are `RLinfImport.blocking`; `read_rlinf_config` refuses them (`UserError` naming each key and
  why) unless `allow_unsupported=True`, which keeps pirl's nearest behaviour and still reports them.
  Keys not in the table are reported too ("unknown RLinf key"), never silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pirl.errors import UserError
from pirl.models.config import Pi0Config
from pirl.policies.config import FlowPolicyConfig
from pirl.rl.config import AdvantageConfig, EnvSpec, RLConfig
from pirl.rl.losses import PPOLossConfig
from pirl.rl.optim import OptimizerConfig

OPENPI_MODELS: dict[str, Pi0Config] = {
    "pi0_libero": Pi0Config(),
    "pi05_libero": Pi0Config(pi05=True, action_horizon=10, discrete_state_input=False),
    "pi0_maniskill": Pi0Config(),
}
"""openpi model configs by RLinf's `actor.model.openpi.config_name` (openpi's train-config names)."""

RLINF_POLICY_DEFAULTS = dict(chunk_critic_input=False, detach_critic_input=False, train_expert_only=False)
"""RLinf's OpenPi0Config defaults where they differ from pirl's FlowPolicyConfig (a recipe that does not
set these gets RLinf's value)."""

PI05_VALUE_HEAD = (1024, 512, 256)
"""RLinf's value head widths for π0.5 configs ((512, 256, 128) for π0)."""

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MANISKILL_STAND_INS = {"PutOnPlateInScene25Main-v3": "maniskill_put_on_plate"}
"""ManiSkill env ids -> the MJX scene pirl trains on instead."""


# ----------------------------------------------------------------------------- composition


def _merge(base: Any, top: Any) -> Any:
    """Hydra/OmegaConf merge: dictionaries key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for key, value in top.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(top)


def _place(package: str, node: Any) -> dict:
    """`node` nested under the dotted `package` path (empty = the root)."""
    for part in reversed([p for p in package.split(".") if p]):
        node = {part: node}
    return node


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"RLinf config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"RLinf config {path} must hold a mapping at the top level")
    return data


def compose(path: str | Path) -> dict:
    """The config at `path` composed with its defaults list and with interpolations resolved."""
    path = Path(path).expanduser()
    own = _load_yaml(path)
    root_dir = path.parent
    defaults = own.pop("defaults", []) or []
    merged: dict = {}
    self_merged = False
    for entry in defaults:
        if isinstance(entry, dict):  # e.g. {"override hydra/job_logging": "stdout"}
            ((key, option),) = entry.items()
            group = key.split()[-1]
        else:
            group, option = str(entry), None
        if group == "_self_":
            merged = _merge(merged, own)
            self_merged = True
            continue
        if group.startswith("hydra/"):
            continue  # Hydra's own settings (logging, launcher): nothing to compose
        group, _, package = group.partition("@")
        if option is None:
            group, _, option = group.rpartition("/")
        if not group:
            raise UserError(f"{path}: defaults entry {entry!r} names no config group (expected group/option)")
        file = root_dir / group / f"{option}.yaml"
        if not file.is_file():
            raise UserError(
                f"{path}: defaults entry {entry!r} needs {file}; lay the configs out like RLinf's "
                "examples/embodiment/config (env/, model/, hybrid_engines/, ... next to the recipe)"
            )
        node = _load_yaml(file)
        node.pop("defaults", None)
        merged = _merge(merged, _place(package or group.replace("/", "."), node))
    if not self_merged:
        merged = _merge(merged, own)
    return resolve_interpolations(merged)


_INTERP = re.compile(r"\$\{([^${}]+)\}")


def resolve_interpolations(cfg: dict) -> dict:
    """Resolve `${abs.path}`, `${..relative}` and `${oc.env:NAME[,default]}` throughout `cfg`."""

    def lookup(expr: str, where: tuple[str, ...], seen: tuple[str, ...]) -> Any:
        expr = expr.strip()
        if expr.startswith("oc.env:"):
            name, _, default = expr[len("oc.env:") :].partition(",")
            return os.environ.get(name.strip(), default.strip() or None)
        if ":" in expr:
            raise UserError(
                f"interpolation ${{{expr}}} at {'.'.join(where)} uses a resolver pirl does not know"
            )
        if expr.startswith("."):
            dots = len(expr) - len(expr.lstrip("."))
            base = where[:-1]  # the node holding the key
            if dots > 1:
                base = base[: len(base) - (dots - 1)]
            target = (*base, *expr[dots:].split("."))
        else:
            target = tuple(expr.split("."))
        node: Any = cfg
        for part in target:
            if not isinstance(node, dict) or part not in node:
                raise UserError(
                    f"interpolation ${{{expr}}} at {'.'.join(where)}: {'.'.join(target)} does not exist"
                )
            node = node[part]
        key = ".".join(target)
        if key in seen:
            raise UserError(f"interpolation cycle through {key}")
        return resolve(node, target, (*seen, key))

    def resolve(value: Any, where: tuple[str, ...], seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, (*where, k), seen) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, where, seen) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _INTERP.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1), where, seen)
        return _INTERP.sub(lambda m: str(lookup(m.group(1), where, seen)), value)

    return resolve(cfg, ())


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys -> values (lists are leaves; an empty dict is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


# ----------------------------------------------------------------------------- mapping


@dataclasses.dataclass
class RLinfImport:
    """An RLinf YAML read into pirl: the config and what became of every key."""

    config: RLConfig
    mapped: dict[str, str]
    """RLinf key -> the pirl field it set ("field = value")."""
    unsupported: dict[str, str]
    """RLinf key -> why pirl does not use it (keys with no meaning in pirl, or pirl's fixed behaviour)."""
    blocking: dict[str, str]
    """The subset of `unsupported` whose value pirl cannot honour (refused unless allow_unsupported)."""

    def report(self) -> str:
        """Human-readable list of the unmapped keys and the reasons."""
        lines = [f"RLinf keys mapped: {len(self.mapped)}; not used by pirl: {len(self.unsupported)}"]
        for key, reason in sorted(self.unsupported.items()):
            mark = "!" if key in self.blocking else "-"
            lines.append(f"  {mark} {key}: {reason}")
        return "\n".join(lines)


# Keys with no meaning in pirl, by glob pattern, with the reason (first match wins).
NOT_APPLICABLE: list[tuple[str, str]] = [
    ("hydra.*", "Hydra's run settings; pirl composes the YAML itself"),
    ("cluster.*", "Ray placement of RLinf's workers; pirl runs one JAX program over its devices (--mesh)"),
    ("*.group_name", "Ray worker group name; pirl has no worker groups"),
    ("runner.logger.*", "pirl logs TensorBoard and metrics.jsonl under run_root/name"),
    ("runner.max_steps", "pirl stops after total_steps (runner.max_epochs)"),
    ("runner.ckpt_path", "evaluation-only checkpoint; use python -m pirl.eval"),
    ("actor.training_backend", "PyTorch FSDP; pirl shards parameters with its JAX mesh (--mesh)"),
    ("actor.fsdp_config.*", "PyTorch FSDP settings; pirl shards parameters with its JAX mesh (--mesh)"),
    ("actor.enable_offload", "CPU offload of RLinf's actor between phases; pirl keeps one program"),
    ("rollout.enable_offload", "CPU offload of RLinf's rollout worker; pirl's rollout shares the params"),
    ("rollout.generation_backend", "RLinf's rollout engine; pirl samples with the training params"),
    ("rollout.model.*", "RLinf's separate rollout copy of the model; pirl's rollout shares the params"),
    (
        "rollout.unnorm_key",
        "OpenVLA's un-normalisation key; openpi reads norm stats from the checkpoint assets",
    ),
    ("weight_syncer.*", "weight sync from actor to rollout; pirl's rollout shares the params"),
    ("env.*.video_cfg.*", "pirl writes evaluation videos every video_interval steps"),
    ("env.*.enable_offload", "CPU offload of RLinf's env worker"),
    ("env.*.is_eval", "RLinf's flag for its eval env copy"),
    ("env.*.seed", "pirl seeds environments from the run seed (actor.seed)"),
    ("env.train.init_params.*", "simulator settings of RLinf's env; pirl's environment has its own"),
    ("env.eval.*", "pirl evaluates fixed (task, initial state) pairs with the ODE sampler (eval_episodes)"),
    ("actor.model.precision", "pirl keeps float32 params and computes in model.dtype (bfloat16)"),
    ("actor.model.model_name", "RLinf's model registry name; pirl has one flow-policy implementation"),
    ("actor.model.policy_setup", "SimplerEnv robot setup; pirl's environments define their own action space"),
    ("actor.model.openpi.dsrl_*", "DSRL only (actor.model.openpi.use_dsrl is off)"),
    ("algorithm.kl_penalty", "KL estimator of the KL penalty, which RLinf's embodied actor does not apply"),
    ("algorithm.kl_beta", "RLinf's embodied actor (embodied_fsdp_actor_worker) does not add a KL term"),
    ("algorithm.clip_ratio_c", "dual-clip bound; RLinf applies it to GR00T N1.6/N1.7 only, never to openpi"),
    ("algorithm.reward_coef", "read by RLinf's env through env.train.reward_coef (mapped there)"),
    ("critic.use_critic_model", "a separate critic model; pirl's critic is the policy's value head"),
    ("reward.use_reward_model", "a learned reward model; pirl's rewards come from the environment"),
]


class _Mapper:
    """Walks the flat RLinf keys and builds the pirl config fields."""

    def __init__(self, flat: dict[str, Any], allow_unsupported: bool):
        self.flat = flat
        self.allow = allow_unsupported
        self.used: set[str] = set()
        self.mapped: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}
        self.blocking: dict[str, str] = {}
        self.fields: dict[str, dict[str, Any]] = {
            k: {} for k in ("top", "model", "policy", "env", "adv", "loss", "optim")
        }
        self.fields["policy"].update(RLINF_POLICY_DEFAULTS)

    def get(self, key: str, default: Any = None) -> Any:
        return self.flat.get(key, default)

    def set(self, key: str, section: str, field: str, value: Any) -> None:
        """RLinf `key` sets pirl `section.field` (if the key is present)."""
        if key not in self.flat:
            return
        self.fields[section][field] = value
        self.used.add(key)
        self.mapped[key] = f"{field if section == 'top' else section + '.' + field} = {value!r}"

    def take(self, key: str, section: str, field: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        if key in self.flat:
            self.set(key, section, field, convert(self.flat[key]))

    def agree(self, key: str, other: str) -> None:
        """`key` duplicates `other` (e.g. an interpolated copy); mapped with it, and must agree."""
        if key not in self.flat:
            return
        self.used.add(key)
        if other in self.flat and self.flat[other] != self.flat[key]:
            self.refuse(
                key, f"is {self.flat[key]!r} but {other} is {self.flat[other]!r}; pirl has one value for both"
            )
        else:
            self.mapped[key] = f"(same value as {other})"

    def expect(self, key: str, ok: Callable[[Any], bool], reason: str, *, meaning: str) -> None:
        """A key whose only value pirl supports satisfies `ok`; `meaning` says what it is in pirl."""
        if key not in self.flat:
            return
        self.used.add(key)
        if ok(self.flat[key]):
            self.mapped[key] = meaning
        else:
            self.refuse(key, reason)

    def refuse(self, key: str, reason: str) -> None:
        self.used.add(key)
        self.unsupported[key] = f"{self.flat.get(key)!r}: {reason}"
        self.blocking[key] = self.unsupported[key]

    def finish(self) -> None:
        for key in self.flat:
            if key in self.used:
                continue
            for pattern, reason in NOT_APPLICABLE:
                if fnmatch.fnmatchcase(key, pattern):
                    self.unsupported[key] = reason
                    break
            else:
                self.unsupported[key] = f"{self.flat[key]!r}: unknown RLinf key: pirl has no equivalent"
                self.blocking[key] = self.unsupported[key]


def _map(m: _Mapper, name: str) -> None:
    g = m.get
    # --- runner
    m.expect(
        "runner.task_type",
        lambda v: v == "embodied",
        "pirl trains embodied policies only",
        meaning="embodied",
    )
    m.fields["top"]["name"] = name
    m.take("runner.logger.experiment_name", "top", "name", str)
    m.take("runner.max_epochs", "top", "total_steps", int)
    m.take("runner.val_check_interval", "top", "eval_interval", lambda v: max(int(v), 0))
    m.take("runner.save_interval", "top", "save_interval", lambda v: max(int(v), 0))
    m.expect("runner.only_eval", lambda v: not v, "evaluate with python -m pirl.eval", meaning="train")
    m.expect("runner.resume_dir", lambda v: v is None, "resume a pirl run with --resume", meaning="fresh run")

    # --- model
    m.expect(
        "actor.model.model_type",
        lambda v: v == "openpi",
        "pirl implements openpi's π0 / π0.5 only",
        meaning="openpi",
    )
    config_name = g("actor.model.openpi.config_name", "pi0_libero")
    if config_name in OPENPI_MODELS:
        model = OPENPI_MODELS[config_name]
        m.used.add("actor.model.openpi.config_name")
        m.mapped["actor.model.openpi.config_name"] = f"model = openpi's {config_name}"
    else:
        model = OPENPI_MODELS["pi0_libero"]
        if "actor.model.openpi.config_name" in m.flat:
            m.refuse(
                "actor.model.openpi.config_name", f"pirl knows the openpi configs {sorted(OPENPI_MODELS)}"
            )
    if "actor.model.openpi.action_horizon" in m.flat:
        m.take("actor.model.openpi.action_horizon", "model", "action_horizon", int)
    if g("actor.model.is_lora", False):
        m.set("actor.model.is_lora", "model", "paligemma_variant", "gemma_2b_lora")
        m.fields["model"]["action_expert_variant"] = "gemma_300m_lora"
        m.take("actor.model.lora_rank", "model", "lora_rank", int)
    else:
        m.expect("actor.model.is_lora", lambda v: not v, "", meaning="no LoRA")
        if "actor.model.lora_rank" in m.flat:
            m.used.add("actor.model.lora_rank")
            m.unsupported["actor.model.lora_rank"] = "no effect: actor.model.is_lora is off"
    m.expect("actor.model.use_proprio", bool, "pirl always feeds the proprio state", meaning="state input on")
    m.expect("actor.model.model_path", lambda v: True, "", meaning="init_checkpoint (see below)")
    path = g("actor.model.model_path")
    if path and Path(str(path)).expanduser().exists():
        m.fields["top"]["init_checkpoint"] = str(path)
        m.mapped["actor.model.model_path"] = f"init_checkpoint = {path!r}"
    elif path:
        m.mapped["actor.model.model_path"] = f"not found here ({path}); pass --init-checkpoint"
    if "actor.model.openpi.num_images_in_input" in m.flat:
        m.used.add("actor.model.openpi.num_images_in_input")
        m.unsupported["actor.model.openpi.num_images_in_input"] = (
            "the cameras come from the model config's image_keys (openpi's) and the environment"
        )

    # --- policy
    pi05 = model.pi05 or config_name.startswith("pi05")
    if pi05:
        m.fields["policy"]["value_head_hidden"] = PI05_VALUE_HEAD
    m.take("actor.model.num_action_chunks", "policy", "action_chunk", int)
    m.agree("actor.model.openpi.action_chunk", "actor.model.num_action_chunks")
    m.take("actor.model.action_dim", "policy", "action_env_dim", int)
    m.agree("actor.model.openpi.action_env_dim", "actor.model.action_dim")
    m.take("actor.model.num_steps", "policy", "num_steps", int)
    m.agree("actor.model.openpi.num_steps", "actor.model.num_steps")
    m.take("actor.model.add_value_head", "policy", "add_value_head", bool)
    m.agree("actor.model.openpi.add_value_head", "actor.model.add_value_head")
    m.take("actor.model.openpi.noise_level", "policy", "noise_level", float)
    m.take("actor.model.openpi.train_expert_only", "policy", "train_expert_only", bool)
    m.take("actor.model.openpi.detach_critic_input", "policy", "detach_critic_input", bool)  # null = False
    m.take("actor.model.openpi.chunk_critic_input", "policy", "chunk_critic_input", bool)
    m.take("actor.model.openpi.value_after_vlm", "policy", "value_after_vlm", bool)
    m.take("actor.model.openpi.value_vlm_mode", "policy", "value_vlm_mode", str)
    m.take("actor.model.openpi.joint_logprob", "policy", "joint_logprob", bool)
    m.take("actor.model.openpi.noise_logvar_range", "policy", "noise_logvar_range", tuple)
    m.take("algorithm.logprob_type", "policy", "logprob_type", str)
    noise_method = g("actor.model.openpi.noise_method", "flow_sde")
    if noise_method in ("flow_sde", "flow_noise"):
        m.take("actor.model.openpi.noise_method", "policy", "noise_method", str)
    elif "actor.model.openpi.noise_method" in m.flat:
        m.refuse("actor.model.openpi.noise_method", "pirl implements flow_sde and flow_noise")
    m.expect(
        "actor.model.openpi.noise_anneal",
        lambda v: not v,
        "pirl's Flow-SDE noise level is constant",
        meaning="constant noise level",
    )
    if "actor.model.openpi.noise_params" in m.flat:
        m.used.add("actor.model.openpi.noise_params")
        if g("actor.model.openpi.noise_anneal", False):
            m.refuse("actor.model.openpi.noise_params", "noise annealing is not implemented in pirl")
        else:
            m.unsupported["actor.model.openpi.noise_params"] = (
                "no effect: actor.model.openpi.noise_anneal is off"
            )
    m.expect(
        "actor.model.openpi.use_dsrl", lambda v: not v, "pirl does not implement DSRL", meaning="no DSRL"
    )

    # --- algorithm
    adv_type = g("algorithm.adv_type", "gae")
    if adv_type in ("gae", "grpo"):
        m.take("algorithm.adv_type", "adv", "adv_type", str)
    else:
        m.refuse("algorithm.adv_type", "pirl implements gae and grpo")
    loss_type = {"gae": "actor_critic", "grpo": "actor"}.get(adv_type)
    m.expect(
        "algorithm.loss_type",
        lambda v: v == loss_type,
        f"pirl's loss follows adv_type: {loss_type} for {adv_type}",
        meaning=f"follows adv_type ({loss_type})",
    )
    m.expect(
        "algorithm.reward_type",
        lambda v: v == "chunk_level",
        "pirl rewards are per chunk step",
        meaning="chunk_level",
    )
    m.take("algorithm.normalize_advantages", "adv", "normalize_advantages", bool)
    m.take("algorithm.gamma", "adv", "gamma", float)
    m.take("algorithm.gae_lambda", "adv", "gae_lambda", float)
    if adv_type == "grpo":
        m.take("algorithm.group_size", "adv", "group_size", int)
    else:
        m.expect(
            "algorithm.group_size", lambda v: int(v) == 1, "PPO has no groups", meaning="no groups (PPO)"
        )
    m.agree("env.train.group_size", "algorithm.group_size")
    m.take("algorithm.filter_rewards", "adv", "filter_rewards", bool)
    if "algorithm.rewards_lower_bound" in m.flat or "algorithm.rewards_upper_bound" in m.flat:
        bounds = (
            float(g("algorithm.rewards_lower_bound", 0.1)),
            float(g("algorithm.rewards_upper_bound", 0.9)),
        )
        for key in ("algorithm.rewards_lower_bound", "algorithm.rewards_upper_bound"):
            m.set(key, "adv", "filter_bounds", bounds)
    m.take("algorithm.update_epoch", "top", "update_epochs", int)
    m.take("algorithm.loss_agg_func", "loss", "loss_agg_func", str)
    m.expect(
        "algorithm.entropy_type",
        lambda v: v in ("token_level", "chunk_level"),
        "RLinf's openpi model returns one mean entropy per sample, which action_level cannot reshape",
        meaning="",
    )
    if "algorithm.entropy_type" in m.mapped:
        del m.mapped["algorithm.entropy_type"]
        m.unsupported["algorithm.entropy_type"] = (
            "no effect for openpi: RLinf's openpi model already averages the entropy over denoise steps, "
            "chunk and action dims into one value per sample (pirl's entropy), which token_level and "
            "chunk_level leave as is"
        )
    m.take("algorithm.entropy_bonus", "loss", "entropy_bonus", float)
    m.take("algorithm.clip_ratio_low", "loss", "clip_ratio_low", float)
    m.take("algorithm.clip_ratio_high", "loss", "clip_ratio_high", float)
    m.take("algorithm.value_clip", "loss", "value_clip", float)
    m.take("algorithm.huber_delta", "loss", "huber_delta", float)
    m.take("rollout.recompute_logprobs", "top", "recompute_logprobs", bool)
    m.take("algorithm.recompute_logprobs", "top", "recompute_logprobs", bool)

    # --- environment
    env_type = g("env.train.env_type")
    backend = "mjx"
    if env_type == "libero":
        suite = g("env.train.task_suite_name")
        if suite in LIBERO_SUITES:
            backend = "libero"
            m.set("env.train.task_suite_name", "env", "name", suite)
            m.fields["env"]["backend"] = "libero"
            m.used.add("env.train.env_type")
            m.mapped["env.train.env_type"] = "env.backend = 'libero'"
        else:
            m.refuse("env.train.task_suite_name", f"pirl's LIBERO backend runs {LIBERO_SUITES}")
            m.used.add("env.train.env_type")
    elif env_type == "maniskill":
        env_id = g("env.train.init_params.id")
        m.used.add("env.train.env_type")
        if env_id in MANISKILL_STAND_INS:
            m.set("env.train.init_params.id", "env", "name", MANISKILL_STAND_INS[env_id])
            m.mapped["env.train.env_type"] = "env.backend = 'mjx' (pirl's MJX stand-in scene)"
        else:
            m.refuse("env.train.env_type", f"pirl's ManiSkill stand-ins are {sorted(MANISKILL_STAND_INS)}")
    elif env_type is not None:
        m.refuse("env.train.env_type", "pirl trains on LIBERO (real) or its MJX scenes")
    m.take("env.train.total_num_envs", "env", "num_envs", int)
    m.take("env.train.max_episode_steps", "env", "max_episode_steps", int)
    chunk = int(g("actor.model.num_action_chunks", 5))
    if "env.train.max_steps_per_rollout_epoch" in m.flat:
        m.set(
            "env.train.max_steps_per_rollout_epoch",
            "top",
            "chunk_steps",
            int(g("env.train.max_steps_per_rollout_epoch")) // chunk,
        )
    m.take("env.train.rollout_epoch", "top", "rollout_epochs", int)
    m.take("env.train.reward_coef", "env", "reward_coef", float)
    m.take("env.train.use_rel_reward", "env", "use_rel_reward", bool)
    m.take("env.train.use_step_penalty", "env", "use_step_penalty", bool)
    auto_reset, ignore_term = (
        bool(g("env.train.auto_reset", False)),
        bool(g("env.train.ignore_terminations", False)),
    )
    if backend == "libero" or not (auto_reset or ignore_term):
        m.take("env.train.auto_reset", "env", "auto_reset", bool)
        m.take("env.train.ignore_terminations", "env", "ignore_terminations", bool)
    else:
        reason = "the MJX rollout starts fresh episodes every rollout and ends them on success (libero backend only)"
        for key in ("env.train.auto_reset", "env.train.ignore_terminations"):
            if g(key, False):
                m.refuse(key, reason)
            elif key in m.flat:
                m.set(key, "env", key.rsplit(".", 1)[1], False)
        # RLinf's loss is then a plain token mean (no per-episode weighting): keep that.
        m.fields["top"]["episode_loss_weighting"] = False
    bootstrap = g("algorithm.bootstrap_type", "standard")
    if bootstrap == "standard":
        # RLinf bootstraps truncated chunks only when the environment auto-resets.
        m.fields["adv"]["bootstrap_on_truncation"] = auto_reset
        m.used.add("algorithm.bootstrap_type")
        m.mapped["algorithm.bootstrap_type"] = (
            f"adv.bootstrap_on_truncation = {auto_reset} (RLinf: only with auto-reset)"
        )
        if "algorithm.bootstrap_type" not in m.flat:
            m.mapped.pop("algorithm.bootstrap_type")
    else:
        m.fields["adv"]["bootstrap_on_truncation"] = True
        m.refuse(
            "algorithm.bootstrap_type", "pirl bootstraps truncations only, never terminations ('standard')"
        )
    m.expect("env.train.use_fixed_reset_state_ids", lambda v: True, "", meaning="official initial states")
    if "env.train.use_fixed_reset_state_ids" in m.flat and not g("env.train.use_fixed_reset_state_ids"):
        m.unsupported["env.train.use_fixed_reset_state_ids"] = (
            "False: pirl always resets to the suite's fixed initial states (env.init_ids picks some)"
        )
        m.mapped.pop("env.train.use_fixed_reset_state_ids")
    m.expect(
        "env.train.use_ordered_reset_state_ids",
        lambda v: not v,
        "pirl draws reset states at random",
        meaning="random draw",
    )
    m.expect(
        "env.train.specific_reset_id",
        lambda v: v is None,
        "use env.task_ids / env.init_ids",
        meaning="all reset states",
    )
    m.expect(
        "env.train.reset_gripper_open",
        bool,
        "pirl settles every reset with the gripper open",
        meaning="gripper open",
    )
    heights = g("env.train.init_params.camera_heights")
    widths = g("env.train.init_params.camera_widths")
    if heights is not None:
        if widths is not None and widths != heights:
            m.refuse("env.train.init_params.camera_widths", "pirl renders square images (env.image_size)")
        m.set("env.train.init_params.camera_heights", "env", "image_size", int(heights))
        m.agree("env.train.init_params.camera_widths", "env.train.init_params.camera_heights")
    m.take("rollout.pipeline_stage_num", "env", "pipeline_stage_num", int)
    if "env.eval.total_num_envs" in m.flat:
        episodes = int(g("env.eval.total_num_envs")) * int(g("env.eval.rollout_epoch", 1))
        m.set("env.eval.total_num_envs", "top", "eval_episodes", episodes)
        if "env.eval.rollout_epoch" in m.flat:
            m.used.add("env.eval.rollout_epoch")
            m.mapped["env.eval.rollout_epoch"] = f"eval_episodes = {episodes} (with env.eval.total_num_envs)"

    # --- actor / optimizer
    m.take("actor.global_batch_size", "top", "global_batch_size", int)
    m.take("actor.micro_batch_size", "top", "micro_batch_size", int)
    if "actor.micro_batch_size" in m.flat:
        m.mapped["actor.micro_batch_size"] += " (pirl's is global, RLinf's per device; memory only)"
    m.take("actor.seed", "top", "seed", int)
    m.take("actor.optim.lr", "optim", "lr", float)
    m.take("actor.optim.value_lr", "optim", "value_lr", float)
    m.take("actor.optim.adam_beta1", "optim", "b1", float)
    m.take("actor.optim.adam_beta2", "optim", "b2", float)
    m.take("actor.optim.adam_eps", "optim", "eps", float)
    m.take("actor.optim.weight_decay", "optim", "weight_decay", float)
    m.take("actor.optim.clip_grad", "optim", "clip_grad_norm", float)
    m.take("actor.optim.critic_warmup_steps", "optim", "critic_warmup_steps", int)


def _build(m: _Mapper, path: Path) -> RLConfig:
    f = m.fields
    model_name = m.get("actor.model.openpi.config_name", "pi0_libero")
    model = dataclasses.replace(OPENPI_MODELS.get(model_name, OPENPI_MODELS["pi0_libero"]), **f["model"])
    chunk = f["policy"].get("action_chunk", 10)
    top = dict(f["top"])
    max_steps = f["env"].get("max_episode_steps")
    if (
        top.get("chunk_steps") is not None
        and max_steps is not None
        and top["chunk_steps"] == math.ceil(max_steps / chunk)
    ):
        top.pop("chunk_steps")  # pirl's default resolution gives the same number
    try:
        return RLConfig(
            model=model,
            policy=FlowPolicyConfig(**f["policy"]),
            env=EnvSpec(**f["env"]),
            adv=AdvantageConfig(**f["adv"]),
            loss=PPOLossConfig(**f["loss"]),
            optim=OptimizerConfig(**f["optim"]),
            **top,
        )
    except ValueError as err:
        raise UserError(f"the RLinf config {path} maps to an invalid pirl config: {err}") from err


def read_rlinf_config(path: str | Path, *, allow_unsupported: bool = False) -> RLinfImport:
    """Compose and map the RLinf YAML at `path` (see the module docstring).

    Raises `UserError` naming every key pirl cannot honour, unless `allow_unsupported`."""
    path = Path(path).expanduser()
    flat = flatten(compose(path))
    mapper = _Mapper(flat, allow_unsupported)
    _map(mapper, path.stem)
    mapper.finish()
    if mapper.blocking and not allow_unsupported:
        listed = "\n".join(f"  {k}: {v}" for k, v in sorted(mapper.blocking.items()))
        raise UserError(
            f"{path}: pirl cannot honour these RLinf settings:\n{listed}\n"
            "change them, or pass --rlinf-allow-unsupported to keep pirl's behaviour for them"
        )
    return RLinfImport(_build(mapper, path), mapper.mapped, mapper.unsupported, mapper.blocking)


def pop_rlinf_flags(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Remove `--rlinf-config PATH` (or `=PATH`) and `--rlinf-allow-unsupported` from `argv`."""
    out, path, allow = [], None, False
    it = iter(range(len(argv)))
    skip = False
    for i in it:
        if skip:
            skip = False
            continue
        arg = argv[i]
        if arg == "--rlinf-config":
            if i + 1 >= len(argv):
                raise UserError("--rlinf-config needs a path to an RLinf YAML")
            path, skip = argv[i + 1], True
        elif arg.startswith("--rlinf-config="):
            path = arg.split("=", 1)[1]
        elif arg == "--rlinf-allow-unsupported":
            allow = True
        else:
            out.append(arg)
    return out, path, allow

"""Named data configs (which dataset, which keys, which action/normalisation semantics) and the
transform pipeline they define.

A `DataConfig` is declarative: dataset keys, cameras, delta-or-absolute actions, norm type, prompt
source, horizon. `make_transforms` turns it (plus the model config, the dataset's tasks, the norm
stats and a tokenizer) into one per-sample function with openpi's order:

    prompt_from_task -> repack -> robot_inputs -> delta_actions -> normalize
      -> resize_images -> tokenize_prompt -> pad_states_and_actions

Add your own dataset without touching this file: override `pi0_custom`'s fields on the command
line (every field is a tyro flag), or build a `DataConfig` in your own module and
`register_data_config` it (see docs/custom_dataset.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pirl.data import transforms as T
from pirl.data.normalize import NormStats, load_norm_stats

# openpi's LIBERO repack: dataset keys -> the keys the LIBERO policy server receives.
_LIBERO_REPACK = (
    ("observation/image", "image"),
    ("observation/wrist_image", "wrist_image"),
    ("observation/state", "state"),
    ("actions", "actions"),
)
_LIBERO_CAMERAS = (("base_0_rgb", "observation/image"), ("left_wrist_0_rgb", "observation/wrist_image"))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which LeRobot dataset to train on and how its samples become model inputs."""

    name: str = "pi0_custom"
    """Config name; norm stats live at <assets_dir>/<name>/<asset_id>/norm_stats.json."""
    repo_id: str = "physical-intelligence/custom_dataset"
    """LeRobot repo id (under HF_LEROBOT_HOME) or a local dataset folder."""
    asset_id: str | None = None
    """Folder under <assets_dir>/<name>/ holding norm_stats.json; None = repo_id."""
    assets_dir: str = "assets"
    """Root of the norm-stats assets."""
    repack: tuple[tuple[str, str], ...] = _LIBERO_REPACK
    """(new key, dataset key) pairs: dataset keys renamed to the policy server's keys."""
    cameras: tuple[tuple[str, str], ...] = _LIBERO_CAMERAS
    """(model camera, repacked key) pairs; model cameras not listed get zeros, masked out."""
    state_keys: tuple[str, ...] = ("observation/state",)
    """Repacked keys concatenated (last axis) into the state."""
    action_keys: tuple[str, ...] = ("actions",)
    """Repacked keys concatenated (last axis) into the actions."""
    state_dim: int = 8
    """Width of the dataset's state (before padding to the model's action_dim)."""
    action_dim: int = 7
    """Width of the dataset's actions; the policy outputs this many dims."""
    delta_action_mask: tuple[int, ...] | None = None
    """make_bool_mask dims for delta actions, e.g. (6, -1): 6 dims minus state, 1 absolute; None = absolute."""
    norm_type: Literal["zscore", "quantile"] = "zscore"
    """z-score (π0) or q01/q99 quantile (π0.5) normalisation of state and actions."""
    prompt_from_task: bool = True
    """Use the LeRobot task string of each frame as the prompt."""
    default_prompt: str | None = None
    """Prompt for samples without one (when prompt_from_task is False)."""
    action_horizon: int = 50
    """Actions per chunk H (must equal the model's action_horizon)."""

    @property
    def repack_map(self) -> dict[str, str]:
        return dict(self.repack)

    @property
    def camera_map(self) -> dict[str, str]:
        return dict(self.cameras)

    @property
    def dataset_state_keys(self) -> list[str]:
        """Dataset feature names that make up the state."""
        return [self._dataset_key(k) for k in self.state_keys]

    @property
    def dataset_action_keys(self) -> list[str]:
        """Dataset feature names that make up the actions (and are read as chunks)."""
        return [self._dataset_key(k) for k in self.action_keys]

    @property
    def delta_mask(self) -> tuple[bool, ...] | None:
        return None if self.delta_action_mask is None else T.make_bool_mask(*self.delta_action_mask)

    @property
    def use_quantiles(self) -> bool:
        return self.norm_type == "quantile"

    def _dataset_key(self, key: str) -> str:
        if key not in self.repack_map:
            raise ValueError(
                f"data config {self.name!r}: {key!r} is not a repacked key {sorted(self.repack_map)}"
            )
        return self.repack_map[key]

    def to_json(self) -> dict[str, Any]:
        """The config as JSON values (a trained policy's assets/policy.json keeps it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DataConfig:
        """Inverse of `to_json` (lists become tuples; unknown keys are an error naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"data config JSON has unknown fields {unknown}")

        def tup(x: Any) -> Any:
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        return cls(**{k: tup(v) for k, v in data.items()})

    def norm_stats_dir(self) -> Path:
        """<assets_dir>/<name>/<asset id>: asset_id, else repo_id (a local folder's name when repo_id is a path)."""
        return Path(self.assets_dir) / self.name / asset_id_for(self.asset_id or self.repo_id)

    def load_norm_stats(self, directory: str | Path | None = None) -> dict[str, NormStats]:
        """Read the norm stats from `directory` (e.g. a checkpoint's assets) or `norm_stats_dir()`."""
        return load_norm_stats(directory if directory is not None else self.norm_stats_dir())


def asset_id_for(repo_id: str) -> str:
    """The assets sub-folder for a repo id; a local dataset path maps to its folder name."""
    path = Path(repo_id).expanduser()
    if path.is_absolute() or repo_id.startswith(".") or (path / "meta" / "info.json").is_file():
        return path.resolve().name
    return repo_id


def make_transforms(
    data_cfg: DataConfig,
    *,
    model_action_dim: int,
    image_resolution: tuple[int, int],
    tasks: Mapping[int, str] | None,
    norm_stats: Mapping[str, NormStats] | None,
    tokenizer: T.Tokenizer | None,
    image_keys: tuple[str, ...] = T.MODEL_IMAGE_KEYS,
    discrete_state_input: bool = False,
) -> T.Transform:
    """The per-sample pipeline: raw LeRobot frame (with an action chunk) -> model-ready sample.

    The output has "image" {camera: uint8[h, w, 3]}, "image_mask" {camera: bool}, "state"
    f32[model_action_dim], "actions" f32[H, model_action_dim], "tokenized_prompt" i32[L] and
    "tokenized_prompt_mask" bool[L] (the last two only with a tokenizer). `discrete_state_input`
    (the model config's; π0.5) puts the normalised, discretised state into the prompt.
    """
    if data_cfg.state_dim > model_action_dim or data_cfg.action_dim > model_action_dim:
        raise ValueError(
            f"data config {data_cfg.name!r}: state_dim {data_cfg.state_dim} / action_dim {data_cfg.action_dim} "
            f"exceed the model's action_dim {model_action_dim}"
        )
    structure = dict(data_cfg.repack)
    steps: list[T.Transform] = []
    if data_cfg.prompt_from_task:
        if tasks is None:
            raise ValueError("prompt_from_task needs the dataset's tasks")
        steps.append(functools.partial(T.prompt_from_task, tasks=dict(tasks)))
    steps.append(functools.partial(T.inject_default_prompt, prompt=data_cfg.default_prompt))
    if data_cfg.prompt_from_task or data_cfg.default_prompt is not None:
        structure.setdefault("prompt", "prompt")
    steps += [
        functools.partial(T.repack, structure=structure),
        functools.partial(
            T.robot_inputs,
            cameras=data_cfg.camera_map,
            state_keys=data_cfg.state_keys,
            action_keys=data_cfg.action_keys,
            image_keys=image_keys,
        ),
        functools.partial(_check_dims, data_cfg=data_cfg),
        functools.partial(T.delta_actions, mask=data_cfg.delta_mask),
        functools.partial(T.normalize, norm_stats=norm_stats, use_quantiles=data_cfg.use_quantiles),
        functools.partial(T.resize_images, height=image_resolution[0], width=image_resolution[1]),
    ]
    if tokenizer is not None:
        steps.append(
            functools.partial(
                T.tokenize_prompt, tokenizer=tokenizer, discrete_state_input=discrete_state_input
            )
        )
    steps.append(functools.partial(T.pad_states_and_actions, action_dim=model_action_dim))
    return T.compose(steps)


def _check_dims(sample: T.Sample, data_cfg: DataConfig) -> T.Sample:
    state_dim = sample["state"].shape[-1]
    if state_dim != data_cfg.state_dim:
        raise ValueError(
            f"data config {data_cfg.name!r}: the dataset's state {data_cfg.dataset_state_keys} has {state_dim} dims, "
            f"the config says state_dim={data_cfg.state_dim}; set --data.state-dim {state_dim}"
        )
    if "actions" in sample and sample["actions"].shape[-1] != data_cfg.action_dim:
        got = sample["actions"].shape[-1]
        raise ValueError(
            f"data config {data_cfg.name!r}: the dataset's actions {data_cfg.dataset_action_keys} have {got} dims, "
            f"the config says action_dim={data_cfg.action_dim}; set --data.action-dim {got}"
        )
    return sample


def make_transforms_for_model(
    data_cfg: DataConfig,
    model_cfg: Any,
    *,
    tasks: Mapping[int, str] | None,
    norm_stats: Mapping[str, NormStats] | None,
    tokenizer: T.Tokenizer | None,
) -> T.Transform:
    """`make_transforms` with the sizes read from a `pirl.models.config.Pi0Config`."""
    if model_cfg.action_horizon != data_cfg.action_horizon:
        raise ValueError(
            f"data config {data_cfg.name!r} has action_horizon {data_cfg.action_horizon} but the model has "
            f"{model_cfg.action_horizon}; make them equal"
        )
    return make_transforms(
        data_cfg,
        model_action_dim=model_cfg.action_dim,
        image_resolution=tuple(model_cfg.image_resolution),
        tasks=tasks,
        norm_stats=norm_stats,
        tokenizer=tokenizer,
        image_keys=tuple(model_cfg.image_keys),
        discrete_state_input=bool(model_cfg.discrete_state_input),
    )


def output_transforms(data_cfg: DataConfig, norm_stats: Mapping[str, NormStats] | None) -> T.Transform:
    """Inference: {"actions" [..., H, A], "state"} -> unnormalised, absolute actions of the dataset's
    action_dim (openpi's Unnormalize -> AbsoluteActions -> robot outputs). "state" is the normalised
    state the model saw (it is unnormalised here before the delta is undone)."""

    def outputs(sample: T.Sample) -> T.Sample:
        stats = {k: v for k, v in (norm_stats or {}).items() if k in sample}
        sample = T.unnormalize(sample, stats, use_quantiles=data_cfg.use_quantiles)
        sample = T.absolute_actions(sample, data_cfg.delta_mask)
        return T.robot_outputs(sample, action_dim=data_cfg.action_dim)

    return outputs


# ---------------------------------------------------------------------------------------------
# Named configs.

_MANISKILL = dict(
    repo_id="physical-intelligence/maniskill",
    repack=(
        ("observation/image", "observation.images.top"),
        ("observation/state", "observation.state"),
        ("actions", "actions"),
    ),
    cameras=(("base_0_rgb", "observation/image"),),
    state_dim=8,
    action_dim=7,
)
_CALVIN = dict(
    repo_id="InternRobotics/InternData-Calvin_ABC",
    repack=(
        ("observation/image", "video.image_base"),
        ("observation/wrist_image", "video.image_wrist"),
        ("observation/state_ee_pos", "state.ee_pos"),
        ("observation/state_ee_rot", "state.ee_rot"),
        ("observation/state_gripper", "state.gripper"),
        ("actions/delta_ee_pos", "action.delta_ee_pos"),
        ("actions/delta_ee_rot", "action.delta_ee_rot"),
        ("actions/gripper", "action.gripper"),
    ),
    cameras=_LIBERO_CAMERAS,
    state_keys=("observation/state_ee_pos", "observation/state_ee_rot", "observation/state_gripper"),
    action_keys=("actions/delta_ee_pos", "actions/delta_ee_rot", "actions/gripper"),
    state_dim=7,
    action_dim=7,
)

_DATA_CONFIGS: dict[str, DataConfig] = {}


def register_data_config(config: DataConfig, *, replace: bool = False) -> DataConfig:
    """Make `config` available by `config.name` (e.g. from your own module, before training)."""
    if config.name in _DATA_CONFIGS and not replace:
        raise ValueError(f"data config {config.name!r} already exists; pass replace=True to override it")
    _DATA_CONFIGS[config.name] = config
    return config


for _config in (
    # openpi pi0_libero: LIBERO actions are already deltas, but openpi's π0 LIBERO checkpoints were
    # trained with an extra delta transform on the first 6 dims.
    DataConfig(name="pi0_libero", repo_id="physical-intelligence/libero", delta_action_mask=(6, -1)),
    DataConfig(
        name="pi05_libero",
        repo_id="physical-intelligence/libero",
        norm_type="quantile",
        action_horizon=10,
    ),
    DataConfig(name="pi0_maniskill", **_MANISKILL),
    DataConfig(name="pi05_maniskill", norm_type="quantile", action_horizon=10, **_MANISKILL),
    DataConfig(
        name="pi05_metaworld",
        repo_id="lerobot/metaworld_mt50",
        repack=(
            ("observation/image", "observation.image"),
            ("observation/state", "observation.state"),
            ("actions", "action"),
        ),
        cameras=(("base_0_rgb", "observation/image"),),
        state_dim=4,
        action_dim=4,
        norm_type="quantile",
        action_horizon=5,
    ),
    DataConfig(name="pi05_calvin", norm_type="quantile", action_horizon=5, **_CALVIN),
    DataConfig(name="pi0_custom"),
    # pirl's MJX toy suites (the CPU demo): LIBERO's keys and cameras, z-score, absolute actions;
    # the norm stats come from the warm start's expert demos.
    DataConfig(name="pi0_toy", repo_id="pirl/toy_demos", action_horizon=5),
    DataConfig(
        name="pi0_realworld",
        repo_id="realworld_franka_bin_relocation",
        repack=(
            ("observation/image", "image"),
            ("observation/extra_view_image", "extra_view_image"),
            ("observation/state", "state"),
            ("actions", "actions"),
        ),
        cameras=(("base_0_rgb", "observation/image"), ("left_wrist_0_rgb", "observation/extra_view_image")),
        state_dim=19,
        action_dim=7,
        action_horizon=10,
    ),
    DataConfig(
        name="pi0_aloha_robotwin",
        repo_id="physical-intelligence/robotwin",
        repack=(
            ("images/cam_high", "observation.images.cam_high"),
            ("images/cam_left_wrist", "observation.images.cam_left_wrist"),
            ("images/cam_right_wrist", "observation.images.cam_right_wrist"),
            ("state", "observation.state"),
            ("actions", "action"),
        ),
        cameras=(
            ("base_0_rgb", "images/cam_high"),
            ("left_wrist_0_rgb", "images/cam_left_wrist"),
            ("right_wrist_0_rgb", "images/cam_right_wrist"),
        ),
        state_keys=("state",),
        action_keys=("actions",),
        state_dim=14,
        action_dim=14,
        delta_action_mask=(6, -1, 6, -1),
    ),
):
    register_data_config(_config)


def data_config_names() -> list[str]:
    return sorted(_DATA_CONFIGS)


def get_data_config(name: str, **overrides: Any) -> DataConfig:
    """The named config, with fields replaced by `overrides`; an unknown name lists the valid ones."""
    if name not in _DATA_CONFIGS:
        close = difflib.get_close_matches(name, _DATA_CONFIGS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown data config {name!r}.{hint} Valid names: {', '.join(data_config_names())}")
    return dataclasses.replace(_DATA_CONFIGS[name], **overrides)

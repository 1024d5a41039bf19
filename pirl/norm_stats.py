"""Compute a dataset's normalisation statistics: `python -m pirl.norm_stats --config-name pi0_libero
--repo-id <repo id or path> [--assets-dir assets] [--min-std 0.0] [--min-quantile-range 0.0]
[--max-frames N]`.

Streams the dataset episode by episode (numeric columns only; images are never decoded), builds
each frame's state and action chunk exactly as training does (concatenated keys, chunk of
action_horizon future frames with the last frame repeated, delta actions where the config says),
and accumulates mean / std / q01 / q99 per dimension with openpi's running moments and 5,000-bin
histograms. Writes openpi's norm_stats.json to `<assets_dir>/<config-name>/<repo-id>/`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path

import numpy as np
import tqdm
import tyro

from pirl.data import transforms as T
from pirl.data.configs import DataConfig, get_data_config
from pirl.data.lerobot import LeRobotDataset
from pirl.data.normalize import NormStats, RunningStats, save_norm_stats, widen_small_ranges
from pirl.errors import UserError, run_cli

logger = logging.getLogger("pirl.norm_stats")


def episode_state_and_actions(
    columns: dict[str, np.ndarray], data_cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One episode's states f32[T, S] and action chunks f32[T, H, A], after the delta transform."""
    state = np.concatenate(
        [columns[k].reshape(len(columns[k]), -1) for k in data_cfg.dataset_state_keys], axis=-1
    ).astype(np.float32)
    actions = np.concatenate(
        [columns[k].reshape(len(columns[k]), -1) for k in data_cfg.dataset_action_keys], axis=-1
    ).astype(np.float32)
    length = len(state)
    # lerobot's delta_timestamps padding: frames past the episode end repeat the last frame.
    rows = np.minimum(np.arange(length)[:, None] + np.arange(data_cfg.action_horizon)[None, :], length - 1)
    chunks = T.delta_actions({"state": state, "actions": actions[rows]}, data_cfg.delta_mask)["actions"]
    return state, chunks


def compute_norm_stats(
    data_cfg: DataConfig,
    repo_id: str | None = None,
    *,
    max_frames: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, NormStats]:
    """Stats of "state" and "actions" over the dataset (or `max_frames` frames of random episodes)."""
    dataset = LeRobotDataset(repo_id or data_cfg.repo_id, load_images=False)
    num_episodes = len(dataset.episode_indices)
    total = len(dataset)
    order = np.arange(num_episodes)
    if max_frames is not None and max_frames < total:
        order = np.random.default_rng(seed).permutation(num_episodes)
        total = max_frames
    keys = [*data_cfg.dataset_state_keys, *data_cfg.dataset_action_keys]
    stats = {"state": RunningStats(), "actions": RunningStats()}
    seen = 0
    with tqdm.tqdm(total=total, desc="norm stats", unit="frame", disable=not progress) as bar:
        for position in order:
            state, chunks = episode_state_and_actions(dataset.episode_columns(int(position), keys), data_cfg)
            take = min(len(state), total - seen)
            stats["state"].update(state[:take])
            stats["actions"].update(chunks[:take])
            seen += take
            bar.update(take)
            if seen >= total:
                break
    return {key: s.get_statistics() for key, s in stats.items()}


def main(
    config_name: str,
    repo_id: str | None = None,
    assets_dir: str = "assets",
    asset_id: str | None = None,
    min_std: float = 0.0,
    min_quantile_range: float = 0.0,
    max_frames: int | None = None,
    seed: int = 0,
    register_module: tuple[str, ...] = (),
) -> Path:
    """Compute and write norm_stats.json for a data config.

    Args:
      config_name: data config name (pi0_libero, pi05_libero, pi0_custom, ...).
      repo_id: dataset repo id under HF_LEROBOT_HOME, or a local dataset folder; default the config's.
      assets_dir: root of the assets; the file goes to <assets_dir>/<config_name>/<repo_id>/norm_stats.json.
      asset_id: folder name under <assets_dir>/<config_name>/; default the repo id (a path's folder name).
      min_std: raise every std below this to it (dims with tiny std are warned about).
      min_quantile_range: widen every q01–q99 range narrower than this to it, around its centre.
      max_frames: use at most this many frames (of randomly chosen episodes).
      seed: episode order seed when max_frames is set.
      register_module: modules to import first, e.g. one that calls
        `pirl.data.configs.register_data_config` for your own dataset.
    """
    for module in register_module:
        importlib.import_module(module)
    overrides = {"assets_dir": assets_dir}
    if repo_id is not None:
        overrides["repo_id"] = repo_id
    if asset_id is not None:
        overrides["asset_id"] = asset_id
    try:
        base_cfg = get_data_config(config_name)
    except KeyError as error:  # an unknown name: the message lists the valid ones
        raise UserError(error.args[0]) from None
    data_cfg = dataclasses.replace(base_cfg, **overrides)
    norm_stats = compute_norm_stats(data_cfg, max_frames=max_frames, seed=seed)
    norm_stats = {
        key: widen_small_ranges(key, s, min_std=min_std, min_quantile_range=min_quantile_range)
        for key, s in norm_stats.items()
    }
    path = save_norm_stats(data_cfg.norm_stats_dir(), norm_stats)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_cli(lambda: tyro.cli(main))

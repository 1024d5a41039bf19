"""The description of a trained policy (openpi's "trained policy" pattern), kept with its checkpoint.

A trained policy is its parameters plus what turns observations into model inputs and model
outputs into actions: the model config, the data config (cameras, state / action dims, z-score or
quantile normalisation, delta-action mask), the norm stats, the tokenizer and the number of Euler
denoising steps it was trained and evaluated with. pirl writes them into every RL and SFT run's
`assets/` (`policy.json`, `norm_stats.json`, `tokenizer.model`), whether or not a warm start
computed the stats, and every consumer reads them from there: the RL trainer (`--init-checkpoint`,
`--resume`), `pirl.eval` and `pirl.serve`. Nothing has to be repeated on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

from pirl.checkpoints.detect import find_pirl_step_dir, pirl_run_dir
from pirl.data.configs import DataConfig
from pirl.data.normalize import NormStats, save_norm_stats
from pirl.models.config import Pi0Config

POLICY_FILE = "policy.json"
"""File name of the description inside a run's assets/."""
TOKENIZER_FILE = "tokenizer.model"
"""File name the tokenizer is copied to inside a run's assets/."""


@dataclasses.dataclass(frozen=True)
class PolicyDescription:
    """Model config, data config and sampling steps of a trained policy (norm stats and tokenizer
    are files next to it)."""

    model: Pi0Config
    """The π0 / π0.5 model."""
    data: DataConfig
    """Input / output transforms (its action_horizon equals the model's)."""
    num_steps: int = 10
    """Euler denoising steps the policy samples with (the RL policy's `num_steps`; openpi: 10)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": dataclasses.asdict(self.model),
            "data": self.data.to_json(),
            "num_steps": self.num_steps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = POLICY_FILE) -> PolicyDescription:
        try:
            fields = {f.name for f in dataclasses.fields(Pi0Config)}
            model = Pi0Config(**{k: v for k, v in data["model"].items() if k in fields})
            return cls(model=model, data=DataConfig.from_json(data["data"]), num_steps=int(data["num_steps"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} is not a pirl policy description: {e}") from e


def asset_roots(checkpoint: str | pathlib.Path) -> list[pathlib.Path]:
    """Folders that may hold a checkpoint's assets, most specific first: the path itself, its
    assets/, and for a pirl run checkpoint the step's and the run's assets/."""
    path = pathlib.Path(checkpoint).expanduser().resolve()
    root = path if path.is_dir() else path.parent
    roots = [root, root / "assets"]
    step_dir = find_pirl_step_dir(root) if root.is_dir() else None
    if step_dir is not None:
        run = pirl_run_dir(step_dir)
        roots += [step_dir, step_dir / "assets", run, run / "assets"]
    return list(dict.fromkeys(roots))


def find_policy_description(checkpoint: str | pathlib.Path) -> PolicyDescription | None:
    """The description saved with `checkpoint` (see `asset_roots`), or None (e.g. an openpi or RLinf
    checkpoint, which carries no pirl description)."""
    for root in asset_roots(checkpoint):
        path = root / POLICY_FILE
        if path.is_file():
            return PolicyDescription.from_json(json.loads(path.read_text()), str(path))
    return None


def save_policy_assets(
    assets_dir: str | pathlib.Path,
    description: PolicyDescription,
    norm_stats: Mapping[str, NormStats] | None,
    tokenizer_path: str | pathlib.Path | None,
) -> pathlib.Path:
    """Write policy.json, norm_stats.json (when there are stats) and a copy of the tokenizer into
    `assets_dir`, so that the directory describes the policy completely; returns `assets_dir`."""
    assets = pathlib.Path(assets_dir)
    assets.mkdir(parents=True, exist_ok=True)
    if norm_stats is not None:
        save_norm_stats(assets, norm_stats)
    if tokenizer_path is not None:
        source, target = pathlib.Path(tokenizer_path).expanduser().resolve(), assets / TOKENIZER_FILE
        if source != target.resolve():
            shutil.copyfile(source, target)
    tmp = assets / (POLICY_FILE + ".tmp")
    tmp.write_text(json.dumps(description.to_json(), indent=2))
    tmp.replace(assets / POLICY_FILE)
    return assets

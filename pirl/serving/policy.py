"""The host-side policy used by evaluation and serving: raw observation dict in, action chunk out.

    policy = Policy.from_checkpoint("/ckpt/pi0_libero", config_name="pi0_libero")
    out = policy.infer({"observation/image": u8[h, w, 3], "observation/wrist_image": u8[h, w, 3],
                        "observation/state": f32[8], "prompt": "pick up the bowl"})
    out["actions"]        # f32[H, 7]: unnormalised, absolute, the data config's action dims
    out["policy_timing"]  # {"infer_ms", "preprocess_ms", "postprocess_ms"}

Input transforms (openpi's inference order, on the host with numpy): default prompt -> robot inputs
(cameras -> model image keys, missing cameras zero and masked) -> normalise the state with the norm
stats -> resize-with-pad to the model resolution -> tokenise -> pad state to `action_dim`. Output
transforms: unnormalise -> absolute actions (delta mask) -> the first `action_dim` dims
(`pirl.data.configs.output_transforms`). The model call is one jitted `pi0.sample_actions` over a
batch; batches are padded to power-of-two sizes so each size compiles once.

Checkpoints are auto-detected (`pirl.checkpoints.load_checkpoint_params`): openpi-PyTorch
safetensors (a file or a directory holding *.safetensors), a pirl run (`<run>/checkpoints/<step>/state`,
latest step), or an openpi JAX orbax checkpoint (`<ckpt>/params`). A pirl run is a complete policy
(`pirl.policies.trained`): its assets/policy.json gives the model config, data config and Euler
steps, next to its norm stats and tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from pirl.checkpoints import CheckpointMismatchError
from pirl.checkpoints.detect import (
    find_pirl_step_dir,
    load_checkpoint_params,
    pirl_run_dir,
)
from pirl.data import configs as data_configs
from pirl.data import transforms as T
from pirl.data.normalize import NormStats, load_norm_stats
from pirl.errors import UserError
from pirl.models import pi0
from pirl.models.config import Pi0Config, model_config_for
from pirl.models.tokenizer import PaligemmaTokenizer, find_tokenizer, train_tiny_tokenizer
from pirl.policies.trained import asset_roots, find_policy_description

logger = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 4096
"""Largest accepted image side in a request (bigger images are rejected before any work)."""
MAX_PROMPT_CHARS = 4096
"""Longest accepted prompt in a request."""

LIBERO_EXAMPLE_PROMPTS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the black bowl next to the ramekin and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "turn on the stove and put the moka pot on it",
)
"""Prompts the random tiny tokenizer is trained on (smoke tests and benchmarks)."""


class InvalidRequestError(ValueError):
    """An observation that cannot be turned into a model input; the message says what to change."""


# ----------------------------------------------------------------------------------------------
# Configs and checkpoints.


def read_run_model_config(step_dir: pathlib.Path) -> Pi0Config | None:
    """The model config saved in a pirl run's config.json, or None (runs older than assets/policy.json)."""
    config_json = pirl_run_dir(step_dir) / "config.json"
    if not config_json.is_file():
        return None
    model = json.loads(config_json.read_text()).get("model")
    if not isinstance(model, dict):
        return None
    fields = {f.name for f in dataclasses.fields(Pi0Config)}
    return Pi0Config(**{k: v for k, v in model.items() if k in fields})


def identity_norm_stats(state_dim: int, action_dim: int) -> dict[str, NormStats]:
    """Norm stats that leave values unchanged (z-score: mean 0, std 1; quantile: q01 -1, q99 1)."""

    def stats(d: int) -> NormStats:
        return NormStats(
            mean=np.zeros(d, np.float32),
            std=np.ones(d, np.float32),
            q01=-np.ones(d, np.float32),
            q99=np.ones(d, np.float32),
        )

    return {"state": stats(state_dim), "actions": stats(action_dim)}


# ----------------------------------------------------------------------------------------------
# The policy.


def batch_buckets(max_batch_size: int) -> list[int]:
    """Every batch size `infer_prepared` compiles for batches of 1..max_batch_size (powers of two)."""
    return sorted({_bucket(n, max_batch_size) for n in range(1, max_batch_size + 1)})


def _bucket(n: int, max_batch_size: int) -> int:
    """Power-of-two batch size >= n (capped at max_batch_size), so few shapes ever compile."""
    return min(max(1, 1 << math.ceil(math.log2(max(n, 1)))), max(max_batch_size, n))


class Policy:
    """A π0 / π0.5 policy on the host: openpi-style observation dicts in, action chunks out.

    Thread-safe: `infer` / `infer_batch` may be called from several threads (the model call is
    serialised). Build it with `from_checkpoint`, `from_params` or `random_tiny`.
    """

    def __init__(
        self,
        params: dict,
        model_cfg: Pi0Config,
        data_cfg: data_configs.DataConfig,
        norm_stats: Mapping[str, NormStats] | None,
        tokenizer: T.Tokenizer,
        *,
        num_steps: int = 10,
        seed: int = 0,
        max_batch_size: int = 64,
        metadata: Mapping[str, Any] | None = None,
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if data_cfg.state_dim > model_cfg.action_dim or data_cfg.action_dim > model_cfg.action_dim:
            raise ValueError(
                f"data config {data_cfg.name!r} (state_dim {data_cfg.state_dim}, action_dim "
                f"{data_cfg.action_dim}) does not fit the model's action_dim {model_cfg.action_dim}"
            )
        if norm_stats is not None:
            missing = [k for k in ("state", "actions") if k not in norm_stats]
            if missing:
                raise ValueError(f"norm stats lack {missing}; they need 'state' and 'actions'")
        # Inference never reads action chunks, so the data config's horizon follows the model's.
        self.data_cfg = dataclasses.replace(data_cfg, action_horizon=model_cfg.action_horizon)
        self.model_cfg = model_cfg
        self.norm_stats = dict(norm_stats) if norm_stats is not None else None
        self.tokenizer = tokenizer
        self.num_steps = num_steps
        self.max_batch_size = max_batch_size
        self._params = jax.device_put(params)
        self._rng = jax.random.key(seed)
        self._calls = 0
        self._lock = threading.Lock()
        self._input_transform = self._make_input_transform()
        self.output_transform = data_configs.output_transforms(self.data_cfg, self.norm_stats)
        """Model-space actions chunk -> the robot's actions (un-normalised, deltas made absolute), per sample."""
        self._sample = jax.jit(functools.partial(_sample_actions, model_cfg, num_steps))
        self.metadata: dict[str, Any] = {
            "model": "pi05" if model_cfg.pi05 else "pi0",
            "config_name": data_cfg.name,
            "action_horizon": model_cfg.action_horizon,
            "action_dim": data_cfg.action_dim,
            "state_dim": data_cfg.state_dim,
            "image_resolution": list(model_cfg.image_resolution),
            "image_keys": [src for _, src in data_cfg.cameras],
            "num_steps": num_steps,
            **(metadata or {}),
        }

    @property
    def params(self) -> dict:
        """The model parameters (on device)."""
        return self._params

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_params(
        cls,
        params: dict,
        model_cfg: Pi0Config,
        data_cfg: data_configs.DataConfig | str = "pi0_libero",
        norm_stats: Mapping[str, NormStats] | None = None,
        tokenizer: T.Tokenizer | None = None,
        **kwargs: Any,
    ) -> Policy:
        """A policy from in-memory params (tests). `norm_stats=None` means no normalisation."""
        if isinstance(data_cfg, str):
            data_cfg = data_configs.get_data_config(data_cfg)
        if tokenizer is None:
            raise ValueError("from_params needs a tokenizer (e.g. PaligemmaTokenizer(path, max_len))")
        return cls(params, model_cfg, data_cfg, norm_stats, tokenizer, **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | pathlib.Path,
        config_name: str | None = None,
        *,
        model_cfg: Pi0Config | None = None,
        tokenizer_path: str | pathlib.Path | None = None,
        norm_stats_path: str | pathlib.Path | None = None,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> Policy:
        """Load params (kind auto-detected), tokenizer and norm stats from a checkpoint directory.

        A checkpoint with a policy description (a pirl RL / SFT run's assets/policy.json) is used as
        trained: its model config, data config, norm stats, tokenizer and Euler steps;
        `config_name`, when given, must name the same data config. Other checkpoints (openpi,
        RLinf) take the model from `model_cfg` or `model_config_for(config_name)` (default
        pi0_libero), and tokenizer and norm stats from their assets (norm stats also from the data
        config's `<ckpt>/<repo id>/` folder, RLinf's layout) unless given.
        """
        path = pathlib.Path(checkpoint).expanduser().resolve()
        saved = find_policy_description(path)
        if saved is not None:
            if config_name is not None and config_name != saved.data.name:
                raise UserError(
                    f"--config-name {config_name} conflicts with the checkpoint's data config "
                    f"{saved.data.name!r} (its assets/policy.json); drop --config-name"
                )
            data_cfg, steps = saved.data, saved.num_steps
            if model_cfg is not None:
                origin = "the model_cfg argument"
            else:
                model_cfg, origin = saved.model, "the checkpoint's assets/policy.json"
        else:
            data_cfg, steps = data_configs.get_data_config(config_name or "pi0_libero"), 10
            step_dir = find_pirl_step_dir(path) if path.is_dir() else None
            if model_cfg is not None:
                origin = "the model_cfg argument"
            elif step_dir is not None and (model_cfg := read_run_model_config(step_dir)) is not None:
                origin = f"{pirl_run_dir(step_dir) / 'config.json'}"
            else:
                model_cfg = model_config_for(data_cfg.name, data_cfg.action_horizon)
                origin = f"the preset of --config-name {data_cfg.name!r}"
        num_steps = num_steps or steps
        roots = asset_roots(path)
        try:
            params = load_checkpoint_params(path, model_cfg)
        except CheckpointMismatchError as e:
            raise UserError(f"{e} (The model config came from {origin}.)") from None
        tokenizer = PaligemmaTokenizer(
            tokenizer_path or _first_found(find_tokenizer, roots), max_len=model_cfg.max_token_len
        )
        if norm_stats_path:
            norm_stats = load_norm_stats(norm_stats_path)
        else:
            asset_id = data_configs.asset_id_for(data_cfg.asset_id or data_cfg.repo_id)
            loaders = [functools.partial(load_norm_stats, asset_id=asset_id), load_norm_stats]
            norm_stats = _first_found(lambda root: _first_found(lambda f: f(root), loaders), roots)
        meta = {"checkpoint": path.name}  # a name: clients need not learn the server's paths
        return cls(
            params, model_cfg, data_cfg, norm_stats, tokenizer, num_steps=num_steps, metadata=meta, **kwargs
        )

    @classmethod
    def random_tiny(
        cls,
        config_name: str = "pi0_libero",
        *,
        seed: int = 0,
        tokenizer_dir: str | None = None,
        **kwargs: Any,
    ) -> Policy:
        """`Pi0Config.tiny()` with random weights, a word tokenizer trained on LIBERO-style prompts and
        identity norm stats: a real end-to-end policy for smoke tests and benchmarks (its actions mean nothing)."""
        data_cfg = data_configs.get_data_config(config_name)
        pi05 = config_name.startswith("pi05")
        model_cfg = Pi0Config.tiny(pi05=pi05, discrete_state_input=False)
        params = pi0.init_params(model_cfg, jax.random.key(seed))
        folder = pathlib.Path(tokenizer_dir or tempfile.mkdtemp(prefix="pirl_tiny_tok_"))
        tok_path = train_tiny_tokenizer(
            LIBERO_EXAMPLE_PROMPTS, folder / "tokenizer.model", model_cfg.vocab_size
        )
        tokenizer = PaligemmaTokenizer(tok_path, max_len=model_cfg.max_token_len)
        stats = identity_norm_stats(data_cfg.state_dim, data_cfg.action_dim)
        meta = {"checkpoint": "random-tiny"}
        return cls(params, model_cfg, data_cfg, stats, tokenizer, seed=seed, metadata=meta, **kwargs)

    # ------------------------------------------------------------------ transforms

    def _make_input_transform(self) -> T.Transform:
        cfg, model = self.data_cfg, self.model_cfg
        return T.compose(
            [
                functools.partial(T.inject_default_prompt, prompt=cfg.default_prompt),
                functools.partial(
                    T.robot_inputs,
                    cameras=cfg.camera_map,
                    state_keys=cfg.state_keys,
                    action_keys=cfg.action_keys,
                    image_keys=model.image_keys,
                ),
                functools.partial(
                    T.normalize, norm_stats=self._state_stats(), use_quantiles=cfg.use_quantiles
                ),
                functools.partial(
                    T.resize_images, height=model.image_resolution[0], width=model.image_resolution[1]
                ),
                functools.partial(
                    T.tokenize_prompt,
                    tokenizer=self.tokenizer,
                    discrete_state_input=bool(model.discrete_state_input),
                ),
                functools.partial(T.pad_states_and_actions, action_dim=model.action_dim),
            ]
        )

    def _state_stats(self) -> dict[str, NormStats] | None:
        return None if self.norm_stats is None else {"state": self.norm_stats["state"]}

    def validate(self, obs: Any) -> dict[str, Any]:
        """Checks a request before any work; raises InvalidRequestError saying what is wrong."""
        if not isinstance(obs, Mapping):
            raise InvalidRequestError(f"the observation must be a dict, got {type(obs).__name__}")
        cfg = self.data_cfg
        required = [src for _, src in cfg.cameras] + list(cfg.state_keys)
        if cfg.default_prompt is None:
            required.append("prompt")
        missing = [k for k in required if k not in obs]
        if missing:
            raise InvalidRequestError(
                f"observation lacks keys {missing}; config {cfg.name!r} needs {required} (got {sorted(map(str, obs))})"
            )
        for _, src in cfg.cameras:
            image = obs[src]
            if (
                not isinstance(image, np.ndarray)
                or image.ndim != 3
                or 3 not in (image.shape[0], image.shape[-1])
            ):
                shape = getattr(image, "shape", type(image).__name__)
                raise InvalidRequestError(
                    f"{src!r} must be an image array [h, w, 3] (or [3, h, w]), got {shape}"
                )
            if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
                raise InvalidRequestError(
                    f"{src!r} must be uint8 (or float in [0, 1]), got dtype {image.dtype}"
                )
            if max(image.shape) > MAX_IMAGE_SIDE or min(image.shape) < 1:
                raise InvalidRequestError(
                    f"{src!r} has shape {image.shape}; sides must be 1..{MAX_IMAGE_SIDE}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                finite = image.dtype == np.uint8 or np.all(np.isfinite(image.astype(np.float32)))
            if not finite:
                raise InvalidRequestError(f"{src!r} has values that are NaN, inf or beyond float32's range")
        parts = []
        for key in cfg.state_keys:
            try:  # a ragged list cannot become an array
                parts.append(np.asarray(obs[key]).reshape(-1))
            except (ValueError, TypeError):
                raise InvalidRequestError(
                    f"{key!r} must be a flat array (or list) of {cfg.state_dim} numbers, got a ragged "
                    f"{type(obs[key]).__name__}"
                ) from None
        state = np.concatenate(parts)
        if not np.issubdtype(state.dtype, np.number) or state.shape != (cfg.state_dim,):
            raise InvalidRequestError(
                f"state {list(cfg.state_keys)} must be {cfg.state_dim} numbers, got shape {state.shape} dtype {state.dtype}"
            )
        # The model computes in float32: a finite float64 such as 1e300 would become inf there.
        with np.errstate(over="ignore", invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(state.astype(np.float32)))
        if bad.size:
            raise InvalidRequestError(
                f"state {list(cfg.state_keys)} has values that are NaN, inf or beyond float32's range "
                f"(about ±3.4e38) at indices {bad[:8].tolist()}"
            )
        if "prompt" in obs:
            prompt = obs["prompt"]
            if isinstance(prompt, np.ndarray) and prompt.ndim == 0:
                prompt = prompt.item()
            if isinstance(prompt, bytes):
                prompt = prompt.decode("utf-8", errors="replace")
            if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
                raise InvalidRequestError(
                    f"'prompt' must be a string of at most {MAX_PROMPT_CHARS} characters"
                )
            obs = {**obs, "prompt": prompt}
        return {k: v for k, v in obs.items() if k != "actions"}

    def prepare(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and transform one request into a model-ready sample (numpy, no batch axis)."""
        obs = self.validate(obs)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                sample = self._input_transform(obs)
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidRequestError(f"cannot transform the observation: {e}") from e
        if not np.all(np.isfinite(sample["state"])):
            raise InvalidRequestError(
                "state overflows float32 once normalised with the norm stats; check its units and range"
            )
        return sample

    # ------------------------------------------------------------------ inference

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One observation -> {"actions": f32[H, action_dim], "policy_timing": {...}}."""
        return self.infer_batch([obs])[0]

    def infer_batch(self, observations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Several observations in one model call (e.g. parallel evaluation workers)."""
        t0 = time.perf_counter()
        samples = [self.prepare(o) for o in observations]
        pre_ms = (time.perf_counter() - t0) * 1000 / max(len(samples), 1)
        outs = self.infer_prepared(samples)
        for out in outs:
            out["policy_timing"]["preprocess_ms"] = pre_ms
        return outs

    def infer_prepared(self, samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Model call + output transforms for samples made by `prepare`; one batch, padded to a bucket."""
        if not samples:
            return []
        n = len(samples)
        padded = list(samples) + [samples[-1]] * (_bucket(n, self.max_batch_size) - n)
        batch = stack_samples(padded, self.model_cfg.image_keys)
        with self._lock:
            rng = jax.random.fold_in(self._rng, self._calls)
            self._calls += 1
            t_model = time.perf_counter()
            actions = np.asarray(self._sample(self._params, rng, batch))
            infer_ms = (time.perf_counter() - t_model) * 1000
        t_post = time.perf_counter()
        outs = []
        for i, sample in enumerate(samples):
            out = self.output_transform({"actions": actions[i], "state": np.asarray(sample["state"])})
            outs.append({"actions": np.asarray(out["actions"], np.float32)})
        post_ms = (time.perf_counter() - t_post) * 1000 / n
        for out in outs:
            out["policy_timing"] = {"infer_ms": infer_ms, "postprocess_ms": post_ms, "batch_size": n}
        return outs

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Compile the model call for these batch sizes (bucketed) ahead of the first request."""
        cfg = self.model_cfg
        for size in sorted({_bucket(b, self.max_batch_size) for b in batch_sizes}):
            sample = {
                "image": {k: np.zeros((*cfg.image_resolution, 3), np.uint8) for k in cfg.image_keys},
                "image_mask": {k: np.bool_(True) for k in cfg.image_keys},
                "state": np.zeros(cfg.action_dim, np.float32),
                "tokenized_prompt": np.zeros(cfg.max_token_len, np.int32),
                "tokenized_prompt_mask": np.ones(cfg.max_token_len, bool),
            }
            batch = stack_samples([sample] * size, cfg.image_keys)
            jax.block_until_ready(self._sample(self._params, self._rng, batch))

    def sample_model_actions(self, obs: pi0.Observation, rng: jax.Array) -> Float[jax.Array, "b h a"]:
        """The bare jitted model call (normalised, padded actions); for benchmarks."""
        return self._sample(self._params, rng, obs)


def _sample_actions(model_cfg: Pi0Config, num_steps: int, params: dict, rng: jax.Array, obs: pi0.Observation):
    images = {
        k: v.astype(jnp.float32) / 255.0 * 2.0 - 1.0 if v.dtype == jnp.uint8 else v
        for k, v in obs.images.items()
    }
    return pi0.sample_actions(params, model_cfg, rng, obs.replace(images=images), num_steps=num_steps)


def stack_samples(samples: Sequence[Mapping[str, Any]], image_keys: Sequence[str]) -> pi0.Observation:
    """Model-ready samples -> one batched `pi0.Observation` of numpy arrays (uint8 images)."""
    return pi0.Observation(
        images={k: np.stack([s["image"][k] for s in samples]) for k in image_keys},
        image_masks={k: np.asarray([bool(s["image_mask"][k]) for s in samples]) for k in image_keys},
        state=np.stack([np.asarray(s["state"], np.float32) for s in samples]),
        tokenized_prompt=np.stack([s["tokenized_prompt"] for s in samples]).astype(np.int32),
        tokenized_prompt_mask=np.stack([s["tokenized_prompt_mask"] for s in samples]).astype(bool),
    )


def _first_found(loader: Any, roots: Sequence[pathlib.Path]) -> Any:
    errors = []
    for root in roots:
        try:
            return loader(root)
        except FileNotFoundError as e:
            errors.append(str(e))
    raise FileNotFoundError("; ".join(errors))


def policy_from_args(args: Any) -> Policy:
    """The policy a command line asks for: `--random-tiny`, or `--checkpoint` (+ tokenizer / norm
    stats overrides). `args` has random_tiny, checkpoint, config_name, tokenizer_path,
    norm_stats_path, num_steps and seed (pirl.serve's and pirl.eval's argument classes);
    config_name / num_steps None mean the checkpoint's own (else pi0_libero / 10)."""
    if args.random_tiny:
        return Policy.random_tiny(
            args.config_name or "pi0_libero", seed=args.seed, num_steps=args.num_steps or 10
        )
    if args.checkpoint is None:
        raise UserError("pass --checkpoint DIR (or --random-tiny for a smoke test)")
    return Policy.from_checkpoint(
        args.checkpoint,
        args.config_name,
        tokenizer_path=args.tokenizer_path,
        norm_stats_path=args.norm_stats_path,
        num_steps=args.num_steps,
        seed=args.seed,
    )

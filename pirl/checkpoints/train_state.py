"""Train-state checkpoints: asynchronous orbax saves, resume onto any mesh, fall back past corruption.

A train state is any pytree of arrays — typically `{"params", "opt_state", "step", "rng"}` (typed
`jax.random.key`s are fine) — plus a JSON-able `metadata` dict saved next to it (data-loader
position, rollout counters, config name, ...). Layout: `<directory>/<step>/{state,metadata}`.

Guarantees:
* Atomic: orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a
  run killed mid-save leaves the previous checkpoint as the latest (tested in
  tests/test_train_state.py by killing a process during an async save). Leftover tmp dirs are
  removed the next time a checkpointer opens the directory.
* Asynchronous: `save` copies the arrays to host memory, returns, and writes in a background thread.
  After `save` returns, the caller may donate or overwrite the state's buffers. A following `save`
  (or `wait` / `close`) blocks until the previous write is committed.
* Corruption: `restore_latest` tries the newest step first; if it cannot be read (truncated or
  deleted file, ...), it warns and tries the previous one. Once an older step restores, the
  unreadable newer steps are renamed to `<step>.corrupt-<unix time>` (kept for inspection, ignored
  by orbax) so the resumed run can save those step numbers again. If no step restores, the newest
  step's error is raised and nothing is renamed (e.g. a wrong `abstract_state` is not corruption).
* Paths: a relative directory is resolved against the working directory when the checkpointer is
  made (orbax accepts absolute paths only), so `runs/x/checkpoints` works like any other path.
* Failures are short: a write that fails (disk full, no permission) raises `CheckpointWriteError`
  naming the directory and the reason, and leaves every committed step in place; a resume where no
  step can be read raises `CheckpointRestoreError` naming the directory and every step tried.

Use from a training loop (the pattern that never loses work on an exception):

```python
ckpt = TrainStateCheckpointer(run_dir / "checkpoints", max_to_keep=3, save_interval=50)
restored = ckpt.restore_latest(abstract_state, shardings)   # None on a fresh run
state, start = (restored.state, restored.step + 1) if restored else (init_state, 0)
step = start - 1
try:
    for step in range(start, num_steps):
        state = train_step(state)                  # `state` is always the last *completed* state
        ckpt.save(step, state, {"data_position": loader.position})   # no-op between intervals
except BaseException:
    ckpt.emergency_save(step, state, {"data_position": loader.position})  # never raises
    raise
finally:
    ckpt.close()                                   # waits for the async write to commit
```
If `train_step` donates its input, assign its output to `state` only after it returns (as above),
so the except branch always holds valid buffers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from pirl.errors import UserError, debug_requested

PyTree = Any
log = logging.getLogger(__name__)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, no permission, ...); committed steps are intact."""


class CheckpointRestoreError(UserError):
    """No checkpoint step of a directory could be restored."""


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]


# tensorstore reports an OS error inside its message: "...: No space left on device [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _write_failure_reason(error: BaseException) -> str | None:
    """'No space left on device' etc. when `error` (or its cause) is a filesystem write failure."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno is not None:
            return os.strerror(error.errno)
        match = _OS_ERROR_CODE.search(str(error))
        if match:
            return os.strerror(int(match.group(1)))
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class _DropThreadDuplicates(logging.Filter):
    """Orbax logs a failed background write with its full traceback from each thread involved, then
    raises the same error in the caller's thread at the next save / wait, where `TrainStateCheckpointer`
    turns it into one `CheckpointWriteError`: drop those duplicate traceback records."""

    def filter(self, record: logging.LogRecord) -> bool:
        duplicate = record.exc_info is not None and f"{os.sep}orbax{os.sep}" in record.pathname
        return not duplicate or debug_requested([])


def _quiet_orbax_thread_errors() -> None:
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _DropThreadDuplicates) for f in absl_log.filters):
        absl_log.addFilter(_DropThreadDuplicates())


STATE_ITEM, METADATA_ITEM = "state", "metadata"


def committed_steps(directory: str | Path) -> list[int]:
    """The committed step numbers under a local checkpoint directory, ascending, read from the
    directory listing alone (no orbax manager; [] when it does not exist)."""
    path = Path(os.path.expanduser(str(directory)))
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def check_resume_matches(directory: str | Path, resume: bool, *, resume_flag: str, new_run_hint: str) -> None:
    """Refuse (UserError) a fresh run over the committed checkpoints of an earlier one, and a resume
    with nothing to resume, before anything is built; `new_run_hint` says how to start a new run."""
    if "://" in str(directory):
        return  # remote filesystems: orbax decides
    steps = committed_steps(directory)
    path = os.path.abspath(os.path.expanduser(str(directory)))
    if resume and not steps:
        raise UserError(f"{resume_flag}: there is no checkpoint to resume in {path}; drop {resume_flag} to start a new run")
    if not resume and steps:
        raise UserError(
            f"{path} already holds checkpoints {steps} of an earlier run: pass {resume_flag} to continue "
            f"it, or {new_run_hint} to start a new run beside it"
        )


@dataclasses.dataclass(frozen=True)
class RestoredTrainState:
    """What `restore` / `restore_latest` return."""

    step: int
    """The step the checkpoint was saved at."""
    state: PyTree
    """The train-state pytree, laid out per the requested shardings."""
    metadata: dict[str, Any]
    """The JSON metadata saved with it (empty dict if none)."""


def abstract_like(tree: PyTree, shardings: PyTree | Sharding | None = None) -> PyTree:
    """`jax.ShapeDtypeStruct`s of a pytree of arrays / structs, optionally with new shardings.

    Leaves without a sharding (and none given) are replicated over all devices.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if shardings is None:
        sharding_leaves = [getattr(x, "sharding", None) for x in leaves]
    elif isinstance(shardings, Sharding):
        sharding_leaves = [shardings] * len(leaves)
    else:
        sharding_leaves = treedef.flatten_up_to(shardings)
    replicated = None
    structs = []
    for leaf, sharding in zip(leaves, sharding_leaves, strict=True):
        if sharding is None:
            if replicated is None:
                replicated = NamedSharding(Mesh(jax.devices(), ("replica",)), PartitionSpec())
            sharding = replicated
        structs.append(jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding))
    return jax.tree.unflatten(treedef, structs)


class TrainStateCheckpointer:
    """Orbax `CheckpointManager` over `<directory>/<step>/{state,metadata}` (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_to_keep: int | None = 3,
        save_interval: int = 1,
        async_save: bool = True,
    ):
        """
        Args:
          directory: where the step directories go (created if missing; local path, relative ones
            resolved against the working directory now, or gs://...).
          max_to_keep: keep the newest N checkpoints (None keeps all).
          save_interval: `save` writes only on steps divisible by this (unless `force`).
          async_save: write in a background thread (False: `save` returns once committed).
        """
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1; got {save_interval}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None; got {max_to_keep}")
        if "://" in str(directory):
            self.directory = directory
        else:  # orbax refuses relative paths (the background writer would fail at the first save)
            self.directory = Path(os.path.abspath(os.path.expanduser(str(directory))))
        self.save_interval = save_interval
        _quiet_orbax_thread_errors()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Interval handled here, so a forced save (emergency, final) is never filtered out.
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                str(self.directory), options=options, item_names=(STATE_ITEM, METADATA_ITEM)
            )
        except OSError as error:
            raise CheckpointWriteError(
                f"cannot create the checkpoint directory {self.directory}: {error.strerror or error}"
            ) from error
        self._last_started_step: int | None = None  # an async save may not be listed until committed
        self._closed = False

    # ---------------------------------------------------------------- saving

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write (interval reached and step not saved yet)."""
        return step % self.save_interval == 0 and not self._already_saved(step)

    def _already_saved(self, step: int) -> bool:
        return step == self._last_started_step or step in self.all_steps()

    def save(
        self,
        step: int,
        state: PyTree,
        metadata: dict[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Start saving `state` at `step` (asynchronously); True if a save was started.

        Skips steps off the save interval (unless `force`) and steps already saved. Raises on a
        failure to start; a failure of the background write surfaces at the next save / wait.
        """
        step = int(step)
        if self._already_saved(step):
            if force:
                log.info("checkpoint for step %d already exists; not saving it again", step)
            return False
        if not force and step % self.save_interval:
            return False
        meta = {"step": step, "saved_at_unix": time.time(), **(metadata or {})}
        self.wait()  # a failure of the previous (asynchronous) save is reported as that step's
        with self._write_errors(step):
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(meta)}
                ),
                force=True,
            )
        self._last_started_step = step
        return True

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """Turn a filesystem failure of a save into one `CheckpointWriteError` naming the directory."""
        try:
            yield
        except Exception as error:
            reason = _write_failure_reason(error)
            if reason is None:
                raise
            with contextlib.suppress(Exception):
                self._manager.reload()  # orbax's in-memory list already dropped steps due for deletion
            committed = self.all_steps()
            kept = f"committed steps {committed} are intact" if committed else "no step was committed yet"
            raise CheckpointWriteError(
                f"could not write checkpoint step {step} in {self.directory}: {reason}; {kept}. "
                "Free space or fix the permissions, then continue with --resume"
            ) from error

    def emergency_save(self, step: int, state: PyTree, metadata: dict[str, Any] | None = None) -> bool:
        """Best-effort synchronous save for an exception path: never raises, waits for the commit."""
        try:
            started = self.save(step, state, metadata, force=True)
            self.wait()
            if started:
                log.warning("saved an emergency checkpoint at step %d in %s", step, self.directory)
            return started
        except Exception as error:  # the original exception matters more than this one
            log.error("emergency checkpoint at step %d failed: %s", step, _first_line(error))
            return False

    def wait(self) -> None:
        """Block until the pending asynchronous save (if any) is committed."""
        with self._write_errors(self._last_started_step):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager's resources (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> TrainStateCheckpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --------------------------------------------------------------- restoring

    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def restore(
        self,
        step: int,
        abstract_state: PyTree,
        shardings: PyTree | Sharding | None = None,
    ) -> RestoredTrainState:
        """Restore `step` into the structure, dtypes and shardings of `abstract_state`.

        Args:
          step: a committed step.
          abstract_state: pytree of arrays or `jax.ShapeDtypeStruct`s with the state's structure
            (e.g. `jax.eval_shape(init_state, rng)`); their shardings are used unless `shardings`.
          shardings: optional pytree of `Sharding`s (or one `Sharding` for all leaves) to restore
            onto — any mesh, not necessarily the one that saved. Leaves with no sharding from
            either source are restored replicated.
        """
        target = abstract_like(abstract_state, shardings)
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(target), METADATA_ITEM: ocp.args.JsonRestore()}
            ),
        )
        metadata = dict(restored[METADATA_ITEM] or {})
        return RestoredTrainState(step=int(step), state=restored[STATE_ITEM], metadata=metadata)

    def restore_latest(
        self,
        abstract_state: PyTree,
        shardings: PyTree | Sharding | None = None,
    ) -> RestoredTrainState | None:
        """Restore the newest readable step (None if there is no checkpoint); see the module docstring."""
        self.wait()
        steps = self.all_steps()
        failures: list[tuple[int, Exception]] = []
        for step in reversed(steps):
            try:
                restored = self.restore(step, abstract_state, shardings)
            except Exception as error:
                failures.append((step, error))
                continue
            if failures:
                for failed, error in failures:
                    warnings.warn(
                        f"checkpoint step {failed} in {self.directory} could not be restored "
                        f"({type(error).__name__}: {_first_line(error)})",
                        stacklevel=2,
                    )
                self._quarantine([s for s, _ in failures])
                warnings.warn(
                    f"resumed from step {step}: newer step(s) {[s for s, _ in failures]} were unreadable "
                    f"and have been renamed to '<step>.corrupt-<time>'",
                    stacklevel=2,
                )
            return restored
        if failures:
            step, error = failures[0]
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} could be restored (steps tried, newest first: "
                f"{[s for s, _ in failures]}); step {step}: {type(error).__name__}: {_first_line(error, 200)}. "
                "If the config changed since they were saved, resume with the original config, or start "
                "a new run (--name)"
            ) from error
        return None

    def _quarantine(self, steps: list[int]) -> None:
        """Rename unreadable step dirs out of orbax's view (kept, not deleted)."""
        if not isinstance(self.directory, Path):
            log.warning("not renaming unreadable steps %s on a remote filesystem", steps)
            return
        stamp = int(time.time())
        if self._last_started_step in steps:
            self._last_started_step = None
        if jax.process_index() == 0:  # one process renames; the others wait for it
            for step in steps:
                source = self.directory / str(step)
                with contextlib.suppress(FileNotFoundError):
                    source.rename(self.directory / f"{step}.corrupt-{stamp}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("pirl_train_state_quarantine")
        self._manager.reload()

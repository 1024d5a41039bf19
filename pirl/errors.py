"""User errors and the command-line wrapper that reports them.

`UserError` marks input the user can fix (config values, paths, checkpoints that do not match the
model config, malformed datasets, a full disk); its message says what to change. The command-line
entry points (`pirl.train`, `pirl.eval`, `pirl.serve`, `pirl.norm_stats`) run through `run_cli`,
which prints it in one or two lines and exits with status 2, without a traceback unless `--debug`
or `PIRL_DEBUG=1` asks for one. Every other exception is an internal error and keeps its traceback.

`run_cli` also turns SIGTERM (sent by SLURM, preemptible TPU VMs, `timeout`) into `Terminated`, a
`KeyboardInterrupt`: the training loops save their emergency checkpoint exactly as on Ctrl-C, worker
pools close in their `finally` blocks, and the process exits with status 143 (128 + SIGTERM).

It subclasses ValueError so library callers that already catch ValueError keep working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT = 2
"""Exit status of a command stopped by a `UserError` (the usual one for bad command lines)."""


class UserError(ValueError):
    """A mistake in the user's input; the message says what to change."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by `run_cli`'s SIGTERM handler; handled like Ctrl-C."""


def debug_requested(argv: list[str]) -> bool:
    """Whether `--debug` is in argv or PIRL_DEBUG is set to anything but '' / '0'."""
    return "--debug" in argv or os.environ.get("PIRL_DEBUG", "") not in ("", "0")


def _raise_terminated(signum: int, frame: Any) -> None:
    # Further SIGTERMs while the emergency checkpoint is written are ignored (SIGKILL still works).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def run_cli(main: Callable[[], T]) -> T:
    """Run a command-line `main()` (which reads `sys.argv`): `--debug` is taken out of `sys.argv`
    first; a `UserError` exits 2 with its message (and, when debugging, its traceback); SIGTERM
    raises `Terminated` in the main thread and exits 143 once the stack has unwound."""
    debug = debug_requested(sys.argv[1:])
    sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--debug")]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return main()
    except UserError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None
    except Terminated as stop:
        print(f"{stop}; exiting", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def check_at_least(bounds: dict[str, tuple[float | None, float]]) -> None:
    """Raise a UserError for the first `name: (value, lowest allowed)` whose value is below its bound
    (None values are not checked); names are config paths such as "env.num_envs"."""
    for name, (value, lowest) in bounds.items():
        if value is not None and value < lowest:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{name} must be >= {lowest}, got {value}: change {flag}")


# Filesystem failures the user fixes (space, permissions, a path through a file), not bugs.
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.ENOTDIR}
)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Report a write that fails for lack of space or permission as one UserError naming the file
    (or `path` when the error names none)."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        raise UserError(f"cannot write {error.filename or path}: {os.strerror(error.errno)}") from error

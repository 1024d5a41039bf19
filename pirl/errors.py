"""User errors: the one exception type for a mistake in what the user gave pirl.

`UserError` marks input the user can fix (config values, paths, checkpoints that do not match the
model config, malformed datasets); its message says what to change. The command-line entry points
(`pirl.train`, `pirl.eval`, `pirl.serve`, `pirl.norm_stats`) print it in one or two lines and exit
with status 2, without a traceback unless `--debug` or `PIRL_DEBUG=1` asks for one. Every other
exception is an internal error and keeps its traceback.

It subclasses ValueError so library callers that already catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message says what to change."""

"""The one import of `mujoco.mjx` for pirl's modules.

Without the optional `warp` extra, mujoco-mjx prints "Failed to import warp" and "Failed to import
mujoco_warp" on import, although nothing is wrong: pirl steps MJX with `impl="jax"` and checks for
Warp itself where the Warp render backend is chosen (`pirl.envs.render_warp`). Those two lines are
kept off the terminal here; with warp installed, the import is left as it is, so a broken Warp
install still says why.
"""

import contextlib
import importlib.util
import io

if importlib.util.find_spec("warp") is None:
    with contextlib.redirect_stdout(io.StringIO()):
        from mujoco import mjx
else:
    from mujoco import mjx

__all__ = ["mjx"]

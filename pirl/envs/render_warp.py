"""MJX's own batch renderer (MuJoCo Warp, `mujoco.mjx` with `impl="warp"`) behind pirl's camera contract.

    wr = WarpRenderer(mj_model, geom_ids, cam_ids, size=128)      # host side, once per env
    rgb = jax.vmap(wr)(kinematics)                                 # u8[B, C, 128, 128, 3], upright

The alternative to `pirl.envs.render` (pure JAX) for NVIDIA GPUs: MuJoCo Warp ray-traces the model's
geoms (meshes through per-mesh BVHs, textures, lights, optional shadows) in Warp kernels that JAX calls
through an FFI. It needs the `warp` extra (`uv sync --extra warp`: warp-lang as mujoco-mjx pins it);
Warp's CPU device runs the same kernels (slowly), which is what the CPU tests use.

How MJX's API is used (mujoco-mjx 3.17.0): `mjx.put_model(m, impl="warp")` and
`mjx.make_data(m, impl="warp")` give a Warp model and a data template; `mjx.create_render_context(m,
nworld, cam_res=..., cam_active=...)` allocates the output buffers for exactly `nworld` worlds and
builds the mesh BVHs; per frame `mjx.refit_bvh` then `mjx.render(mx, d, ctx.pytree())` return packed
pixels u32[nworld, pixels] (per active camera a block of H*W pixels at `ctx.rgb_adr[i]`, rows top
down, each pixel 0x..RRGGBB). The renderer reads only the data's geom and camera poses (and lights,
flex vertices), so pirl fills a Warp data template with the poses of its own `Kinematics` (the JAX
env's physics stays `impl="jax"`).

Batching: a render context serves a fixed number of worlds. `WarpRenderer.__call__` renders one
env; under `jax.vmap` (one level: the env's batch) its batching rule renders all B envs in one Warp
call with a context for B worlds, made on first use of each B and kept; an unbatched call (or
`lax.map`) uses a 1-world context. Nested vmaps are not supported (MJX would flatten them into more
worlds than the context has).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from pirl.envs import render as rnd
from pirl.errors import UserError

INSTALL_HINT = "install the `warp` extra (`uv sync --extra warp`, or `pip install 'mujoco-mjx[warp]'`)"
_DRAWN_GROUP = 0
_HIDDEN_GROUP = 5  # outside the context's enabled_geom_groups: built into no BVH, never drawn


def warp_installed() -> bool:
    """Whether warp-lang can be imported (without importing it: its import prints CUDA warnings)."""
    return importlib.util.find_spec("warp") is not None


def cuda_available() -> bool:
    """Whether JAX sees an NVIDIA GPU (Warp's renderer shares it with JAX through XLA's FFI)."""
    try:
        return len(jax.devices("cuda")) > 0
    except RuntimeError:
        return False


def check_warp_backend(require_cuda: bool = True) -> None:
    """Fail early, saying what to install or change, where the Warp backend cannot run."""
    if not warp_installed():
        raise UserError(f"render_backend='warp' needs warp-lang: {INSTALL_HINT}, or use render_backend='jax'")
    if require_cuda and not cuda_available():
        raise UserError(
            "render_backend='warp' needs an NVIDIA GPU visible to JAX (jax.devices(): "
            f"{jax.devices()[0].platform}: JAX needs its CUDA build); use render_backend='jax' on CPU/TPU"
        )


def unpack_rgb(packed: jax.Array, rgb_adr: Sequence[int], height: int, width: int) -> jax.Array:
    """MuJoCo Warp's packed pixels u32[..., P] -> u8[..., C, H, W, 3] for the cameras at `rgb_adr`
    (0x..RRGGBB per pixel, each camera's rows top down, as `mjx.get_rgb` reads them)."""
    n = height * width
    cams = jnp.stack([packed[..., a : a + n] for a in rgb_adr], axis=-2)  # [..., C, H*W]
    rgb = jnp.stack([(cams >> 16) & 0xFF, (cams >> 8) & 0xFF, cams & 0xFF], axis=-1).astype(jnp.uint8)
    return rgb.reshape((*packed.shape[:-1], len(rgb_adr), height, width, 3))


def _render_model(model: mujoco.MjModel, geom_ids: Sequence[int]) -> mujoco.MjModel:
    """A copy of `model` in which exactly `geom_ids` are in the drawn group."""
    m = copy.deepcopy(model)
    m.geom_group[:] = _HIDDEN_GROUP
    m.geom_group[np.asarray(geom_ids, int)] = _DRAWN_GROUP
    return m


class WarpRenderer:
    """MuJoCo Warp images of `cam_ids` of `model`, drawing its geoms `geom_ids` only, at the poses of
    a `pirl.envs.render.Kinematics` whose geom / camera arrays follow `geom_ids` / `cam_ids` order.

    Host-side object (holds the Warp model, data template and render contexts); call it inside jit.
    Lights must be on the world body (their poses are taken once from the model)."""

    def __init__(
        self,
        model: mujoco.MjModel,
        geom_ids: Sequence[int],
        cam_ids: Sequence[int],
        size: int,
        *,
        shadows: bool = False,
        specular: bool = True,
        textures: bool = True,
        supersample: int = 1,
        background_rgb: Sequence[float] = rnd.RenderConfig.sky_horizon_rgb,  # JAX draws a sky gradient
    ):
        if not warp_installed():
            raise UserError(f"the Warp renderer needs warp-lang: {INSTALL_HINT}")
        from pirl.envs.mjx_module import mjx

        if any(int(b) != 0 for b in model.light_bodyid):
            raise ValueError(
                "WarpRenderer takes light poses from the model: lights must be on the world body"
            )
        self.geom_ids = np.asarray(geom_ids, np.int32)
        self.cam_ids = tuple(int(c) for c in cam_ids)
        self.size = int(size)
        self._model = _render_model(model, geom_ids)
        self._ctx_kwargs = dict(
            cam_res=(self.size, self.size),
            cam_active=list(self.cam_ids),
            render_rgb=True,
            render_depth=False,
            render_seg=False,
            use_textures=textures,
            use_shadows=shadows,
            enable_specular=specular,
            samples_per_pixel=supersample,
            enabled_geom_groups=[_DRAWN_GROUP],
            background_color=(*map(float, background_rgb), 1.0),
        )
        self.mx = mjx.put_model(self._model, impl="warp")
        host = mujoco.MjData(self._model)
        mujoco.mj_forward(self._model, host)  # world-body lights: their poses never change
        d0 = mjx.make_data(self._model, impl="warp")
        f32 = np.float32
        self._data0 = d0.tree_replace(
            {
                "_impl.light_xpos": jnp.asarray(host.light_xpos, f32),
                "_impl.light_xdir": jnp.asarray(host.light_xdir, f32),
            }
        )
        self._contexts: dict[int, object] = {}
        self._render = jax.custom_batching.custom_vmap(self._render_one)
        self._render.def_vmap(self._render_rule)

    def context(self, nworld: int):
        """The render context for `nworld` worlds (made on first use: allocates buffers, builds BVHs), on
        every local CUDA device (a batch sharded over GPUs finds its device's buffers), else Warp's CPU."""
        if nworld not in self._contexts:
            from pirl.envs.mjx_module import mjx

            devices = (
                [f"cuda:{d.local_hardware_id}" for d in jax.local_devices()] if cuda_available() else None
            )
            self._contexts[nworld] = mjx.create_render_context(
                self._model, nworld=nworld, devices=devices, **self._ctx_kwargs
            )
        return self._contexts[nworld]

    @property
    def context_sizes(self) -> tuple[int, ...]:
        """World counts of the render contexts made so far."""
        return tuple(sorted(self._contexts))

    def __call__(self, kin: rnd.Kinematics) -> jax.Array:
        """u8[C, size, size, 3] upright (row 0 at the top), cameras in `cam_ids` order, for one env."""
        return self._render(kin)

    def _render_one(self, kin: rnd.Kinematics) -> jax.Array:
        return self.render_batch(jax.tree.map(lambda x: x[None], kin))[0]

    def _render_rule(self, axis_size: int, in_batched, kin: rnd.Kinematics):
        (batched,) = in_batched
        kin = jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)), kin, batched)
        return self.render_batch(kin), True

    def render_batch(self, kin: rnd.Kinematics) -> jax.Array:
        """u8[B, C, size, size, 3] for a Kinematics with a leading batch axis B, in one Warp call."""
        from pirl.envs.mjx_module import mjx

        b = int(kin.geom_xpos.shape[0])
        rc = self.context(b).pytree()
        g, c = self.geom_ids, np.asarray(self.cam_ids)
        d0, f32 = self._data0, jnp.float32

        def one(k: rnd.Kinematics) -> jax.Array:  # MJX's own vmap rule sends the b worlds to Warp at once
            d = d0.replace(
                geom_xpos=d0.geom_xpos.at[g].set(k.geom_xpos.astype(f32)),
                geom_xmat=d0.geom_xmat.at[g].set(k.geom_xmat.reshape(-1, 3, 3).astype(f32)),
                cam_xpos=d0.cam_xpos.at[c].set(k.cam_xpos.astype(f32)),
                cam_xmat=d0.cam_xmat.at[c].set(k.cam_xmat.reshape(-1, 3, 3).astype(f32)),
            )
            d = mjx.refit_bvh(self.mx, d, rc)
            return mjx.render(self.mx, d, rc)[0]

        packed = jax.vmap(one)(kin)
        ctx = self.context(b)
        adr = [int(a) for a in ctx.rgb_adr.numpy()]
        return unpack_rgb(packed, adr, self.size, self.size)

"""LIBERO's cameras on the MJX scenes of `pirl.envs.libero_scene`, drawn by pirl's JAX renderer.

    cams = libero_cameras(task)                                   # host side, once per task
    obs = render_libero_cameras(cams, mjx_data, 224)              # {"agentview_image": u8[224, 224, 3], ...}

The cameras are LIBERO's own (`agentview`, `robot0_eye_in_hand`: the rebuilt model keeps their
bodies, poses and fovy). What is drawn depends on `LiberoRenderConfig.look`:

- `meshes` (the default): the geoms of LIBERO's compiled model that robosuite draws (groups 1-2;
  its meshes decimated to `mesh_max_triangles`, with their textures) lit by the model's own lights
  (`pirl.envs.render_mesh`);
- `primitives` (about 7x cheaper to draw on the CPU): the MJX scene's own geoms (each object's and
  fixture's fitted boxes, the gripper's boxes, the forearm capsule) except its contact plane,
  LIBERO's visual primitives (walls, floor, table top and legs, the mount's torso), one capsule
  fitted to each robot link's visual meshes and one box to the mount's pedestal (the MJX scene has
  no geometry for them: they never touch anything), each body in the mean colour of its visual
  material's texture (times the material colour).

`upright_renderer(cams, size, backend)` draws the same arrays with pirl's JAX renderer or MJX's
MuJoCo Warp one (`pirl.envs.render_warp`: NVIDIA GPU, `warp` extra; `LiberoCameras.model` is what it
uploads).

`render_libero_cameras` returns LIBERO's raw renders: upside down (rows reversed; robosuite returns
OpenGL's bottom-up rows), for comparing with the real LIBERO; the policy-side transform of that
path is openpi's 180 degree rotation (`pirl.policies.env_io.EnvAdapter.rotate_images`).
`render_upright` returns the rows top-down, as the MJX env's observations are.

The extra geoms are not in the MJX model: their world poses come from the body poses in the data
(`xpos`, `xmat`), so `data` needs current kinematics (`mjx.kinematics` after a control step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from pirl.envs import render as rnd
from pirl.envs.build_libero import task_dir
from pirl.envs.libero_scene import LiberoTask, cluster, fit_box, fit_box_in_frame, fit_capsule, geom_points
from pirl.errors import UserError

LIBERO_CAMERAS = {"agentview_image": "agentview", "wrist_image": "robot0_eye_in_hand"}
"""pirl / LIBERO-pool observation key -> LIBERO camera name."""

_GEOM = mujoco.mjtGeom
_PRIMITIVES = (int(_GEOM.mjGEOM_PLANE), int(_GEOM.mjGEOM_BOX), int(_GEOM.mjGEOM_CYLINDER),
               int(_GEOM.mjGEOM_CAPSULE), int(_GEOM.mjGEOM_SPHERE), int(_GEOM.mjGEOM_ELLIPSOID))  # fmt: skip
_TEXROLE_RGB = int(mujoco.mjtTextureRole.mjTEXROLE_RGB)


@dataclasses.dataclass(frozen=True)
class LiberoRenderConfig:
    """How LIBERO's scenes are drawn with pirl's renderer."""

    shadows: bool = False
    """Shadow rays (LIBERO's lights cast none)."""
    specular: bool = True
    """Blinn-Phong highlights from the lights' specular terms."""
    supersample: int = 1
    """Rays per pixel side (anti-aliasing at s^2 the cost)."""
    reflections: bool = True
    """meshes: MuJoCo's mirror pass in the stove's base (LIBERO's one reflective box; about doubles
    the cost of the scenes that have one, libero_spatial / goal and some libero_10 tasks)."""
    hand_boxes: int = 6
    """Boxes fitted to k-means groups of the gripper hand's visual mesh (one box around the whole
    tapered hand filled the bottom quarter of the wrist camera's view, where LIBERO shows the table)."""
    hand_body: str = "gripper0_right_gripper"
    """Body drawn with `hand_boxes` instead of the MJX scene's single hand box."""
    look: Literal["primitives", "meshes"] = "meshes"
    """meshes: LIBERO's own visual meshes (decimated to `mesh_max_triangles`) and textures (the
    default, also the env's: what a LIBERO-trained policy saw); primitives: the fitted boxes /
    capsules above in flat colours (several times cheaper)."""
    mesh_max_triangles: int = 2000
    """meshes: triangle budget per mesh geom (vertex-clustering decimation at build time)."""
    mesh_tile_capacity: int = 256
    """meshes: triangles tested per 8x8-pixel tile (exact while no tile overlaps more)."""


@struct.dataclass
class LiberoCameras:
    """What `render_libero_cameras` needs: the render scene and where each drawn geom sits on its body."""

    scene: rnd.RenderScene
    """pirl.envs.render scene over the drawn geoms (its geom_ids are indices 0..G-1 of the arrays below)."""
    geom_local_pos: jax.Array
    """f32[G, 3] geom position in its body's frame."""
    geom_local_mat: jax.Array
    """f32[G, 3, 3] geom orientation in its body's frame."""
    cam_local_pos: jax.Array
    """f32[C, 3] camera position in its body's frame, per camera of `camera_keys`."""
    cam_local_mat: jax.Array
    """f32[C, 3, 3] camera orientation in its body's frame."""
    geom_body: tuple[int, ...] = struct.field(pytree_node=False)
    """Body id of each drawn geom (the MJX model's body ids = LIBERO's)."""
    cam_body: tuple[int, ...] = struct.field(pytree_node=False)
    """Body id of each camera."""
    camera_keys: tuple[str, ...] = struct.field(pytree_node=False)
    """Observation keys, in output order (LIBERO_CAMERAS)."""
    model: mujoco.MjModel | None = struct.field(pytree_node=False, default=None)
    """Host model the scene was prepared from (what the Warp backend uploads)."""
    model_geom_ids: tuple[int, ...] = struct.field(pytree_node=False, default=())
    """Ids in `model` of the drawn geoms, in scene order."""
    model_cam_ids: tuple[int, ...] = struct.field(pytree_node=False, default=())
    """Ids in `model` of the cameras of `camera_keys`, in order."""


def _quat_mat(q: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, np.float64))
    return m.reshape(3, 3)


def _material_rgb(m: mujoco.MjModel, g: int) -> np.ndarray:
    """A geom's colour as one RGB: its material texture's mean texel times the material colour."""
    mat = int(m.geom_matid[g])
    if mat < 0:
        return np.asarray(m.geom_rgba[g, :3], np.float64)
    rgb = np.asarray(m.mat_rgba[mat, :3], np.float64)
    tex = int(m.mat_texid[mat, _TEXROLE_RGB])
    if tex >= 0:
        n = int(m.tex_nchannel[tex])
        texels = rnd.texture_texels(m, tex).reshape(-1, n)[::7, : min(n, 3)].astype(np.float64)
        rgb = rgb * texels.mean(0)[: 3 if n >= 3 else 1] / 255.0
    return rgb


def _is_visual(m: mujoco.MjModel, g: int) -> bool:
    return (
        not (m.geom_contype[g] or m.geom_conaffinity[g])
        and int(m.geom_group[g]) <= 2
        and m.geom_rgba[g, 3] > 0
    )


def _is_floor(m: mujoco.MjModel, g: int) -> bool:
    """A visible plane: LIBERO's floor (on the world body, or on its own static body in the floor-only
    scenes of libero_object), drawn although it collides."""
    return int(m.geom_type[g]) == _GEOM.mjGEOM_PLANE and int(m.geom_group[g]) <= 2 and m.geom_rgba[g, 3] > 0


def _libero_draws(m: mujoco.MjModel, g: int) -> bool:
    """What LIBERO's cameras show: robosuite renders with geom group 0 (its collision geoms) hidden and
    MuJoCo's default groups 1-2 shown, whether or not a geom collides (the stove's base box does)."""
    return int(m.geom_group[g]) in (1, 2) and m.geom_rgba[g, 3] > 0


def _body_rgb(compiled: mujoco.MjModel, b: int) -> np.ndarray | None:
    """Colour of a body: the material colour of its largest visual geom (mesh vertices or volume)."""
    vis = [g for g in np.where(compiled.geom_bodyid == b)[0] if _is_visual(compiled, g)]
    if not vis:
        return None

    def weight(g):
        if compiled.geom_type[g] == _GEOM.mjGEOM_MESH:
            return float(compiled.mesh_vertnum[compiled.geom_dataid[g]])
        return float(np.prod(compiled.geom_size[g] + 1e-3))

    return _material_rgb(compiled, max(vis, key=weight))


def libero_cameras(
    task: LiberoTask, cfg: LiberoRenderConfig = LiberoRenderConfig(), cache: str | None = None
) -> LiberoCameras:
    """Host-side preparation for one task (reads LIBERO's compiled model from pirl's cache), in the
    look of `cfg.look`. Raises UserError naming the geom for a feature the renderer cannot draw."""
    model = task.model
    compiled = mujoco.MjModel.from_xml_path(str(task_dir(task.suite, task.task_id, cache) / "scene.xml"))
    if compiled.nbody != model.nbody:
        raise ValueError(
            f"{task.suite} task {task.task_id}: cached LIBERO model and MJX model differ in bodies"
        )
    if cfg.look not in ("primitives", "meshes"):
        raise UserError(f"LIBERO render look must be 'primitives' or 'meshes', got {cfg.look!r}")
    if cfg.look == "meshes":
        return _mesh_cameras(task, compiled, cfg)
    # (type, body, pos, quat, size, rgb)
    geoms: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    body_rgb = {b: _body_rgb(compiled, b) for b in range(model.nbody)}
    for g in range(model.ngeom):  # the MJX scene's own primitives (its contact plane is the table top)
        t, b = int(model.geom_type[g]), int(model.geom_bodyid[g])
        if t == _GEOM.mjGEOM_PLANE:
            continue
        rgb = body_rgb[b] if body_rgb[b] is not None else model.geom_rgba[g, :3]
        geoms.append((t, b, model.geom_pos[g], model.geom_quat[g], model.geom_size[g], rgb))
    hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, cfg.hand_body)
    geoms = [g for g in geoms if g[1] != hand]
    fitted = {int(model.geom_bodyid[g]) for g in range(model.ngeom)} - {hand}
    meshes: dict[int, list[int]] = {}
    for g in range(compiled.ngeom):
        b, t = int(compiled.geom_bodyid[g]), int(compiled.geom_type[g])
        if not (_is_floor(compiled, g) or _is_visual(compiled, g)):
            continue
        if t in _PRIMITIVES:  # walls, floor, table, legs, torso: LIBERO's own primitives
            geoms.append(
                (
                    t,
                    b,
                    compiled.geom_pos[g],
                    compiled.geom_quat[g],
                    compiled.geom_size[g],
                    _material_rgb(compiled, g),
                )
            )
        elif t == _GEOM.mjGEOM_MESH and b not in fitted:  # robot links, pedestal: no MJX geometry
            meshes.setdefault(b, []).append(g)
    for b, members in meshes.items():
        pts = np.concatenate([geom_points(compiled, g) for g in members])
        name = mujoco.mj_id2name(compiled, mujoco.mjtObj.mjOBJ_BODY, b) or ""
        if name.startswith("robot0_link"):
            pos, quat, r, h = fit_capsule(pts)
            geoms.append((int(_GEOM.mjGEOM_CAPSULE), b, pos, quat, np.array([r, h, 0.0]), body_rgb[b]))
        elif b == hand:
            labels = cluster(pts, cfg.hand_boxes)
            frame = compiled.geom_quat[
                max(members, key=lambda g: compiled.mesh_vertnum[compiled.geom_dataid[g]])
            ]
            for j in range(labels.max() + 1):
                pos, quat, half = fit_box_in_frame(pts[labels == j], frame)
                geoms.append((int(_GEOM.mjGEOM_BOX), b, pos, quat, half, body_rgb[b]))
        else:
            pos, quat, half = fit_box(pts)
            geoms.append((int(_GEOM.mjGEOM_BOX), b, pos, quat, half, body_rgb[b]))

    # One host model of the drawn geoms, for pirl.envs.render's preparation (types, sizes, colours),
    # with the MJX model's lights; cameras and poses come from the MJX model's bodies at render time.
    spec = mujoco.MjSpec()
    spec.visual.headlight.ambient = model.vis.headlight.ambient
    spec.visual.headlight.diffuse = model.vis.headlight.diffuse
    spec.visual.headlight.specular = model.vis.headlight.specular
    spec.visual.headlight.active = int(model.vis.headlight.active)
    # LIBERO's clipping planes (fractions of its model's extent, which the meshes set)
    spec.visual.map.znear = float(compiled.vis.map.znear * compiled.stat.extent)
    spec.visual.map.zfar = float(compiled.vis.map.zfar * compiled.stat.extent)
    spec.stat.extent = 1.0
    for i in range(model.nlight):
        if model.light_bodyid[i] != 0:
            raise ValueError("LIBERO's lights are expected on the world body")
        light = spec.worldbody.add_light()
        light.pos, light.dir = model.light_pos[i], model.light_dir[i]
        light.diffuse, light.specular, light.ambient = (
            model.light_diffuse[i],
            model.light_specular[i],
            model.light_ambient[i],
        )
        light.castshadow = bool(model.light_castshadow[i])
        light.active = bool(model.light_active[i])
        light.type = mujoco.mjtLightType(int(model.light_type[i]))
        light.cutoff, light.exponent = float(model.light_cutoff[i]), float(model.light_exponent[i])
    for t, _, _, _, size, rgb in geoms:
        geom = spec.worldbody.add_geom()
        geom.type = mujoco.mjtGeom(t)
        geom.size = np.asarray(size, np.float64)
        geom.rgba = np.concatenate([np.clip(rgb, 0, 1), [1.0]])
        geom.contype = geom.conaffinity = 0
    for cam in LIBERO_CAMERAS.values():  # for the Warp backend (poses come from the data at render time)
        spec.worldbody.add_camera(name=cam, fovy=float(model.cam_fovy[model.camera(cam).id]))
    host = spec.compile()
    render_cfg = rnd.RenderConfig(shadows=cfg.shadows, specular=cfg.specular, textures=False,
                                  supersample=cfg.supersample)  # fmt: skip
    scene = rnd.prepare_scene(host, list(range(host.ngeom)), render_cfg)
    return _with_cameras(task, scene, [g[2] for g in geoms], [g[3] for g in geoms], [g[1] for g in geoms],
                         host, range(host.ngeom))  # fmt: skip


def _with_cameras(
    task: LiberoTask, scene: rnd.RenderScene, pos, quat, body, host: mujoco.MjModel, host_geoms
) -> LiberoCameras:
    """LiberoCameras over a prepared scene of G geoms (local poses on their bodies) and LIBERO's cameras;
    `host` holds the G geoms at ids `host_geoms` and cameras named as LIBERO's."""
    model = task.model
    cam_ids = []
    for key, cam in LIBERO_CAMERAS.items():
        c = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
        if c < 0:
            raise ValueError(f"{task.suite} task {task.task_id} has no camera {cam!r} (for {key})")
        if model.cam_mode[c] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
            raise ValueError(f"camera {cam!r} is not fixed to its body; only fixed cameras are supported")
        cam_ids.append(c)
    scene = scene.replace(
        camera_names=tuple(LIBERO_CAMERAS), camera_fovy=tuple(float(model.cam_fovy[c]) for c in cam_ids)
    )
    f32 = np.float32
    return LiberoCameras(
        scene=scene,
        geom_local_pos=jnp.asarray(np.stack(pos), f32),
        geom_local_mat=jnp.asarray(np.stack([_quat_mat(q) for q in quat]), f32),
        cam_local_pos=jnp.asarray(model.cam_pos[cam_ids], f32),
        cam_local_mat=jnp.asarray(np.stack([_quat_mat(model.cam_quat[c]) for c in cam_ids]), f32),
        geom_body=tuple(int(b) for b in body),
        cam_body=tuple(int(model.cam_bodyid[c]) for c in cam_ids),
        camera_keys=tuple(LIBERO_CAMERAS),
        model=host,
        model_geom_ids=tuple(int(g) for g in host_geoms),
        model_cam_ids=tuple(int(host.camera(cam).id) for cam in LIBERO_CAMERAS.values()),
    )


def _mesh_cameras(task: LiberoTask, compiled: mujoco.MjModel, cfg: LiberoRenderConfig) -> LiberoCameras:
    """The meshes look: the geoms of LIBERO's compiled model that robosuite draws (groups 1-2; its
    collision geoms in group 0 overlap them), with their materials, textures and the model's own lights."""
    ids = [g for g in range(compiled.ngeom) if _libero_draws(compiled, g)]
    render_cfg = rnd.RenderConfig(
        shadows=cfg.shadows,
        specular=cfg.specular,
        supersample=cfg.supersample,
        reflections=cfg.reflections,
        mesh_max_triangles=cfg.mesh_max_triangles,
        mesh_tile_capacity=cfg.mesh_tile_capacity,
        unmappable_textures="mean",
    )
    if any(compiled.light_bodyid[i] != 0 for i in range(compiled.nlight)):
        raise UserError(f"{task.suite} task {task.task_id}: LIBERO's lights are expected on the world body")
    scene = rnd.prepare_scene(compiled, ids, render_cfg)  # UserError names an undrawable geom
    # posed() supplies the drawn geoms' poses in scene order: index them 0..G-1
    scene = scene.replace(geom_ids=tuple(range(len(ids))))
    return _with_cameras(
        task, scene, [compiled.geom_pos[g] for g in ids], [compiled.geom_quat[g] for g in ids],
        [compiled.geom_bodyid[g] for g in ids], compiled, ids,
    )  # fmt: skip


def posed(cams: LiberoCameras, data) -> rnd.Kinematics:
    """World poses of the drawn geoms and the cameras from the body poses in `data` (current kinematics)."""
    xpos = jnp.asarray(data.xpos, jnp.float32)
    xmat = jnp.asarray(data.xmat, jnp.float32).reshape(-1, 3, 3)
    gb, cb = np.asarray(cams.geom_body), np.asarray(cams.cam_body)
    geom_xpos = xpos[gb] + jnp.einsum("gij,gj->gi", xmat[gb], cams.geom_local_pos)
    geom_xmat = jnp.einsum("gij,gjk->gik", xmat[gb], cams.geom_local_mat)
    cam_xpos = xpos[cb] + jnp.einsum("cij,cj->ci", xmat[cb], cams.cam_local_pos)
    cam_xmat = jnp.einsum("cij,cjk->cik", xmat[cb], cams.cam_local_mat)
    # lights are on the world body: render.py reads xpos/xmat only for lights on other bodies
    return rnd.Kinematics(geom_xpos, geom_xmat, cam_xpos, cam_xmat, xpos, xmat)


def render_upright(cams: LiberoCameras, data, size: int) -> jax.Array:
    """u8[C, size, size, 3]: the cameras of `camera_keys` in order, upright (row 0 at the top).

    `data`: one env's mjx.Data (or anything with body `xpos`, `xmat`) with current kinematics;
    jit at the caller, vmap over data for batches."""
    return rnd.render(cams.scene, posed(cams, data), tuple(range(len(cams.camera_keys))), size, size)


def upright_renderer(cams: LiberoCameras, size: int, backend: str = "jax") -> Callable[..., jax.Array]:
    """`render_upright(cams, ., size)` drawn by `backend` (LiberoEnvConfig.render_backend): the same
    u8[C, size, size, 3] for one env's data; jit and vmap at the caller. "warp" builds MJX's Warp model
    here (once) and a render context per batch size on first use (`pirl.envs.render_warp`)."""
    if backend == "jax":
        return lambda data: render_upright(cams, data, size)
    if backend != "warp":
        raise UserError(f"render_backend must be 'jax' or 'warp', got {backend!r}")
    from pirl.envs.render_warp import WarpRenderer

    cfg = cams.scene.config
    wr = WarpRenderer(cams.model, cams.model_geom_ids, cams.model_cam_ids, size, shadows=cfg.shadows,
                      specular=cfg.specular, textures=cfg.textures, supersample=cfg.supersample)  # fmt: skip
    return lambda data: wr(posed(cams, data))


def raw_images(keys: tuple[str, ...], upright: jax.Array) -> dict[str, jax.Array]:
    """u8[C, S, S, 3] upright (either backend) -> LIBERO's raw image per observation key of `keys`
    (`LiberoCameras.camera_keys`), rows reversed."""
    return {k: upright[i, ::-1] for i, k in enumerate(keys)}


def render_libero_cameras(cams: LiberoCameras, data, size: int) -> dict[str, jax.Array]:
    """LIBERO's camera images u8[size, size, 3] per observation key, raw (upside down, as LIBERO's);
    `data` as `render_upright`."""
    return raw_images(cams.camera_keys, render_upright(cams, data, size))


def segment_libero_cameras(cams: LiberoCameras, data, size: int) -> dict[str, jax.Array]:
    """Body id i32[size, size] seen at each pixel (-1: background), per key, raw orientation as the images."""
    seg = rnd.render_segmentation(
        cams.scene, posed(cams, data), tuple(range(len(cams.camera_keys))), size, size
    )
    body = jnp.asarray(np.asarray(cams.geom_body, np.int32))
    seg = jnp.where(seg >= 0, body[jnp.maximum(seg, 0)], -1)
    return {k: seg[i, ::-1] for i, k in enumerate(cams.camera_keys)}

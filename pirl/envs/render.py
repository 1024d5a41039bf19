"""Batched ray-cast renderer for MJX scenes of primitive and triangle-mesh geoms, in pure JAX.

Works under `jit`, `vmap` (over environments) and sharded batch axes, on CPU, GPU and TPU: no
OpenGL, no Warp. One primary ray per pixel is intersected analytically with every rendered geom
(plane, sphere, capsule, ellipsoid, cylinder, box), and with mesh triangles binned per image tile
(`pirl.envs.render_mesh`, which says why tiles rather than a BVH); the nearest hit is shaded with
ambient + Lambertian diffuse (+ Blinn-Phong specular) from the model's lights and headlight, with
optional hard shadows (one shadow ray per pixel towards the first shadow-casting light; primitives
cast them, meshes do not yet) and textures as MuJoCo's OpenGL renderer maps them: 2D ones on planes
and boxes (per face) and on meshes (per-vertex texture coordinates), trilinearly filtered over
mip-maps, cube maps on boxes, sRGB textures decoded. As in fixed-function OpenGL (MuJoCo's
renderer): the light is computed per vertex (mesh triangle corners, the corners of the quads MuJoCo
draws planes and boxes with) and interpolated, ambient + diffuse + specular saturate together before
the texture modulates them, and the headlight shines along the camera's axis. A scene with a
reflective plane or box (material reflectance > 0) gets MuJoCo's mirror pass: one reflected ray per
pixel, traced from the mirrored camera. docs/render.md has the measurements against mujoco.Renderer.

Usage:
    scene = prepare_scene(mj_model)                       # host side, once
    rgb = render(scene, mjx_data, ("agentview", "eye_in_hand"), 128, 128)   # u8[2, 128, 128, 3]
    rgb, depth = render_rgbd(scene, mjx_data, (0,), 64, 64)

Conventions follow MuJoCo: a camera looks along -z of its frame with +y up, `cam_fovy` is the
vertical field of view in degrees, depth is the distance along the camera's viewing axis.

Geoms are grouped by type at preparation time so every intersection kernel is specialised and
branch-free. `RenderConfig.mode` picks how the geoms of a group are visited:
- "scan": `lax.scan` over the geoms with the running nearest hit as carry; memory O(rays), small
  graph. Fastest on CPU (about 6 ns per ray-geom test on one core).
- "dense": all geoms of a group at once as [geoms, rays] arrays reduced with min/argmin; about 3x
  slower on CPU (the [geoms, rays] intermediates are materialised), meant for accelerators where
  XLA can fuse it into one reduction kernel.
(A fully unrolled loop over geoms was tried and dropped: XLA's fusion duplicates the running-min
chain, compiling for minutes and running 50x slower.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int, UInt8

from pirl.envs import render_mesh
from pirl.errors import UserError

_PLANE = int(mujoco.mjtGeom.mjGEOM_PLANE)
_SPHERE = int(mujoco.mjtGeom.mjGEOM_SPHERE)
_CAPSULE = int(mujoco.mjtGeom.mjGEOM_CAPSULE)
_ELLIPSOID = int(mujoco.mjtGeom.mjGEOM_ELLIPSOID)
_CYLINDER = int(mujoco.mjtGeom.mjGEOM_CYLINDER)
_BOX = int(mujoco.mjtGeom.mjGEOM_BOX)
_MESH = int(mujoco.mjtGeom.mjGEOM_MESH)
_PRIMITIVE_TYPES = (_PLANE, _SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX)
_SUPPORTED_TYPES = (*_PRIMITIVE_TYPES, _MESH)
_TEXGEN_TYPES = (_PLANE, _BOX)  # primitives whose 2D texture mapping (MuJoCo's object-linear) is drawn
_TYPE_NAMES = {int(v): k.removeprefix("mjGEOM_").lower() for k, v in mujoco.mjtGeom.__members__.items()}

_LIGHT_SPOT = int(mujoco.mjtLightType.mjLIGHT_SPOT)
_LIGHT_DIRECTIONAL = int(mujoco.mjtLightType.mjLIGHT_DIRECTIONAL)
_TEXROLE_RGB = int(mujoco.mjtTextureRole.mjTEXROLE_RGB)
_TEX_2D = int(mujoco.mjtTexture.mjTEXTURE_2D)
_TEX_CUBE = int(mujoco.mjtTexture.mjTEXTURE_CUBE)
_COLORSPACE_SRGB = int(mujoco.mjtColorSpace.mjCOLORSPACE_SRGB)
_DEFAULT_GEOM_RGBA = np.array([0.5, 0.5, 0.5, 1.0], np.float32)
_MAX_VISIBLE_GROUP = 2  # MuJoCo's viewer shows geom groups 0-2 by default; higher ones are helpers.
_INF = float("inf")

# A camera ray is a tuple (x, y, z) of arrays that broadcast against each other.
Vec3 = tuple[Array, Array, Array]


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Static rendering options (part of the compiled graph)."""

    mode: Literal["scan", "dense"] = "scan"
    """How the geoms of one type are visited: lax.scan (memory O(rays)) or dense [geoms, rays]."""
    shadows: bool = True
    """Cast one shadow ray per pixel towards the first shadow-casting light (about doubles the cost)."""
    specular: bool = True
    """Add Blinn-Phong highlights from the lights' and materials' specular terms."""
    textures: bool = True
    """Sample material textures (2D on planes, boxes and meshes with texture coordinates; cube on boxes)."""
    headlight: bool = True
    """Use the model's headlight (visual/headlight: ambient + diffuse along the viewing direction)."""
    sky_zenith_rgb: tuple[float, float, float] = (0.42, 0.55, 0.72)
    """Background colour straight up."""
    sky_horizon_rgb: tuple[float, float, float] = (0.80, 0.83, 0.86)
    """Background colour at and below the horizon."""
    fallback_light_dir: tuple[float, float, float] = (0.3, -0.4, -1.0)
    """Direction of a white directional light used only when the model has no active light."""
    shadow_bias: float = 1e-3
    """Offset (m) of shadow-ray origins along the surface normal, against self-shadowing."""
    shadow_strength: float = 1.0
    """Fraction of a light's diffuse+specular removed in shadow (1 = hard black-out)."""
    supersample: int = 1
    """Rays per pixel side (2 -> 4 rays per pixel, box-filtered): anti-aliasing at s^2 the cost."""
    mipmaps: bool = True
    """Filter 2D textures trilinearly over a mip-map pyramid, as MuJoCo's OpenGL renderer does
    (else bilinear from the full-size texture: aliasing where a texture is seen small)."""
    unmappable_textures: Literal["error", "mean"] = "error"
    """A texture the renderer cannot map (cube/skybox, or 2D on a round primitive or a mesh without
    texture coordinates): "error" fails at prepare_scene; "mean" paints its mean texel colour."""
    mesh_max_triangles: int = 2000
    """Triangle budget per mesh geom; larger meshes are decimated (vertex clustering) at build time."""
    mesh_tile: int = 8
    """Side (pixels) of the image tiles mesh triangles are binned into."""
    mesh_tile_capacity: int = 128
    """Mesh triangles tested per tile (nearest first); exact while no tile overlaps more."""
    vertex_lighting: bool = True
    """Light meshes at their triangles' corners, and planes and boxes at the corners of the quads
    MuJoCo draws them with, and interpolate (Gouraud, as MuJoCo's fixed-function OpenGL); else
    per pixel (sharper highlights and spot-light edges than MuJoCo draws on large faces)."""
    reflections: bool = True
    """Mirror the scene in the first reflective plane or box top (material reflectance > 0), as
    MuJoCo's renderer does: one reflected ray per pixel, only in scenes that have such a geom."""


@struct.dataclass
class Kinematics:
    """The fields of a data object the renderer reads (mjx.Data has them, as does mujoco.MjData after
    `mj_forward`); a smaller pytree to pass where a whole data object is not at hand."""

    geom_xpos: Array
    geom_xmat: Array
    cam_xpos: Array
    cam_xmat: Array
    xpos: Array
    xmat: Array


def host_kinematics(data) -> Kinematics:
    """float32 copies of `data`'s render fields: draw a mujoco.MjData's state without compiling MJX."""
    return Kinematics(
        **{f.name: np.asarray(getattr(data, f.name), np.float32) for f in dataclasses.fields(Kinematics)}
    )


@struct.dataclass
class RenderScene:
    """Static description of what to draw, built once on the host by `prepare_scene`.

    Arrays are indexed by scene geom index (0..G-1); `geom_ids[i]` is the MuJoCo geom id.
    """

    geom_size: Float[Array, "G 3"]
    """Primitive sizes; infinite plane extents are stored as +inf."""
    geom_rgb: Float[Array, "G 3"]
    geom_specular: Float[Array, " G"]
    geom_shininess: Float[Array, " G"]
    """Blinn-Phong exponent."""
    geom_tex: Int[Array, "G 5"]
    """Per geom texture (address in tex_data or -1, width, height, channels, cube face stride in
    tex_data or -1 for a 2D texture; a cube texture of one square image repeats it: stride 0)."""
    geom_mip: Int[Array, "G M 3"]
    """Per geom 2D texture mip level (address in tex_data, width, height); levels past the last repeat it."""
    geom_mip_levels: Int[Array, " G"]
    """Mip levels per geom (1 without mip-maps, for cube textures and untextured geoms)."""
    tri_uv_density: Float[Array, " F"]
    """Per mesh triangle: sqrt(texture-coordinate area / world area) (1/m), for the mip level."""
    geom_texrepeat: Float[Array, "G 2"]
    """Material texrepeat (planes and boxes): texture repetitions across a face."""
    geom_texsize: Float[Array, "G 3"]
    """Local lengths that map to one face half-width: the geom size, or 1 m with texuniform."""
    geom_cell: Float[Array, "G 3"]
    """Per local axis, the side of the quads MuJoCo tessellates a plane or box face into (its
    per-vertex lighting points); 0: lit per pixel (other primitives, meshes, vertex_lighting off)."""
    geom_cell_origin: Float[Array, "G 3"]
    """Per local axis, a quad edge's coordinate (cells lie at origin + k * cell)."""
    tex_data: UInt8[Array, " T"]
    """Concatenated 2D texture texels of the textured geoms (at least one entry)."""
    tri_vert: Float[Array, "F 3 3"]
    """Mesh triangle corners in their geom's frame (all mesh geoms; one dummy row if none)."""
    tri_normal: Float[Array, "F 3 3"]
    """Per-corner normals in the geom frame."""
    tri_uv: Float[Array, "F 3 2"]
    """Per-corner texture coordinates (zeros where the mesh has none)."""
    tri_geom: Int[Array, " F"]
    """Scene geom index of each triangle."""
    light_pos: Float[Array, "L 3"]
    """Light position in its body's frame."""
    light_dir: Float[Array, "L 3"]
    """Light direction in its body's frame (unit)."""
    light_diffuse: Float[Array, "L 3"]
    light_specular: Float[Array, "L 3"]
    light_cos_cutoff: Float[Array, " L"]
    """cos of the spot cutoff angle (-1 for directional / point lights)."""
    light_exponent: Float[Array, " L"]
    """Spot exponent (0 for directional / point lights)."""
    ambient: Float[Array, " 3"]
    """Total ambient light (lights + headlight)."""
    headlight_diffuse: Float[Array, " 3"]
    headlight_specular: Float[Array, " 3"]
    geom_ids: tuple[int, ...] = struct.field(pytree_node=False)
    """MuJoCo ids of the rendered geoms, in scene order."""
    type_groups: tuple[tuple[int, tuple[int, ...]], ...] = struct.field(pytree_node=False)
    """(mjtGeom type, scene indices) for every geom type present."""
    light_body: tuple[int, ...] = struct.field(pytree_node=False)
    """Body id each light is attached to (0 = world)."""
    light_directional: tuple[bool, ...] = struct.field(pytree_node=False)
    textured: bool = struct.field(pytree_node=False)
    """Whether any rendered geom samples a texture (else the texture lookup is left out)."""
    num_triangles: int = struct.field(pytree_node=False)
    """Mesh triangles after decimation (0: no mesh geom, the mesh pass is left out)."""
    shadow_light: int = struct.field(pytree_node=False)
    """Index of the light that casts shadows, or -1."""
    reflect_geom: int = struct.field(pytree_node=False)
    """Scene index of the mirror (the first opaque plane or box with reflectance > 0), or -1."""
    reflectance: float = struct.field(pytree_node=False)
    """The mirror's material reflectance (0 without one)."""
    camera_names: tuple[str, ...] = struct.field(pytree_node=False)
    camera_fovy: tuple[float, ...] = struct.field(pytree_node=False)
    """Vertical field of view (degrees) per camera id."""
    znear: float = struct.field(pytree_node=False)
    """Near clipping distance along the ray (m)."""
    zfar: float = struct.field(pytree_node=False)
    """Depth reported for background pixels (m)."""
    config: RenderConfig = struct.field(pytree_node=False)

    @property
    def num_geoms(self) -> int:
        return len(self.geom_ids)


def _geom_rgba(model: mujoco.MjModel, geom_id: int) -> np.ndarray:
    """MuJoCo's colour rule: a material's rgba wins unless the geom sets a non-default rgba."""
    rgba = np.asarray(model.geom_rgba[geom_id], np.float32)
    mat = int(model.geom_matid[geom_id])
    if mat >= 0 and np.allclose(rgba, _DEFAULT_GEOM_RGBA):
        rgba = np.asarray(model.mat_rgba[mat], np.float32)
    return rgba


def texture_texels(model: mujoco.MjModel, texid: int) -> np.ndarray:
    """A texture's texels u8[H, W, C] as MuJoCo's renderer samples them: a texture declared sRGB
    (`colorspace="sRGB"`) is uploaded as an sRGB texture, which OpenGL decodes to linear values when it
    samples (the framebuffer stays linear, so the picture gets darker and more contrasted than the
    file); colour channels are decoded here, once, alpha is kept."""
    adr, nchan = int(model.tex_adr[texid]), int(model.tex_nchannel[texid])
    width, height = int(model.tex_width[texid]), int(model.tex_height[texid])
    texels = np.asarray(model.tex_data[adr : adr + width * height * nchan], np.uint8).reshape(
        height, width, nchan
    )
    if int(model.tex_colorspace[texid]) != _COLORSPACE_SRGB:
        return texels
    c = texels[..., : min(nchan, 3)].astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    out = texels.copy()
    out[..., : min(nchan, 3)] = np.round(linear * 255.0).astype(np.uint8)
    return out


def _lighting_grid(model: mujoco.MjModel, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(quad side, a quad edge) per local axis of the grid MuJoCo's renderer draws a plane or box geom
    with, so lit per vertex at: box faces in vis.quality.numquads squares per side; planes in
    squares of 2 * size[2] (padded at the borders), infinite ones in 200 cells past the far plane."""
    size = np.asarray(model.geom_size[g], np.float64)
    cell, origin = np.zeros(3), np.zeros(3)
    if int(model.geom_type[g]) == _BOX:
        nq = max(int(model.vis.quality.numquads), 1)
        return (2.0 * size / nq).astype(np.float32), (-size).astype(np.float32)
    max_grid = 200  # mjMAXPLANEGRID
    zfar = float(model.vis.map.zfar * model.stat.extent)
    mat = int(model.geom_matid[g])
    for k in range(2):
        if size[k] > 0:
            side = max(size[2], size[k] / (max_grid - 2))
            n = int(np.floor(size[k] / max(side, 1e-15)))
            n -= n % 2
            cell[k], origin[k] = 2.0 * side, -size[k] + (size[k] - n * side)
        else:
            repeat = float(model.mat_texrepeat[mat, k]) if mat >= 0 else 0.0
            step = 2.0 / repeat if repeat > 0 else 2.1 * zfar / (max_grid - 2)
            cell[k] = (2.1 * zfar + 2.0 * step) / max_grid
            origin[k] = -cell[k] * (max_grid // 2)
    return cell.astype(np.float32), origin.astype(np.float32)


def _default_geom_ids(model: mujoco.MjModel) -> list[int]:
    ids = []
    for g in range(model.ngeom):
        if int(model.geom_group[g]) > _MAX_VISIBLE_GROUP or _geom_rgba(model, g)[3] <= 0.0:
            continue
        ids.append(g)
    return ids


def prepare_scene(
    model: mujoco.MjModel,
    geom_ids: Sequence[int] | None = None,
    config: RenderConfig = RenderConfig(),
) -> RenderScene:
    """Collect what `render` needs from a host-side MjModel (geoms, materials, lights, cameras).
    geom_ids: MuJoCo geom ids to draw; default: every geom in groups 0-2 with non-zero alpha.
    Raises UserError (a ValueError), naming the geom, for what the renderer cannot draw: a geom
    type other than plane/sphere/capsule/ellipsoid/cylinder/box/mesh (pass `geom_ids` without it,
    or put it in group 3+), or with `config.textures` a material texture it cannot map (a cube or
    skybox texture, a 2D texture on a sphere/capsule/ellipsoid/cylinder or on a mesh without
    texture coordinates).
    """
    if not isinstance(model, mujoco.MjModel):
        raise TypeError(f"prepare_scene needs a host mujoco.MjModel (not {type(model).__name__}).")
    if config.mode not in ("scan", "dense"):
        raise UserError(f"RenderConfig.mode must be 'scan' or 'dense', got {config.mode!r}.")
    if config.supersample < 1:
        raise UserError(f"RenderConfig.supersample must be >= 1, got {config.supersample}.")
    if config.unmappable_textures not in ("error", "mean"):
        raise UserError(
            f"RenderConfig.unmappable_textures must be 'error' or 'mean', got {config.unmappable_textures!r}."
        )
    if config.mesh_max_triangles < 1 or config.mesh_tile < 1 or config.mesh_tile_capacity < 1:
        raise UserError("RenderConfig.mesh_max_triangles, mesh_tile and mesh_tile_capacity must be >= 1.")
    ids = _default_geom_ids(model) if geom_ids is None else [int(g) for g in geom_ids]
    if not ids:
        raise UserError("No geom to render: the model has no visible geom (groups 0-2, alpha > 0).")

    def geom_name(g: int) -> str:
        return f"geom {g} ({mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g)!r})"

    for g in ids:
        if not 0 <= g < model.ngeom:
            raise UserError(f"geom id {g} out of range [0, {model.ngeom}).")
        gtype = int(model.geom_type[g])
        if gtype not in _SUPPORTED_TYPES:
            raise UserError(
                f"{geom_name(g)} has type {_TYPE_NAMES.get(gtype, gtype)}, which the JAX renderer cannot "
                "draw; use primitives or meshes, move it to group 3+, or pass geom_ids without it."
            )

    num = len(ids)
    size = np.zeros((num, 3), np.float32)
    rgb = np.zeros((num, 3), np.float32)
    specular = np.zeros((num,), np.float32)
    shininess = np.zeros((num,), np.float32)
    tex = np.full((num, 5), -1, np.int32)
    texrepeat = np.ones((num, 2), np.float32)
    texsize = np.ones((num, 3), np.float32)
    cell = np.zeros((num, 3), np.float32)
    cell_origin = np.zeros((num, 3), np.float32)
    texels: list[np.ndarray] = []
    tex_offsets: dict[int, int] = {}
    tex_mips: dict[int, list[tuple[int, int, int]]] = {}
    geom_mips: list[list[tuple[int, int, int]]] = [[(0, 1, 1)] for _ in ids]
    num_texels = 0
    tri_vert, tri_normal, tri_uv, tri_geom = [], [], [], []
    for i, g in enumerate(ids):
        size[i] = model.geom_size[g]
        gtype = int(model.geom_type[g])
        if gtype == _PLANE:
            size[i, :2] = np.where(size[i, :2] > 0, size[i, :2], _INF)
        if config.vertex_lighting and gtype in (_PLANE, _BOX):
            cell[i], cell_origin[i] = _lighting_grid(model, g)
        rgb[i] = _geom_rgba(model, g)[:3]
        mat = int(model.geom_matid[g])
        specular[i] = float(model.mat_specular[mat]) if mat >= 0 else 0.5
        shin = float(model.mat_shininess[mat]) if mat >= 0 else 0.5
        shininess[i] = max(shin, 1e-3) * 128.0  # MuJoCo maps shininess in [0, 1] to an exponent of 0-128
        uv = None
        if gtype == _MESH:
            corners, normals, uv = render_mesh.mesh_triangles(model, g, config.mesh_max_triangles)
            tri_vert.append(corners)
            tri_normal.append(normals)
            tri_uv.append(uv if uv is not None else np.zeros((len(corners), 3, 2), np.float32))
            tri_geom.append(np.full((len(corners),), i, np.int32))
        texid = int(model.mat_texid[mat, _TEXROLE_RGB]) if mat >= 0 else -1
        if texid < 0 or not config.textures:
            continue
        kind = int(model.tex_type[texid])
        problem = None
        if kind == _TEX_CUBE and gtype != _BOX:
            problem = f"a cube texture on a {_TYPE_NAMES[gtype]} geom (boxes are drawn)"
        elif kind not in (_TEX_2D, _TEX_CUBE):
            problem = f"its material uses a skybox texture (mjtTexture {kind})"
        elif gtype not in (*_TEXGEN_TYPES, _MESH):
            problem = f"a 2D texture on a {_TYPE_NAMES[gtype]} geom (planes, boxes and meshes are drawn)"
        elif gtype == _MESH and uv is None:
            problem = "a 2D texture on a mesh without texture coordinates"
        if problem is not None and config.unmappable_textures == "mean":
            nchan = int(model.tex_nchannel[texid])
            texel_rows = texture_texels(model, texid).reshape(-1, nchan).astype(np.float32)
            mean = texel_rows.mean(0)[np.minimum(np.arange(3), nchan - 1)] / 255.0
            rgb[i] = np.asarray(model.mat_rgba[mat, :3], np.float32) * mean
            continue
        if problem is not None:
            raise UserError(
                f"{geom_name(g)}: {problem}, which the JAX renderer cannot map; change the material, or "
                "use RenderConfig(textures=False) or RenderConfig(unmappable_textures='mean')."
            )
        width, height, nchan = (
            int(model.tex_width[texid]),
            int(model.tex_height[texid]),
            int(model.tex_nchannel[texid]),
        )
        if texid not in tex_offsets:
            tex_offsets[texid] = num_texels
            tex_mips[texid] = []
            levels = [texture_texels(model, texid)]
            if kind == _TEX_2D and config.mipmaps:
                levels = render_mesh.mip_chain(levels[0])
            for level in levels:
                texels.append(level.reshape(-1))
                tex_mips[texid].append((num_texels, level.shape[1], level.shape[0]))
                num_texels += level.size
        geom_mips[i] = tex_mips[texid]
        stride = -1 if kind == _TEX_2D else (0 if height == width else width * width * nchan)
        tex[i] = (tex_offsets[texid], width, height, nchan, stride)
        # texrepeat repetitions across a face (2 size), or per 2 m with texuniform (and on infinite
        # planes), as MuJoCo's OpenGL renderer draws them
        texrepeat[i] = np.asarray(model.mat_texrepeat[mat], np.float32)
        if not bool(model.mat_texuniform[mat]):
            texsize[i] = np.where(np.isfinite(size[i]) & (size[i] > 0), size[i], 1.0)
        # A texture is multiplied by the material colour; the default geom grey would darken it.
        rgb[i] = np.asarray(model.mat_rgba[mat, :3], np.float32)
    tex_data = np.concatenate(texels) if texels else np.zeros((1,), np.uint8)
    max_levels = max(len(m) for m in geom_mips)
    mip = np.asarray([m + [m[-1]] * (max_levels - len(m)) for m in geom_mips], np.int32)  # [G, M, 3]
    mip_levels = np.asarray([len(m) for m in geom_mips], np.int32)
    num_triangles = int(sum(len(t) for t in tri_vert))
    if num_triangles:
        tri_vert_a, tri_normal_a = np.concatenate(tri_vert), np.concatenate(tri_normal)
        tri_uv_a, tri_geom_a = np.concatenate(tri_uv), np.concatenate(tri_geom)
    else:
        tri_vert_a, tri_normal_a = np.zeros((1, 3, 3), np.float32), np.zeros((1, 3, 3), np.float32)
        tri_uv_a, tri_geom_a = np.zeros((1, 3, 2), np.float32), np.zeros((1,), np.int32)
    world_area = np.linalg.norm(
        np.cross(tri_vert_a[:, 1] - tri_vert_a[:, 0], tri_vert_a[:, 2] - tri_vert_a[:, 0]), axis=-1
    )
    duv1, duv2 = tri_uv_a[:, 1] - tri_uv_a[:, 0], tri_uv_a[:, 2] - tri_uv_a[:, 0]
    uv_area = np.abs(duv1[:, 0] * duv2[:, 1] - duv1[:, 1] * duv2[:, 0])
    uv_density = np.sqrt(uv_area / np.maximum(world_area, 1e-12)).astype(np.float32)

    groups = []
    types = np.asarray([int(model.geom_type[g]) for g in ids])
    for gtype in _PRIMITIVE_TYPES:  # meshes are drawn by render_mesh, not by type group
        members = tuple(int(i) for i in np.nonzero(types == gtype)[0])
        if members:
            groups.append((gtype, members))

    active = [i for i in range(model.nlight) if bool(model.light_active[i])]
    light_pos = np.asarray(model.light_pos[active], np.float32).reshape(-1, 3)
    light_dir = np.asarray(model.light_dir[active], np.float32).reshape(-1, 3)
    light_diffuse = np.asarray(model.light_diffuse[active], np.float32).reshape(-1, 3)
    light_specular = np.asarray(model.light_specular[active], np.float32).reshape(-1, 3)
    light_type = [int(model.light_type[i]) for i in active]
    light_body = tuple(int(model.light_bodyid[i]) for i in active)
    cutoff = np.asarray(model.light_cutoff[active], np.float32).reshape(-1)
    exponent = np.asarray(model.light_exponent[active], np.float32).reshape(-1)
    ambient = np.asarray(model.light_ambient[active], np.float32).reshape(-1, 3).sum(0)
    castshadow = [bool(model.light_castshadow[i]) for i in active]
    if not active:  # a fixed white sun so that an unlit model still renders shaded
        light_pos = np.zeros((1, 3), np.float32)
        light_dir = np.asarray([config.fallback_light_dir], np.float32)
        light_diffuse = np.full((1, 3), 0.6, np.float32)
        light_specular = np.full((1, 3), 0.2, np.float32)
        light_type = [_LIGHT_DIRECTIONAL]
        light_body = (0,)
        cutoff = np.zeros((1,), np.float32)
        exponent = np.zeros((1,), np.float32)
        castshadow = [True]
    light_dir = light_dir / np.maximum(np.linalg.norm(light_dir, axis=1, keepdims=True), 1e-9)
    is_spot = np.asarray([t == _LIGHT_SPOT for t in light_type])
    cos_cutoff = np.where(is_spot, np.cos(np.deg2rad(cutoff)), -1.0).astype(np.float32)
    exponent = np.where(is_spot, exponent, 0.0).astype(np.float32)
    head = model.vis.headlight
    use_head = config.headlight and bool(head.active)
    if use_head:
        ambient = ambient + np.asarray(head.ambient, np.float32)
    shadow_light = next((i for i, c in enumerate(castshadow) if c), -1) if config.shadows else -1
    # MuJoCo's renderer mirrors the scene in one geom only: the first opaque plane or box whose
    # material has reflectance (mjr_render's isReflective); reflective meshes etc. are drawn plain.
    reflect_geom, reflectance = -1, 0.0
    if config.reflections:
        for i, g in enumerate(ids):
            mat = int(model.geom_matid[g])
            refl = float(model.mat_reflectance[mat]) if mat >= 0 else 0.0
            if int(model.geom_type[g]) in (_PLANE, _BOX) and refl > 0 and _geom_rgba(model, g)[3] >= 1.0:
                reflect_geom, reflectance = i, refl
                break

    camera_names = tuple(
        mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, c) or f"camera{c}" for c in range(model.ncam)
    )
    f32 = jnp.float32
    return RenderScene(
        geom_size=jnp.asarray(size, f32),
        geom_rgb=jnp.asarray(rgb, f32),
        geom_specular=jnp.asarray(specular, f32),
        geom_shininess=jnp.asarray(shininess, f32),
        geom_tex=jnp.asarray(tex),
        geom_mip=jnp.asarray(mip),
        geom_mip_levels=jnp.asarray(mip_levels),
        tri_uv_density=jnp.asarray(uv_density, f32),
        geom_texrepeat=jnp.asarray(texrepeat, f32),
        geom_texsize=jnp.asarray(texsize, f32),
        geom_cell=jnp.asarray(cell, f32),
        geom_cell_origin=jnp.asarray(cell_origin, f32),
        tex_data=jnp.asarray(tex_data),
        tri_vert=jnp.asarray(tri_vert_a, f32),
        tri_normal=jnp.asarray(tri_normal_a, f32),
        tri_uv=jnp.asarray(tri_uv_a, f32),
        tri_geom=jnp.asarray(tri_geom_a, jnp.int32),
        light_pos=jnp.asarray(light_pos, f32),
        light_dir=jnp.asarray(light_dir, f32),
        light_diffuse=jnp.asarray(light_diffuse, f32),
        light_specular=jnp.asarray(light_specular, f32),
        light_cos_cutoff=jnp.asarray(cos_cutoff, f32),
        light_exponent=jnp.asarray(exponent, f32),
        ambient=jnp.asarray(ambient, f32),
        headlight_diffuse=jnp.asarray(head.diffuse if use_head else np.zeros(3), f32),
        headlight_specular=jnp.asarray(head.specular if use_head else np.zeros(3), f32),
        geom_ids=tuple(ids),
        type_groups=tuple(groups),
        light_body=light_body,
        light_directional=tuple(t == _LIGHT_DIRECTIONAL for t in light_type),
        textured=bool(texels),
        num_triangles=num_triangles,
        shadow_light=shadow_light,
        reflect_geom=reflect_geom,
        reflectance=reflectance,
        camera_names=camera_names,
        camera_fovy=tuple(float(f) for f in model.cam_fovy),
        znear=float(model.vis.map.znear * model.stat.extent),
        zfar=float(model.vis.map.zfar * model.stat.extent),
        config=config,
    )


# ----------------------------------------------------------------------------------------------
# Ray-primitive intersections in the geom's local frame. Inputs broadcast (geoms x rays or rays);
# each returns the ray parameter of the first hit beyond t_min, or +inf on a miss. Ray directions
# are unit length (rotations keep them so), except for the ellipsoid's internal rescaling.


def _quadratic_entry(b, c, a, t_min):
    """Smallest root > t_min of a t^2 + 2 b t + c = 0, or inf."""
    disc = b * b - a * c
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    inv_a = 1.0 / a
    t_in = (-b - sq) * inv_a
    t_out = (-b + sq) * inv_a
    t = jnp.where(t_in > t_min, t_in, t_out)
    return jnp.where((disc >= 0.0) & (t > t_min), t, _INF)


def _hit_sphere(o: Vec3, d: Vec3, size, t_min):
    ox, oy, oz = o
    dx, dy, dz = d
    r = size[0]
    return _quadratic_entry(ox * dx + oy * dy + oz * dz, ox * ox + oy * oy + oz * oz - r * r, 1.0, t_min)


def _hit_ellipsoid(o: Vec3, d: Vec3, size, t_min):
    # Scale space so the ellipsoid becomes the unit sphere; t is unchanged by the scaling.
    ix, iy, iz = 1.0 / size[0], 1.0 / size[1], 1.0 / size[2]
    ox, oy, oz = o[0] * ix, o[1] * iy, o[2] * iz
    dx, dy, dz = d[0] * ix, d[1] * iy, d[2] * iz
    a = dx * dx + dy * dy + dz * dz
    return _quadratic_entry(ox * dx + oy * dy + oz * dz, ox * ox + oy * oy + oz * oz - 1.0, a, t_min)


def _safe(x):
    """Keep |x| >= 1e-12 (with its sign) so divisions stay finite."""
    return jnp.where(jnp.abs(x) < 1e-12, jnp.where(x < 0, -1e-12, 1e-12), x)


def _hit_box(o: Vec3, d: Vec3, size, t_min):
    t_near, t_far = -_INF, _INF
    for k in range(3):
        inv = 1.0 / _safe(d[k])
        t1 = (-size[k] - o[k]) * inv
        t2 = (size[k] - o[k]) * inv
        t_near = jnp.maximum(t_near, jnp.minimum(t1, t2))
        t_far = jnp.minimum(t_far, jnp.maximum(t1, t2))
    t = jnp.where(t_near > t_min, t_near, t_far)
    return jnp.where((t_near <= t_far) & (t > t_min), t, _INF)


def _side_entry(o: Vec3, d: Vec3, r):
    """Entry into the infinite z-cylinder of radius r: (disc, t, z at t)."""
    ox, oy, oz = o
    dx, dy, dz = d
    a = jnp.maximum(dx * dx + dy * dy, 1e-12)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    t = (-b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a
    return disc, t, oz + t * dz


def _hit_cylinder(o: Vec3, d: Vec3, size, t_min):
    r, h = size[0], size[1]
    disc, t_side, z_side = _side_entry(o, d, r)
    side = jnp.where((disc >= 0.0) & (t_side > t_min) & (jnp.abs(z_side) <= h), t_side, _INF)
    dz = _safe(d[2])
    t_cap = (jnp.where(dz < 0, h, -h) - o[2]) / dz  # the cap facing the ray
    xc = o[0] + t_cap * d[0]
    yc = o[1] + t_cap * d[1]
    cap = jnp.where((t_cap > t_min) & (xc * xc + yc * yc <= r * r), t_cap, _INF)
    return jnp.minimum(side, cap)


def _hit_capsule(o: Vec3, d: Vec3, size, t_min):
    # A ray entering the infinite cylinder beyond the segment's end must hit that end's sphere
    # first (the sphere fills the cylinder's cross-section there), so one sphere test suffices.
    r, h = size[0], size[1]
    disc, t_side, z_side = _side_entry(o, d, r)
    on_side = jnp.abs(z_side) <= h
    cz = jnp.where(z_side > 0, h, -h)
    ox, oy, oz = o[0], o[1], o[2] - cz
    dx, dy, dz = d
    t_cap = _quadratic_entry(ox * dx + oy * dy + oz * dz, ox * ox + oy * oy + oz * oz - r * r, 1.0, t_min)
    t_body = jnp.where(t_side > t_min, t_side, _INF)
    return jnp.where(disc >= 0.0, jnp.where(on_side, t_body, t_cap), _INF)


def _hit_plane(o: Vec3, d: Vec3, size, t_min):
    # One-sided like a MuJoCo plane: visible from its +z side only.
    dz = _safe(d[2])
    t = -o[2] / dz
    x = o[0] + t * d[0]
    y = o[1] + t * d[1]
    ok = (o[2] > 0) & (d[2] < 0) & (t > t_min) & (jnp.abs(x) <= size[0]) & (jnp.abs(y) <= size[1])
    return jnp.where(ok, t, _INF)


_HIT_FNS = {
    _PLANE: _hit_plane,
    _SPHERE: _hit_sphere,
    _CAPSULE: _hit_capsule,
    _ELLIPSOID: _hit_ellipsoid,
    _CYLINDER: _hit_cylinder,
    _BOX: _hit_box,
}


def _to_local(pos, mat, o: Vec3, d: Vec3, rotate: bool) -> tuple[Vec3, Vec3]:
    """World ray -> geom frame. pos [..., 3] and mat [..., 3, 3] broadcast against the ray parts."""
    rel = (o[0] - pos[..., 0], o[1] - pos[..., 1], o[2] - pos[..., 2])
    if not rotate:  # spheres are rotation invariant
        return rel, d

    def rot_t(v):  # mat^T v, component-wise so XLA fuses it into the intersection kernel
        return tuple(mat[..., 0, i] * v[0] + mat[..., 1, i] * v[1] + mat[..., 2, i] * v[2] for i in range(3))

    return rot_t(rel), rot_t(d)


def _nearest_hit(scene: RenderScene, geom_xpos, geom_xmat, o: Vec3, d: Vec3, t_min, with_index: bool):
    """Nearest geom along each ray: (t f32[R] (inf on miss), scene geom index i32[R] (-1 on miss)).

    o and d are tuples of arrays broadcastable to [R]; geom_xpos/geom_xmat hold scene geoms only.
    """
    shape = jnp.broadcast_shapes(*(x.shape for x in (*o, *d)))
    t_best = jnp.full(shape, _INF, jnp.float32)
    i_best = jnp.full(shape, -1, jnp.int32)
    mode = scene.config.mode
    for gtype, members in scene.type_groups:
        hit = _HIT_FNS[gtype]
        rotate = gtype != _SPHERE
        idx = np.asarray(members)
        pos, mat, size = geom_xpos[idx], geom_xmat[idx], scene.geom_size[idx]
        if mode == "dense":
            ex = (slice(None),) + (None,) * len(shape)  # [G] -> [G, 1, ...] against the rays
            lo, ld = _to_local(pos[ex], mat[ex], o, d, rotate)
            t = hit(lo, ld, tuple(size[(slice(None), k, *ex[1:])] for k in range(3)), t_min)
            t_grp = jnp.min(t, axis=0)
            closer = t_grp < t_best
            t_best = jnp.where(closer, t_grp, t_best)
            if with_index:
                i_grp = jnp.asarray(idx, jnp.int32)[jnp.argmin(t, axis=0)]
                i_best = jnp.where(closer, i_grp, i_best)
        else:  # scan

            def body(carry, geom, hit=hit, rotate=rotate):
                t_run, i_run = carry
                g_pos, g_mat, g_size, g_idx = geom
                lo, ld = _to_local(g_pos, g_mat, o, d, rotate)
                t = hit(lo, ld, g_size, t_min)
                closer = t < t_run
                return (jnp.where(closer, t, t_run), jnp.where(closer, g_idx, i_run)), None

            (t_best, i_best), _ = jax.lax.scan(
                body, (t_best, i_best), (pos, mat, size, jnp.asarray(idx, jnp.int32))
            )
    return t_best, i_best


# ----------------------------------------------------------------------------------------------
# Shading


def _local_normal(gtype: int, q: Vec3, size) -> Vec3:
    """Outward normal (not normalised) at local point q on a primitive of the given type."""
    qx, qy, qz = q
    zero = jnp.zeros_like(qx)
    one = jnp.ones_like(qx)
    if gtype == _PLANE:
        return zero, zero, one
    if gtype == _SPHERE:
        return qx, qy, qz
    if gtype == _ELLIPSOID:
        return qx / size[0] ** 2, qy / size[1] ** 2, qz / size[2] ** 2
    if gtype == _CAPSULE:
        return qx, qy, qz - jnp.clip(qz, -size[1], size[1])
    if gtype == _CYLINDER:
        on_cap = jnp.abs(qz) / size[1] >= jnp.sqrt(qx * qx + qy * qy) / size[0]
        return jnp.where(on_cap, 0.0, qx), jnp.where(on_cap, 0.0, qy), jnp.where(on_cap, jnp.sign(qz), 0.0)
    # box: the face whose slab the point is deepest into, relative to the half-size
    ax, ay, az = jnp.abs(qx) / size[0], jnp.abs(qy) / size[1], jnp.abs(qz) / size[2]
    use_x = (ax >= ay) & (ax >= az)
    use_y = ~use_x & (ay >= az)
    use_z = ~use_x & ~use_y
    return (
        jnp.where(use_x, jnp.sign(qx), 0.0),
        jnp.where(use_y, jnp.sign(qy), 0.0),
        jnp.where(use_z, jnp.sign(qz), 0.0),
    )


def _normalize(v: Vec3) -> Vec3:
    inv = jax.lax.rsqrt(jnp.maximum(v[0] * v[0] + v[1] * v[1] + v[2] * v[2], 1e-20))
    return v[0] * inv, v[1] * inv, v[2] * inv


def _dot(a: Vec3, b: Vec3):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _surface(
    scene: RenderScene,
    geom_xpos,
    geom_xmat,
    hit_idx,
    point: Vec3,
    ray_d: Vec3,
    mesh_hit,
    t_hit,
    pixel_angle: float,
):
    """World normal (facing the ray), base colour, texel colour (ones if untextured) per hit, and the
    points MuJoCo's renderer would light it at: 4 (world point, world normal, weight) whose weights sum
    to 1 (a mesh triangle's corners, a plane or box quad's corners; else the hit itself).

    t_hit: distance along the ray; pixel_angle: a pixel's angular size (rad), for the mip level.

    mesh_hit: None without meshes, else (triangle i32[R] (-1 where a primitive or nothing was hit),
    barycentrics u, v f32[R]).
    """
    safe_idx = jnp.maximum(hit_idx, 0)
    pos = geom_xpos[safe_idx]  # [R, 3]
    mat = geom_xmat[safe_idx]  # [R, 3, 3]
    size = scene.geom_size[safe_idx]
    size = (size[..., 0], size[..., 1], size[..., 2])
    rel = (point[0] - pos[..., 0], point[1] - pos[..., 1], point[2] - pos[..., 2])
    q = tuple(mat[..., 0, i] * rel[0] + mat[..., 1, i] * rel[1] + mat[..., 2, i] * rel[2] for i in range(3))
    gtype_of = np.full((scene.num_geoms,), _MESH, np.int32)
    for gtype, members in scene.type_groups:
        gtype_of[list(members)] = gtype
    gtype = jnp.asarray(gtype_of)[safe_idx]
    n_local = (jnp.zeros_like(q[0]), jnp.zeros_like(q[0]), jnp.ones_like(q[0]))
    for t, _ in scene.type_groups:
        n_t = _local_normal(t, q, size)
        is_t = gtype == t
        n_local = tuple(jnp.where(is_t, a, b) for a, b in zip(n_t, n_local, strict=True))
    if mesh_hit is not None:
        tri, bu, bv = mesh_hit
        on_mesh = tri >= 0
        safe_tri = jnp.maximum(tri, 0)
        w = jnp.stack([1.0 - bu - bv, bu, bv], axis=-1)[..., None]  # [R, 3, 1]
        n_tri = jnp.sum(scene.tri_normal[safe_tri] * w, axis=-2)  # interpolated corner normals
        n_local = tuple(jnp.where(on_mesh, n_tri[..., k], n_local[k]) for k in range(3))
    n = _normalize(
        tuple(
            mat[..., i, 0] * n_local[0] + mat[..., i, 1] * n_local[1] + mat[..., i, 2] * n_local[2]
            for i in range(3)
        )
    )
    cos_view = _dot(n, ray_d)
    facing = jnp.where(cos_view > 0, -1.0, 1.0)
    n = (n[0] * facing, n[1] * facing, n[2] * facing)
    corners = _lighting_corners(scene, pos, mat, safe_idx, q, n_local, mesh_hit, point, n, facing)

    rgb = scene.geom_rgb[safe_idx]  # [R, 3]
    texel = jnp.ones_like(rgb)
    if scene.textured:
        tex = scene.geom_tex[safe_idx]
        repeat = scene.geom_texrepeat[safe_idx]
        tsize = scene.geom_texsize[safe_idx]
        adr, width, height, nchan = tex[..., 0], tex[..., 1], tex[..., 2], tex[..., 3]
        # Planes and boxes as MuJoCo's OpenGL renderer maps them (fitted to mujoco.Renderer's images,
        # see tests/test_render_mesh.py): per face, its first in-plane axis (x, else y) runs along s
        # and its second (y, else z) against t, texrepeat times across the face.
        unit = tuple(q[k] / tsize[..., k] for k in range(3))
        x_face = jnp.abs(n_local[0]) > 0.5
        y_face = jnp.abs(n_local[1]) > 0.5
        a = jnp.where(x_face, unit[1], unit[0])
        b = jnp.where(x_face | y_face, unit[2], unit[1])
        s = 0.5 * repeat[..., 0] * (a + 1.0)
        t = 0.5 * repeat[..., 1] * (1.0 - b)
        # texture coordinates per metre on the surface, for the mip level (GL's LOD: log2 of the
        # texels a pixel spans, along the foreshortened direction)
        size_a = jnp.where(x_face, tsize[..., 1], tsize[..., 0])
        size_b = jnp.where(x_face | y_face, tsize[..., 2], tsize[..., 1])
        per_m = jnp.maximum(0.5 * repeat[..., 0] / size_a, 0.5 * repeat[..., 1] / size_b)
        if mesh_hit is not None:
            uv = jnp.sum(scene.tri_uv[safe_tri] * w, axis=-2)
            s = jnp.where(on_mesh, uv[..., 0], s)
            t = jnp.where(on_mesh, uv[..., 1], t)
            per_m = jnp.where(on_mesh, scene.tri_uv_density[safe_tri], per_m)
        levels = scene.geom_mip_levels[safe_idx]
        footprint = t_hit * pixel_angle / jnp.maximum(jnp.abs(cos_view), 0.05)
        texels_per_m = per_m * jnp.sqrt((width * height).astype(jnp.float32))
        lod = jnp.log2(jnp.maximum(texels_per_m * footprint, 1e-6))
        lod = jnp.clip(lod, 0.0, (levels - 1).astype(jnp.float32))
        lod0 = jnp.floor(lod).astype(jnp.int32)
        lod1 = jnp.minimum(lod0 + 1, levels - 1)
        mips = scene.geom_mip[safe_idx]  # [R, M, 3]

        def level(k):
            m = jnp.take_along_axis(mips, k[..., None, None], axis=-2)[..., 0, :]
            return render_mesh.sample_texture(scene.tex_data, m[..., 0], m[..., 1], m[..., 2], nchan, s, t)

        frac = (lod - lod0)[..., None]
        sampled = level(lod0) * (1.0 - frac) + level(lod1) * frac
        if any(t_ == _BOX for t_, _ in scene.type_groups):
            # Cube textures on boxes: OpenGL's cube-map lookup along the box-frame direction of the
            # point (in half-sizes, or in metres with texuniform), as MuJoCo's renderer generates it.
            face, s_c, t_c = render_mesh.cube_face_coords(unit)
            stride = tex[..., 4]
            clamp = 0.5 / jnp.maximum(width, 1)
            s_c, t_c = (jnp.clip(c, clamp, 1.0 - clamp) for c in (s_c, t_c))
            adr_c = adr + face * jnp.maximum(stride, 0)
            cube = render_mesh.sample_texture(scene.tex_data, adr_c, width, width, nchan, s_c, t_c)
            sampled = jnp.where((stride >= 0)[..., None], cube, sampled)
        texel = jnp.where((adr >= 0)[..., None], sampled, texel)
    return n, rgb, texel, corners


def _lighting_corners(scene: RenderScene, pos, mat, safe_idx, q: Vec3, n_local: Vec3, mesh_hit, point: Vec3,
                      n: Vec3, facing):  # fmt: skip
    """The 4 (world point, world normal, weight) per hit of `_surface`: where fixed-function OpenGL
    evaluates the lighting that it interpolates over a triangle or quad."""
    if not scene.config.vertex_lighting:
        return [(point, n, jnp.ones_like(q[0]))]
    cell = scene.geom_cell[safe_idx]
    origin = scene.geom_cell_origin[safe_idx]
    size = scene.geom_size[safe_idx]
    lo, hi, frac, snap = [], [], [], []
    for k in range(3):
        c = cell[..., k]
        snap_k = (c > 0) & (jnp.abs(n_local[k]) < 0.5)  # quad edges along the face's in-plane axes
        c = jnp.where(snap_k, c, 1.0)
        lo_k = origin[..., k] + jnp.floor((q[k] - origin[..., k]) / c) * c
        lo_k = jnp.clip(lo_k, -size[..., k], size[..., k])
        hi_k = jnp.clip(lo_k + c, -size[..., k], size[..., k])
        f_k = jnp.clip((q[k] - lo_k) / jnp.maximum(hi_k - lo_k, 1e-9), 0.0, 1.0)
        lo.append(jnp.where(snap_k, lo_k, q[k]))
        hi.append(jnp.where(snap_k, hi_k, q[k]))
        frac.append(jnp.where(snap_k, f_k, 0.0))
        snap.append(snap_k)
    first = [snap[0], snap[1] & ~snap[0], snap[2] & ~snap[0] & ~snap[1]]  # per axis: the first snapped one
    second = [jnp.zeros_like(snap[0]), snap[1] & snap[0], snap[2] & (snap[0] | snap[1])]
    f1 = sum(jnp.where(first[k], frac[k], 0.0) for k in range(3))
    f2 = sum(jnp.where(second[k], frac[k], 0.0) for k in range(3))
    corners = []
    for i, j in ((0, 0), (1, 0), (0, 1), (1, 1)):
        local = tuple(
            jnp.where(first[k], hi[k] if i else lo[k], jnp.where(second[k], hi[k] if j else lo[k], q[k]))
            for k in range(3)
        )
        world = tuple(pos[..., a] + sum(mat[..., a, b] * local[b] for b in range(3)) for a in range(3))
        weight = (f1 if i else 1.0 - f1) * (f2 if j else 1.0 - f2)
        corners.append((world, n, weight))
    if mesh_hit is not None:
        tri, bu, bv = mesh_hit
        on_mesh = tri >= 0
        safe_tri = jnp.maximum(tri, 0)
        vert, normal = scene.tri_vert[safe_tri], scene.tri_normal[safe_tri]  # [R, 3, 3]
        weights = (1.0 - bu - bv, bu, bv, jnp.zeros_like(bu))
        mesh_corners = []
        for k in range(3):
            world = tuple(pos[..., a] + jnp.sum(mat[..., a, :] * vert[:, k], -1) for a in range(3))
            nk = _normalize(tuple(jnp.sum(mat[..., a, :] * normal[:, k], -1) * facing for a in range(3)))
            mesh_corners.append((world, nk))
        mesh_corners.append(mesh_corners[0])
        corners = [
            (
                tuple(jnp.where(on_mesh, a, b) for a, b in zip(mp, p, strict=True)),
                tuple(jnp.where(on_mesh, a, b) for a, b in zip(mn, pn, strict=True)),
                jnp.where(on_mesh, mw, w),
            )
            for (mp, mn), (p, pn, w), mw in zip(mesh_corners, corners, weights, strict=True)
        ]
    return corners


def _light_world(scene: RenderScene, data) -> tuple[Array, Array]:
    """Light positions and directions in world coordinates, f32[L, 3] each."""
    body = np.asarray(scene.light_body)
    if not body.any():
        return scene.light_pos, scene.light_dir
    xpos = jnp.asarray(data.xpos, jnp.float32)[body]
    xmat = jnp.asarray(data.xmat, jnp.float32)[body].reshape(-1, 3, 3)
    pos = xpos + jnp.einsum("lij,lj->li", xmat, scene.light_pos)
    direction = jnp.einsum("lij,lj->li", xmat, scene.light_dir)
    return pos, direction


def _shade(
    scene: RenderScene,
    data,
    geom_xpos,
    geom_xmat,
    origin: Vec3,
    ray_d: Vec3,
    t,
    hit_idx,
    mesh_hit,
    cam_z: Vec3,
    pixel_angle: float,
    reflected: bool = False,
):
    """Colour f32[R, 3] of each ray's nearest hit (or the sky); mesh_hit as in `_surface`.

    cam_z: the camera's +z axis in world coordinates (towards the viewer), where MuJoCo's headlight
    shines from (a directional light along the viewing axis, the same for every pixel).
    pixel_angle: a pixel's angular size (rad), for texture mip levels.
    reflected: shade rays of the mirror pass as MuJoCo draws the mirrored scene: materials' ambient
    and diffuse colour scaled by the reflectance (specular kept), no shadows, black where nothing is hit.
    """
    cfg = scene.config
    hit = hit_idx >= 0
    t_safe = jnp.where(hit, t, 0.0)
    point = tuple(origin[k] + t_safe * ray_d[k] for k in range(3))
    n, base, texel, corners = _surface(
        scene, geom_xpos, geom_xmat, hit_idx, point, ray_d, mesh_hit, t_safe, pixel_angle
    )
    light_pos, light_dir = _light_world(scene, data)
    spec_k = scene.geom_specular[jnp.maximum(hit_idx, 0)][..., None]
    shin = scene.geom_shininess[jnp.maximum(hit_idx, 0)]
    if reflected:
        base = base * scene.reflectance

    def to_light(li: int, p: Vec3):
        """(unit direction to light li, its distance, spot-cone scale) from points p."""
        if scene.light_directional[li]:
            # Shape [1]: the same direction for every ray, so the shadow pass rotates it per geom only.
            return tuple(-light_dir[li, k][None] for k in range(3)), jnp.full(t.shape, _INF), 1.0
        delta = tuple(light_pos[li, k] - p[k] for k in range(3))
        # Spot cone (cos_cutoff = -1 and exponent 0 make this 1 for point lights).
        direction = _normalize(delta)
        cos_angle = -_dot(direction, tuple(light_dir[li, k] for k in range(3)))
        scale = jnp.where(
            cos_angle >= scene.light_cos_cutoff[li],
            jnp.maximum(cos_angle, 0.0) ** scene.light_exponent[li],
            0.0,
        )
        return direction, jnp.sqrt(_dot(delta, delta)), scale

    # Shadows per pixel (a light's visibility from the hit point), the rest at the lighting corners.
    shadowed = {}
    if scene.shadow_light >= 0 and not reflected:
        li = scene.shadow_light
        direction, dist, _ = to_light(li, point)
        shadow_o = tuple(point[k] + n[k] * cfg.shadow_bias for k in range(3))
        t_block, _ = _nearest_hit(scene, geom_xpos, geom_xmat, shadow_o, direction, 0.0, with_index=False)
        shadowed[li] = jnp.where(t_block < dist, 1.0 - cfg.shadow_strength, 1.0)

    def lit_at(p: Vec3, nn: Vec3):
        """Lit colour of the hits' material at points p, normals nn: ambient + diffuse + specular,
        saturated at 1 (fixed-function OpenGL's single-colour model, which MuJoCo's renderer keeps)."""
        view = _normalize(tuple(origin[k] - p[k] for k in range(3)))  # a local viewer, as MuJoCo's GL
        diffuse = jnp.broadcast_to(scene.ambient, base.shape)
        spec = jnp.zeros_like(base)

        def add(diffuse, spec, direction: Vec3, colour_d, colour_s, scale):
            n_dot_l = jnp.maximum(_dot(nn, direction), 0.0) * scale
            diffuse = diffuse + n_dot_l[..., None] * colour_d
            if cfg.specular:
                half = _normalize(tuple(a + b for a, b in zip(direction, view, strict=True)))
                highlight = jnp.where(n_dot_l > 0, jnp.maximum(_dot(nn, half), 0.0) ** shin, 0.0) * scale
                spec = spec + highlight[..., None] * colour_s * spec_k
            return diffuse, spec

        for li in range(len(scene.light_directional)):
            direction, _, scale = to_light(li, p)
            scale = scale * shadowed.get(li, 1.0)
            diffuse, spec = add(
                diffuse, spec, direction, scene.light_diffuse[li], scene.light_specular[li], scale
            )
        diffuse, spec = add(diffuse, spec, cam_z, scene.headlight_diffuse, scene.headlight_specular, 1.0)
        return jnp.minimum(base * diffuse + spec, 1.0)

    # As fixed-function OpenGL (MuJoCo): the lit colour, highlights included, saturates per vertex,
    # is interpolated, and the texture modulates it (no separate specular colour).
    primary = sum(w[..., None] * lit_at(p, nn) for p, nn, w in corners)
    colour = primary * texel
    if reflected:
        return jnp.where(hit[..., None], colour, 0.0)
    sky_w = jnp.clip(ray_d[2], 0.0, 1.0)[..., None]
    sky = (1.0 - sky_w) * jnp.asarray(cfg.sky_horizon_rgb) + sky_w * jnp.asarray(cfg.sky_zenith_rgb)
    return jnp.where(hit[..., None], colour, sky)


# ----------------------------------------------------------------------------------------------
# Cameras and entry points


def _camera_ids(scene: RenderScene, cameras: Sequence[int | str] | int | str) -> tuple[int, ...]:
    if isinstance(cameras, int | str):
        cameras = (cameras,)
    ids = []
    for cam in cameras:
        if isinstance(cam, str):
            if cam not in scene.camera_names:
                raise ValueError(f"Unknown camera {cam!r}; the model has cameras {scene.camera_names}.")
            ids.append(scene.camera_names.index(cam))
        else:
            if not 0 <= int(cam) < len(scene.camera_names):
                raise ValueError(
                    f"Camera id {cam} out of range; the model has {len(scene.camera_names)} cameras."
                )
            ids.append(int(cam))
    if not ids:
        raise ValueError("Pass at least one camera (name or id).")
    return tuple(ids)


def _camera_rays(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Unit ray directions f32[H*W, 3] in the camera frame (looking along -z, +y up)."""
    tan_half = math.tan(math.radians(fovy_deg) / 2.0)
    v = (1.0 - 2.0 * (np.arange(height) + 0.5) / height) * tan_half
    u = (2.0 * (np.arange(width) + 0.5) / width - 1.0) * tan_half * (width / height)
    uu, vv = np.meshgrid(u, v)  # [H, W]
    dirs = np.stack([uu, vv, -np.ones_like(uu)], axis=-1).reshape(-1, 3)
    return (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).astype(np.float32)


def _trace(scene: RenderScene, data, cameras, height: int, width: int):
    """(colour f32[C, H*W, 3], z-depth f32[C, H*W], scene geom index i32[C, H*W]) per camera."""
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be positive, got {height}x{width}.")
    cam_ids = _camera_ids(scene, cameras)
    geom_idx = np.asarray(scene.geom_ids)
    geom_xpos = jnp.asarray(data.geom_xpos, jnp.float32)[geom_idx]
    geom_xmat = jnp.asarray(data.geom_xmat, jnp.float32)[geom_idx].reshape(-1, 3, 3)
    cam_pos = jnp.asarray(data.cam_xpos, jnp.float32)[np.asarray(cam_ids)]
    cam_mat = jnp.asarray(data.cam_xmat, jnp.float32)[np.asarray(cam_ids)].reshape(-1, 3, 3)
    rays_cam = np.stack([_camera_rays(scene.camera_fovy[c], height, width) for c in cam_ids])
    fovy = {scene.camera_fovy[c] for c in cam_ids}
    tri_world = None
    if scene.num_triangles:
        tri_pos, tri_mat = geom_xpos[scene.tri_geom], geom_xmat[scene.tri_geom]
        tri_world = jnp.einsum("tij,tvj->tvi", tri_mat, scene.tri_vert) + tri_pos[:, None, :]

    def one_camera(pos, mat, dirs_cam, fovy_deg):
        cam_z = (mat[0, 2][None], mat[1, 2][None], mat[2, 2][None])
        pixel_angle = 2.0 * math.tan(math.radians(fovy_deg) / 2.0) / height

        def trace(o_pos, o_mat, t_min, keep=None):
            """Nearest hit of the rays of a camera at o_pos, o_mat (the real one, or the mirrored one)."""
            d = jnp.einsum("ij,rj->ri", o_mat, dirs_cam)
            ray_d = (d[:, 0], d[:, 1], d[:, 2])
            origin = (o_pos[0][None], o_pos[1][None], o_pos[2][None])
            t, idx = _nearest_hit(scene, geom_xpos, geom_xmat, origin, ray_d, t_min, with_index=True)
            mesh_hit = None
            if tri_world is not None:
                cfg = scene.config
                t_m, tri, bu, bv, _ = render_mesh.raster_hits(
                    tri_world,
                    o_pos,
                    o_mat,
                    dirs_cam,
                    height,
                    width,
                    fovy_deg,
                    scene.znear,
                    cfg.mesh_tile,
                    cfg.mesh_tile_capacity,
                    ray_t_min=None if np.ndim(t_min) == 0 else t_min,
                    keep=keep,
                )
                closer = t_m < t
                t = jnp.where(closer, t_m, t)
                idx = jnp.where(closer, scene.tri_geom[jnp.maximum(tri, 0)], idx)
                mesh_hit = (jnp.where(closer, tri, -1), bu, bv)
            return origin, ray_d, t, idx, mesh_hit

        origin, ray_d, t, idx, mesh_hit = trace(pos, mat, scene.znear)
        colour = _shade(
            scene, data, geom_xpos, geom_xmat, origin, ray_d, t, idx, mesh_hit, cam_z, pixel_angle
        )
        if scene.reflect_geom >= 0:
            # MuJoCo's mirror pass: the scene mirrored in the plane (a box's +z face), drawn where
            # that face is, then the face itself added on top (glBlendFunc(GL_ONE, GL_ONE)). The same
            # as tracing the real scene from the mirrored camera, from the mirror on (its clip plane),
            # lit by the real lights (MuJoCo mirrors them with the scene) and the real headlight.
            r = scene.reflect_geom
            normal = geom_xmat[r][:, 2]
            top = geom_xpos[r]
            if any(gt == _BOX and r in members for gt, members in scene.type_groups):
                top = top + scene.geom_size[r, 2] * normal
            above = jnp.dot(pos - top, normal)  # the camera's height over the mirror
            mirror = jnp.eye(3) - 2.0 * jnp.outer(normal, normal)
            point = jnp.stack([origin[k] + jnp.where(idx >= 0, t, 0.0) * ray_d[k] for k in range(3)], -1)
            on_face = (idx == r) & (jnp.abs((point - top) @ normal) <= 1e-4 + 1e-5 * t) & (above > 0)
            t_min = jnp.where(on_face, t * (1.0 + 1e-5) + 1e-5, _INF)
            keep = None
            if tri_world is not None:  # triangles wholly under the mirror are clipped away
                keep = jnp.any((tri_world - top) @ normal > 0.0, axis=-1)
            m_origin, m_d, m_t, m_idx, m_mesh = trace(pos - 2.0 * above * normal, mirror @ mat, t_min, keep)
            mirrored = _shade(scene, data, geom_xpos, geom_xmat, m_origin, m_d, m_t, m_idx, m_mesh,
                              cam_z, pixel_angle, reflected=True)  # fmt: skip
            colour = jnp.where(on_face[:, None], jnp.minimum(colour + mirrored, 1.0), colour)
        depth = jnp.where(idx >= 0, t * -dirs_cam[:, 2], scene.zfar)
        return colour, depth, idx

    if len(fovy) == 1:  # the tile binning projects with a static field of view
        one = lambda p, m, r: one_camera(p, m, r, next(iter(fovy)))  # noqa: E731
        return jax.vmap(one)(cam_pos, cam_mat, jnp.asarray(rays_cam))
    outs = [
        one_camera(cam_pos[k], cam_mat[k], jnp.asarray(rays_cam[k]), scene.camera_fovy[c])
        for k, c in enumerate(cam_ids)
    ]
    return tuple(jnp.stack(x) for x in zip(*outs, strict=True))


def _to_u8(colour):
    return jnp.clip(jnp.round(colour * 255.0), 0, 255).astype(jnp.uint8)


def render_rgbd(
    scene: RenderScene, data, cameras: Sequence[int | str] | int | str, height: int, width: int
) -> tuple[UInt8[Array, "C H W 3"], Float[Array, "C H W"]]:
    """RGB u8[C, H, W, 3] and depth f32[C, H, W] (m along the camera axis; zfar on background).

    data: an mjx.Data (or anything with geom_xpos, geom_xmat, cam_xpos, cam_xmat, xpos, xmat) after
    kinematics. cameras: names or ids (static). Wrap the caller in jit; vmap over data for batches.
    """
    ss = scene.config.supersample
    colour, depth, _ = _trace(scene, data, cameras, height * ss, width * ss)
    ncam = colour.shape[0]
    colour = colour.reshape(ncam, height, ss, width, ss, 3).mean(axis=(2, 4))
    depth = depth.reshape(ncam, height, ss, width, ss).min(axis=(2, 4))
    return _to_u8(colour), depth


def render_rgbd_segmentation(
    scene: RenderScene, data, cameras: Sequence[int | str] | int | str, height: int, width: int
) -> tuple[UInt8[Array, "C H W 3"], Float[Array, "C H W"], Int[Array, "C H W"]]:
    """`render_rgbd` and `render_segmentation` from one trace (the segmentation of a supersampled
    render is its centre sample per pixel)."""
    ss = scene.config.supersample
    colour, depth, idx = _trace(scene, data, cameras, height * ss, width * ss)
    ncam = colour.shape[0]
    colour = colour.reshape(ncam, height, ss, width, ss, 3).mean(axis=(2, 4))
    depth = depth.reshape(ncam, height, ss, width, ss).min(axis=(2, 4))
    idx = idx.reshape(ncam, height, ss, width, ss)[:, :, ss // 2, :, ss // 2]
    geom_ids = jnp.asarray(np.asarray(scene.geom_ids, np.int32))
    seg = jnp.where(idx >= 0, geom_ids[jnp.maximum(idx, 0)], -1)
    return _to_u8(colour), depth, seg


def render(
    scene: RenderScene, data, cameras: Sequence[int | str] | int | str, height: int, width: int
) -> UInt8[Array, "C H W 3"]:
    """RGB images u8[C, H, W, 3] of the given cameras (names or ids, static)."""
    return render_rgbd(scene, data, cameras, height, width)[0]


def render_segmentation(
    scene: RenderScene, data, cameras: Sequence[int | str] | int | str, height: int, width: int
) -> Int[Array, "C H W"]:
    """MuJoCo geom id seen at each pixel, i32[C, H, W]; -1 for background."""
    _, _, idx = _trace(scene, data, cameras, height, width)
    geom_ids = jnp.asarray(np.asarray(scene.geom_ids, np.int32))
    seg = jnp.where(idx >= 0, geom_ids[jnp.maximum(idx, 0)], -1)
    return seg.reshape(seg.shape[0], height, width)

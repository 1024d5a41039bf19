"""LIBERO's own task scenes, rebuilt for MJX.

`pirl.envs.build_libero` saves the MJCF MuJoCo compiled for a LIBERO task (robosuite's Panda,
LIBERO's table, objects and fixtures, with their names and poses). As compiled it cannot run in MJX
(hundreds of boxes and meshes, ~15k candidate collision pairs). `mjx_scene_spec` (and `load_task`,
which caches the compiled result) keeps every body,
joint, actuator, site, camera and light, with the compiled masses and inertias, and replaces the
geometry:

- each object or fixture body: its collision geoms (LIBERO's boxes, or meshes) clustered into
  `SceneConfig.boxes_per_body` groups, split further where merging would turn thin plates into a
  slab (`SceneConfig.max_wall_growth` for objects, `fixture_wall_growth` for fixtures), each group
  fitted by one box in the frame of its largest member (`SceneConfig.group_frame`; a group of one
  keeps LIBERO's box);
- robot: a capsule fitted to the collision mesh of each link in `SceneConfig.arm_contact_links`
  (link7 has no collision mesh in robosuite's Panda); the hand and the two fingers: slabs of their
  meshes in the body frame (`SceneConfig.hand_boxes`, `finger_boxes`); the fingertip pads:
  robosuite's own boxes; other links and the mount do not collide (they never reach the objects);
- the table (LIBERO's `table`, libero_10's `living_room_table` / `study_table`, `is_table`): a plane at
  its top (`table_top`; the floor plane where a scene has no table collision);
- no visual meshes, textures or materials;
- contacts only through explicit pairs (gripper x objects/fixtures/table, forearm x objects,
  object x table, object x object, object x fixture), friction / solref / solimp mixed from
  LIBERO's geoms as MuJoCo mixes them, with MJX's caps (`max_geom_pairs`, `max_contact_points`);
- MJX solver options and the OSC controller's timestep and userdata slots.

Because joints are untouched, qpos/qvel keep LIBERO's layout and the official initial states
(time, qpos, qvel) load as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from pirl.envs.build_libero import SETTLE_ACTION, SETTLE_STEPS, check_suite, ensure_built  # noqa: F401  (re-exported)
from pirl.envs.mjx_module import mjx
from pirl.envs.osc import OSC_USERDATA_SIZE, OSCConfig, OSCIndices
from pirl.errors import UserError

_GEOM = mujoco.mjtGeom
_OBJ = mujoco.mjtObj


GROUP_FRAMES = ("largest", "tightest")
"""The frames `group_box` can fit a group's box in (`SceneConfig.group_frame`)."""


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How a LIBERO scene is rebuilt for MJX."""

    timestep: float = OSCConfig.timestep
    """Physics timestep (must match the OSC controller's, pirl.envs.osc.OSCConfig.timestep)."""
    boxes_per_body: int = 10
    """Boxes fitted to one object/fixture body's collision geoms (k-means groups; an object's thin walls
    may add more, see max_wall_growth)."""
    max_wall_growth: float = 0.012
    """An object's (free body's) group of LIBERO boxes is split in two (2-means, again until it holds)
    while its fitted box is thicker (smallest half size, m) than its thickest box member by more
    than this; inf keeps the k-means groups. At 0.012 the mugs' cups stay hollow (k-means filled
    them with slabs 15-33 mm thick, on which the inner finger of libero_10 4 / 6's wall grasp stood);
    elsewhere only libero_10 2's frying pan and moka pot split (the bowl's 21.6 mm slabs grow 9.5
    mm: libero_spatial / goal / object keep their fit). 0.003 keeps every plate of the
    bowl: libero_spatial 5 3/10 -> 9/10 but 3 10/10 -> 4/10 and 4 4/10 -> 1/10 (2.6x the pairs crowd
    MJX's 64-pair broad phase; docs/libero_mjx.md)."""
    group_frame: str = "largest"
    """Frame of a group's box (`group_box`): "largest", its largest member's, or "tightest", the member
    frame whose box stands least outside the group. "tightest" brings the akita bowl's fit from 14.5
    to 6.5 mm outside LIBERO's wall (4.8 mm over the rim to 1.7 under it) but moves the plan's wall
    grasp (read from the fit) 2.2 mm out and 3.1 mm down, which was tuned on "largest": libero_spatial
    4 39/50 -> 42/50 (47/50 with turned wall grasps), but libero_spatial 6 9/10 -> 7/10 on inits 0-9
    and real libero_spatial 2 and libero_10 3 lose an init each (docs/libero_mjx.md, "The bowl's
    fit")."""
    canonical_box_frames: bool = False
    """Each fitted box (a group of LIBERO's geoms) in the one of its 24 equivalent frames (axes
    relabeled) nearest its body's frame rather than in the member's it was fitted in: the same box,
    but MJX's box-box contacts depend on the labeling. libero_10 6: the porcelain mug's base, labeled by
    its largest member's frame (its z axis horizontal), landed on the plate tilted 14 degrees and slid 2.9 cm
    (the real LIBERO's: 4 degrees, 0.3 cm), 3.0-3.6 cm from the plate's centre where LIBERO's On needs
    under 3: MJX 45/50 -> 49/50. It moves which inits miss elsewhere (libero_10 3 with the fitted bowl
    11/50 -> 9/50, 4 46/50 with other misses; docs/libero_mjx.md, session 20). LIBERO's own boxes keep
    their frames. Off until every task is re-run with it (it relabels boxes in all 40 scenes: bowls,
    bottles, the stove's button)."""
    task_wall_growth: tuple[tuple[str, int, float], ...] = (
        ("libero_10", 3, 0.003),
        ("libero_goal", 6, 0.003),
    )
    """(suite, task id, max_wall_growth) for tasks whose objects keep more of LIBERO's own boxes than
    max_wall_growth allows (`load_task` applies it). libero_10 3 lowers the akita bowl between the open
    bottom drawer's front wall and the handles above it, a 10.1 cm column: the fit's bowl is 13.6 cm
    across and stands 4.8 mm over the rim (LIBERO's 10.8 cm), and it wedged in the drawer or jammed the
    push. At 0.003 the bowl keeps LIBERO's plates (29 boxes; the wine bottle 12): MJX 11/50 -> 49/50, the
    real LIBERO replaying the plan read from this scene 45/50 -> 47/50 (docs/libero_mjx.md, "LIBERO's own
    bowl in the drawer"). libero_goal 6 puts the cream cheese into the bowl: the fit merges the bowl's
    floor into its walls' boxes, and the cheese came to rest 24 mm higher than in LIBERO at every init;
    at 0.003 both simulators 50/50, the cheese within 5.6 mm over 50 inits ("Object poses after the
    plan"). Not applied everywhere: the other bowl tasks were measured with the fit. It
    doubles the scene's candidate pairs (1,370 -> 2,710) at the same step time on the CPU (MJX's broad
    phase keeps max_geom_pairs per group)."""
    object_wall_growth: tuple[tuple[str, float], ...] = ()
    """(name prefix, max_wall_growth) for the objects whose root body's name starts with the prefix:
    their growth in place of max_wall_growth (after `task_wall_growth`). ("akita_black_bowl", 0.003)
    keeps LIBERO's own plates for the bowls alone: libero_spatial 0's objects end within 12 mm of the real
    LIBERO's after the plan (54 mm with the fit), but libero_spatial 3's cookies box 17 cm off, so not the
    default (docs/libero_mjx.md, "Object poses after the plan: containers")."""
    fixture_wall_growth: float = 0.01
    """max_wall_growth for fixtures (bodies without a free joint). k-means merged the desk caddy's
    7-12 mm walls (17 LIBERO boxes) into slabs up to 14 cm thick that filled its compartments: the
    book lowered into the back one stood on a solid box and was squeezed out (libero_10 5). 0.01
    keeps the caddy's walls (13 boxes) and, of the fixtures checked, changes no other (the stove's
    button stays 10 boxes; 0.003 splits it into 12); inf: never split (docs/libero_mjx.md)."""
    arm_contact_links: tuple[str, ...] = ("robot0_link6", "robot0_link7")
    """Robot links (besides the hand and fingers) that collide with objects."""
    finger_boxes: int = 1
    """Boxes per finger, slabs along its length (each the exact bounds of the mesh's slab in the body
    frame). The finger mesh tapers (26 -> 16 mm thick), so one box stands up to 11 mm outside the tip;
    4 slabs cut that to ~4 mm but did not fix check (b)'s wine-bottle misses (LIBERO's finger clears
    the neck by 0.06-0.2 mm there) and add ~20% contact pairs, so 1 stays (docs/libero_mjx.md)."""
    hand_boxes: int = 1
    """Boxes for the hand (the gripper body's mesh), slabs across its width (body x, the fingers'
    travel; each the exact bounds of the mesh's slab). The hand's ends are rounded and chamfered: one
    box stands up to 30 mm outside the mesh there, 5 slabs 22.6 mm (a capsule 32-41 mm; slabs along
    z, or 2-D grids of up to 10 boxes, no better). At impratio 20: libero_goal 0 (the turned hand comes down on
    plate_1 in both simulators): 10/10 at inits 0-9 with 1, 3 or 5; with object_armature 3e-4 7/10,
    8/10, 10/10. libero_10 3 (inits 0-4): 3/5 with 1, 2/5 with 5 (init 1 lost, not the broad phase).
    5 costs +4 geoms and ~+14% pairs, so 1 stays (docs/libero_mjx.md, "The hand's collision")."""
    solver_iterations: int = 30
    """Constraint solver iterations (Newton). At rest it converges in <= 7, but a grasp (fingers
    squeezing a bowl) at 10 launched the objects in MJX; 30 holds it (docs/libero_mjx.md, check (c))."""
    ls_iterations: int = 40
    """Line-search iterations per solver iteration (MJX's grasps need 40 with 30 solver iterations; the
    elliptic cone goes unstable at 10 even at rest)."""
    cone: str = "pyramidal"
    """Friction cone. robosuite uses elliptic; in MJX's float32 solver the elliptic cone sent LIBERO's
    5-10 g objects flying (NaN within 20 control steps) where pyramidal settles them as MuJoCo C does."""
    impratio: float = 5.0
    """Ratio of frictional to normal constraint impedance (robosuite's: 20). MJX divides the pyramid
    rows' regulariser by it; at 20 friction is so much stiffer than the normal force that MJX's float32
    solver threw LIBERO's 12-31 g objects (libero_10 4 init 1: a plate under a mug thrown 0.96 m in one
    control step, none moved 1 mm at 5 or 1). At 5: libero_10 4 1/3 -> 3/3, libero_spatial 5 3/10 ->
    10/10, 4 4/10 -> 8/10, goal 7 3/3 (at 1: 1 of 3 lost); libero_10 3 loses inits 0-1 (the bowl set
    down against the middle drawer; docs/libero_mjx.md, "impratio")."""
    object_solref: tuple[float, float] = (0.02, 1.0)
    """solref of object-object pairs ((0, 1) keeps the mix of LIBERO's geoms, 0.001 clamped to
    2 timesteps). Some official initial states start objects interpenetrating (bowl and plate by
    6.8 mm in LIBERO's own geometry, up to 15 mm with the fitted boxes); at LIBERO's stiffness that
    launched objects 0.8-1.4 m in libero_spatial task 0 inits 2 and 3 (MuJoCo C), at 0.02 they stay
    within 5 cm there in MuJoCo C, not yet in MJX (docs/libero_mjx.md)."""
    max_geom_pairs: int = 64
    """MJX broad phase: most geom pairs of one type combination collided per step (nearest bounding
    spheres first; fixtures' large boxes crowd out object pairs at 24)."""
    max_contact_points: int = 64
    """MJX: most contacts kept per step (deepest first; ~41 are active with everything at rest)."""
    grip_condim: int = 4
    """condim of the gripper's pairs (the others: 3). LIBERO's finger geoms are condim 4. In MJX a
    condim of their own also gives the gripper's pairs a broad phase (max_geom_pairs) and contact
    budget (max_contact_points) of their own: at 3, with a bowl resting on the stove or the cookie
    box, the fixtures' large boxes (nearest by bounding sphere) crowded the fingers' pairs out of
    the 64 and the fingers closed through the bowl (libero_spatial 3 and 7, docs/libero_mjx.md)."""

    object_armature: float = 0.0
    """Armature (kg m^2 / kg, on all six dofs) of every free joint; 0 keeps LIBERO's objects as they
    are. At robosuite's impratio 20, 3e-4 stilled the 2-3.5 mm per-step jitter of libero_10 4's light
    plates at rest in MJX's float32 solver (impratio 5 does it without; 7-27 mm before the tables became planes) and took libero_spatial 5 from 3/10 to 7/10, but
    multiplies a plate's rotational inertia 10-20x and broke libero_10 3 (inits 0-1: bowl not in the
    drawer) and goal 0 inits 0-1, so it is not the default (docs/libero_mjx.md, "Light objects")."""

    grip_spin_friction: float = 0.005
    """Torsional friction of the gripper's pairs with fixtures (knobs, handles, doors) when grip_condim
    >= 4 (MuJoCo's default 0.005). With LIBERO's own larger values (0.05, 0.3 on some geoms) MJX's
    fingers held the stove knob against the turn: libero_goal 7 (turn on the stove) 0/3 at inits 0-2,
    3/3 at 0.005."""

    grip_object_spin_friction: float = 0.05
    """Torsional friction of the fingers' pairs with free objects (LIBERO's 0.05 on most). At 0.005 a
    mug pinched by its 8 mm handle pitched 21 degrees about the closing axis in MJX's carry (spin about
    the pads' normal), stood short of the microwave's region and jammed its door (libero_10 9)."""

    def __post_init__(self):
        if self.cone not in ("elliptic", "pyramidal"):
            raise ValueError(f"cone must be 'elliptic' or 'pyramidal', got {self.cone!r}")
        if not self.impratio > 0:
            raise ValueError(f"impratio must be > 0 (robosuite's: 20), got {self.impratio}")
        if self.finger_boxes < 1:
            raise ValueError("finger_boxes must be >= 1")
        if self.hand_boxes < 1:
            raise ValueError("hand_boxes must be >= 1")
        if self.grip_condim not in (3, 4, 6):
            raise ValueError(f"grip_condim must be 3, 4 or 6, got {self.grip_condim}")
        if self.grip_spin_friction < 0 or self.grip_object_spin_friction < 0:
            raise ValueError(
                "grip_spin_friction and grip_object_spin_friction must be >= 0, got "
                f"{self.grip_spin_friction}, {self.grip_object_spin_friction}"
            )
        if self.group_frame not in GROUP_FRAMES:
            raise ValueError(f"group_frame must be one of {GROUP_FRAMES}, got {self.group_frame!r}")
        if self.boxes_per_body < 1:
            raise ValueError("boxes_per_body must be >= 1")
        if not self.max_wall_growth >= 0:
            raise ValueError(f"max_wall_growth must be >= 0 (inf: never split), got {self.max_wall_growth}")
        if not self.object_armature >= 0:
            raise ValueError(
                f"object_armature must be >= 0 (0: LIBERO's objects as they are), got {self.object_armature}"
            )
        for entry in self.task_wall_growth:
            if len(entry) != 3 or not entry[2] >= 0:
                raise ValueError(f"task_wall_growth entries are (suite, task id, growth >= 0), got {entry!r}")
            try:  # a misspelt entry would otherwise never match and change nothing
                check_suite(entry[0], entry[1])
            except UserError as e:
                raise UserError(f"task_wall_growth entry {entry!r}: {e}") from None
        for entry in self.object_wall_growth:
            if len(entry) != 2 or not isinstance(entry[0], str) or not entry[1] >= 0:
                raise ValueError(f"object_wall_growth entries are (name prefix, growth >= 0), got {entry!r}")
        if not self.fixture_wall_growth >= 0:
            raise ValueError(
                f"fixture_wall_growth must be >= 0 (inf: never split), got {self.fixture_wall_growth}"
            )

    def for_task(self, suite: str, task_id: int) -> SceneConfig:
        """This config as task (suite, task_id) is built with: its `task_wall_growth` entry, if any, as
        max_wall_growth."""
        for s, t, growth in self.task_wall_growth:
            if (s, t) == (suite, task_id):
                return dataclasses.replace(self, max_wall_growth=growth, task_wall_growth=())
        return dataclasses.replace(self, task_wall_growth=())


# ----------------------------------------------------------------------------- geometry fitting


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, np.float64))
    return m.reshape(3, 3)


def _mat_to_quat(r: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(r, np.float64).reshape(9))
    return q


def geom_points(m: mujoco.MjModel, g: int) -> np.ndarray:
    """Points f64[n, 3] of geom g's surface hull in its body's frame (box corners, mesh vertices, ...)."""
    t, size = int(m.geom_type[g]), m.geom_size[g]
    if t == _GEOM.mjGEOM_BOX:
        local = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size
    elif t == _GEOM.mjGEOM_MESH:
        mid = m.geom_dataid[g]
        adr, n = m.mesh_vertadr[mid], m.mesh_vertnum[mid]
        local = np.asarray(m.mesh_vert[adr : adr + n], np.float64)
    elif t == _GEOM.mjGEOM_PLANE:  # its rectangle of `size` (a table's top)
        local = np.array([[sx, sy, 0.0] for sx in (-1, 1) for sy in (-1, 1)]) * size
    elif t == _GEOM.mjGEOM_SPHERE:
        local = np.concatenate([np.eye(3), -np.eye(3)]) * size[0]
    elif t in (int(_GEOM.mjGEOM_CYLINDER), int(_GEOM.mjGEOM_CAPSULE)):
        a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], 1) * size[0]
        h = size[1] + (size[0] if t == int(_GEOM.mjGEOM_CAPSULE) else 0.0)
        local = np.concatenate([ring + np.array([0, 0, h]), ring - np.array([0, 0, h])])
    else:
        raise ValueError(f"cannot fit geom type {t}")
    return local @ _quat_to_mat(m.geom_quat[g]).T + m.geom_pos[g]


def geom_world_points(m: mujoco.MjModel, d: mujoco.MjData, g: int) -> np.ndarray:
    """`geom_points` of geom g in the world frame f64[n, 3], at the kinematics of `d` (its xpos, xmat)."""
    b = m.geom_bodyid[g]
    return np.asarray(d.xpos[b]) + geom_points(m, g) @ np.asarray(d.xmat[b]).reshape(3, 3).T


def tops_over(per_geom: list[np.ndarray], xy: np.ndarray) -> list[float]:
    """Top z of each point set f64[n, 3] (one geom's, any frame) whose horizontal extent covers the
    point `xy`: what a body offers to stand on there (a plate's floor, a container's, a pot's lid)."""
    return [
        float(p[:, 2].max())
        for p in per_geom
        if np.all(p[:, :2].min(0) <= xy) and np.all(xy <= p[:, :2].max(0))
    ]


def mesh_edges(m: mujoco.MjModel, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Ends (f64[n, 3] each) of mesh geom g's face edges, in its body's frame."""
    mid = m.geom_dataid[g]
    vert = np.asarray(
        m.mesh_vert[m.mesh_vertadr[mid] : m.mesh_vertadr[mid] + m.mesh_vertnum[mid]], np.float64
    )
    face = np.asarray(m.mesh_face[m.mesh_faceadr[mid] : m.mesh_faceadr[mid] + m.mesh_facenum[mid]])
    a, b = face.ravel(), face[:, [1, 2, 0]].ravel()
    rot = _quat_to_mat(m.geom_quat[g])
    return vert[a] @ rot.T + m.geom_pos[g], vert[b] @ rot.T + m.geom_pos[g]


def slab_boxes(
    ends: tuple[np.ndarray, np.ndarray], n: int, axis: int = 2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A convex mesh (its edges, `mesh_edges`) cut into n equal slabs along a frame axis, each slab's
    exact bounding box in that frame (centre, half sizes): the vertices inside it and where the
    edges cross its two planes. A tapered finger's single box stands up to 11 mm off its mesh."""
    a, b = ends
    lo, hi = min(a[:, axis].min(), b[:, axis].min()), max(a[:, axis].max(), b[:, axis].max())
    cuts = np.linspace(lo, hi, n + 1)
    out = []
    for z0, z1 in itertools.pairwise(cuts):
        pts = [p[(p[:, axis] >= z0 - 1e-9) & (p[:, axis] <= z1 + 1e-9)] for p in (a, b)]
        for z in (z0, z1):
            da, db = a[:, axis] - z, b[:, axis] - z
            cross = da * db < 0
            t = (da[cross] / (da[cross] - db[cross]))[:, None]
            pts.append(a[cross] + t * (b[cross] - a[cross]))
        p = np.concatenate(pts)
        out.append((0.5 * (p.min(0) + p.max(0)), np.maximum(0.5 * (p.max(0) - p.min(0)), 5e-4)))
    return out


def fit_box_in_frame(points: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box around points with the axes of rotation `quat` (pos, quat, half sizes)."""
    rot = _quat_to_mat(quat)
    local = points @ rot
    lo, hi = local.min(0), local.max(0)
    return rot @ (0.5 * (lo + hi)), np.asarray(quat, np.float64), np.maximum(0.5 * (hi - lo), 5e-4)


def fit_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oriented box around points with axes from their principal directions (pos, quat, half sizes)."""
    c = points - points.mean(0)
    _, v = np.linalg.eigh(c.T @ c)
    if np.linalg.det(v) < 0:
        v[:, 0] = -v[:, 0]
    local = points @ v
    lo, hi = local.min(0), local.max(0)
    return v @ (0.5 * (lo + hi)), _mat_to_quat(v), np.maximum(0.5 * (hi - lo), 5e-4)


def fit_capsule(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Capsule around points along their principal axis: (pos, quat with z on the axis, radius, half length)."""
    c = points.mean(0)
    d = points - c
    w, v = np.linalg.eigh(d.T @ d)
    axis = v[:, np.argmax(w)]
    t = d @ axis
    radial = np.linalg.norm(d - np.outer(t, axis), axis=1)
    radius = float(np.quantile(radial, 0.95))
    lo, hi = t.min() + radius, t.max() - radius
    if hi < lo:
        lo = hi = 0.5 * (t.min() + t.max())
    center = c + axis * 0.5 * (lo + hi)
    z = axis
    x = np.cross([0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0], z)
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(z, x), z], 1)
    return center, _mat_to_quat(rot), radius, max(0.5 * (hi - lo), 1e-4)


def cluster(centers: np.ndarray, k: int, iters: int = 20) -> np.ndarray:
    """Deterministic k-means labels int[n] of points (farthest-point initialisation)."""
    n = len(centers)
    if n <= k:
        return np.arange(n)
    seeds = [0]
    dist = np.linalg.norm(centers - centers[0], axis=1)
    for _ in range(k - 1):
        seeds.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(centers - centers[seeds[-1]], axis=1))
    means = centers[seeds]
    labels = np.zeros(n, int)
    for _ in range(iters):
        labels = np.argmin(np.linalg.norm(centers[:, None] - means[None], axis=2), axis=1)
        means = np.stack(
            [centers[labels == j].mean(0) if np.any(labels == j) else means[j] for j in range(k)]
        )
    return np.unique(labels, return_inverse=True)[1]


_SUPPORT_DIRS = np.array(
    [[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)],
    np.float64,
)
_SUPPORT_DIRS /= np.linalg.norm(_SUPPORT_DIRS, axis=1, keepdims=True)
_CORNERS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64)


_TURNS = [
    p for p in (np.diag(sign) @ np.eye(3)[list(order)]
                for order in itertools.permutations(range(3)) for sign in itertools.product((1, -1), repeat=3))
    if np.linalg.det(p) > 0
]  # fmt: skip
"""The 24 turns (signed permutations of the axes) that map a box onto itself."""


def canonical_box(
    pos: np.ndarray, quat: np.ndarray, half: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same box (pos, quat, half sizes) in the one of its 24 frames (its axes relabeled and
    flipped) nearest its body's frame (the largest trace of the rotation)."""
    rot = _quat_to_mat(quat)
    turn = max(_TURNS, key=lambda p: float(np.trace(rot @ p)))
    return (
        np.asarray(pos, np.float64),
        _mat_to_quat(rot @ turn),
        np.abs(turn).T @ np.asarray(half, np.float64),
    )


def group_box(
    m: mujoco.MjModel, members: list[int], frame: str = "largest"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box (pos, quat, half sizes) around a group of a body's geoms, in the frame of one member.
    "largest": its largest member's. "tightest": the member frame whose box stands least outside the
    members (summed over 26 directions, the axes, edge and corner diagonals of the body frame: how
    far the box's corners reach past the members' points), then the smallest. For a group of a bowl's
    flared wall plates the largest member is often at the group's end, and its box stood 14.5 mm
    outside the rim and 4.8 mm over it (the middle plate's: 6.5 mm, under it). Principal axes gave
    fewer initial overlaps in MuJoCo C but launched both bowls (0.2-0.3 m) at init 0 in MJX."""
    pts = np.concatenate([geom_points(m, g) for g in members])
    if frame == "largest":
        big = max(members, key=lambda g: np.prod(m.geom_size[g]))
        return fit_box_in_frame(pts, m.geom_quat[big])
    reach = (pts @ _SUPPORT_DIRS.T).max(0)

    def outside(box):
        pos, quat, half = box
        corners = pos + (_CORNERS * half) @ _quat_to_mat(quat).T
        return float(np.maximum((corners @ _SUPPORT_DIRS.T).max(0) - reach, 0.0).sum()), float(np.prod(half))

    return min((fit_box_in_frame(pts, m.geom_quat[g]) for g in members), key=outside)


def wall_groups(
    m: mujoco.MjModel, geoms: list[int], k: int, max_growth: float, frame: str = "largest"
) -> list[list[int]]:
    """A body's geoms grouped for one box each: k-means on their centres (z weighted x3, so a group
    stays within one ring of a bowl), then each group whose box (`group_box`) is thicker than its
    thickest box member by more than `max_growth` split by 2-means until it is not (or is one geom):
    thin plates of different orientation are not merged into a slab. Mesh members count as thick."""
    weight = np.array([1.0, 1.0, 3.0])
    labels = cluster(np.array([m.geom_pos[g] for g in geoms]) * weight, k)
    todo = [[g for g, lab in zip(geoms, labels, strict=True) if lab == j] for j in range(labels.max() + 1)]
    out: list[list[int]] = []
    while todo:
        group = todo.pop(0)
        if len(group) > 1 and np.isfinite(max_growth):
            thick = max(m.geom_size[g].min() if m.geom_type[g] == _GEOM.mjGEOM_BOX else np.inf for g in group)
            if group_box(m, group, frame)[2].min() > thick + max_growth:
                halves = cluster(np.array([m.geom_pos[g] for g in group]) * weight, 2)
                todo[:0] = [[g for g, lab in zip(group, halves, strict=True) if lab == j] for j in (0, 1)]
                continue
        out.append(group)
    return out


# ----------------------------------------------------------------------------- scene rebuild


@dataclasses.dataclass
class _NewGeom:
    body: str
    name: str
    kind: str  # "grip", "arm", "object", "fixture", "plane"
    root: str  # top-level body (objects of one root never collide with each other)
    type: int
    pos: np.ndarray
    quat: np.ndarray
    size: np.ndarray
    friction: np.ndarray
    solref: np.ndarray
    solimp: np.ndarray
    rgba: np.ndarray


def _is_collision(m: mujoco.MjModel, g: int) -> bool:
    return bool(m.geom_contype[g] or m.geom_conaffinity[g])


def root_body(m: mujoco.MjModel, b: int) -> int:
    """The top body (a child of the world) that body `b` hangs from."""
    while m.body_parentid[b] != 0:
        b = m.body_parentid[b]
    return b


def _geom_rgba(m: mujoco.MjModel, b: int) -> np.ndarray:
    """A colour for a body's primitives: its visual geoms' material (or geom) colour."""
    for g in np.where(m.geom_bodyid == b)[0]:
        if not _is_collision(m, g):
            mat = m.geom_matid[g]
            return np.array(m.mat_rgba[mat] if mat >= 0 else m.geom_rgba[g], np.float64)
    return np.array([0.6, 0.6, 0.6, 1.0])


def is_table(m: mujoco.MjModel, b: int) -> bool:
    """Body `b` hangs from one of LIBERO's table fixtures (`table`, `living_room_table`, `study_table`):
    a root body with no joints whose name ends in "table"."""
    r = root_body(m, b)
    name = mujoco.mj_id2name(m, _OBJ.mjOBJ_BODY, r) or ""
    return r != 0 and name.endswith("table") and m.body_jntnum[r] == 0


def table_top(m: mujoco.MjModel, d: mujoco.MjData) -> tuple[np.ndarray, np.ndarray] | None:
    """(world centre f64[3], half sizes f64[2]) of the top of the scene's table fixtures (`is_table`):
    the highest top of their collision geoms at the kinematics of `d` and the horizontal bounds of the
    geoms whose top is within 1 mm of it; None without a table."""
    boxes = []
    for g in range(m.ngeom):
        if not _is_collision(m, g) or not is_table(m, m.geom_bodyid[g]):
            continue
        pts = geom_world_points(m, d, g)
        boxes.append((pts.min(0), pts.max(0)))
    if not boxes:
        return None
    top = max(hi[2] for _, hi in boxes)
    tops = [(lo, hi) for lo, hi in boxes if hi[2] > top - 1e-3]
    lo = np.min([lo[:2] for lo, _ in tops], axis=0)
    hi = np.max([hi[:2] for _, hi in tops], axis=0)
    return np.array([*(lo + hi) / 2, top]), (hi - lo) / 2


def robot_base_xy(m: mujoco.MjModel, d: mujoco.MjData | None = None) -> np.ndarray | None:
    """World xy f64[2] of the robot's base (`robot0_base`, fixed to the world) at the kinematics of
    `d` (default: a fresh one at qpos0); None in a scene without the robot."""
    base = mujoco.mj_name2id(m, _OBJ.mjOBJ_BODY, "robot0_base")
    if base < 0:
        return None
    if d is None:
        d = mujoco.MjData(m)
        mujoco.mj_kinematics(m, d)
    return np.array(d.xpos[base][:2], np.float64)


def _new_geoms(m: mujoco.MjModel, cfg: SceneConfig) -> list[_NewGeom]:
    name = lambda kind, i: mujoco.mj_id2name(m, kind, i) or ""  # noqa: E731
    free_roots = {
        root_body(m, m.jnt_bodyid[j]) for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE
    }
    out: list[_NewGeom] = []
    d = mujoco.MjData(m)
    mujoco.mj_kinematics(m, d)
    top = table_top(m, d)
    for b in range(m.nbody):
        bname = name(_OBJ.mjOBJ_BODY, b)
        geoms = [g for g in np.where(m.geom_bodyid == b)[0] if _is_collision(m, g)]
        if not geoms or bname.startswith("mount0_"):
            continue
        root = name(_OBJ.mjOBJ_BODY, root_body(m, b))
        rgba = _geom_rgba(m, b)
        g0 = geoms[0]

        def add(kind, t, pos, quat, size, g, suffix, bname=bname, root=root, rgba=rgba):
            out.append(
                _NewGeom(
                    bname, f"{bname}_mjx{suffix}", kind, root, int(t), np.asarray(pos), np.asarray(quat),
                    np.asarray(size, np.float64), m.geom_friction[g].copy(), m.geom_solref[g].copy(),
                    m.geom_solimp[g].copy(), rgba,
                )
            )  # fmt: skip

        if b == 0:  # the floor: the support only where there is no table
            continue
        if is_table(m, b):
            if top is not None and not any(g.kind == "plane" and g.root == root for g in out):
                # The table is a plane at its top (objects never go under it), in this body's frame.
                # libero_10's tables are 5-6 boxes up to 1.3 m long, and MJX's broad phase ranks box
                # pairs by the distance between their bounding spheres' surfaces: pairs with the
                # large boxes' far ends crowded an object's pairs with the top out of max_geom_pairs
                # and it fell through (libero_10 4's plate_1, docs/libero_mjx.md).
                rot = d.xmat[b].reshape(3, 3)
                pos = rot.T @ (top[0] - d.xpos[b])
                add("plane", _GEOM.mjGEOM_PLANE, pos, _mat_to_quat(rot.T), [*top[1], 0.01], g0, "_top")
            continue
        planes = [g for g in geoms if m.geom_type[g] == _GEOM.mjGEOM_PLANE]
        for g in planes:  # a floor body (libero_object's scenes stand on it)
            add("plane", _GEOM.mjGEOM_PLANE, m.geom_pos[g], m.geom_quat[g], m.geom_size[g], g, f"_plane{g}")
        geoms = [g for g in geoms if g not in planes]
        if not geoms:
            continue
        if bname.startswith("robot0_"):
            if bname in cfg.arm_contact_links:
                pts = np.concatenate([geom_points(m, g) for g in geoms])
                pos, quat, r, h = fit_capsule(pts)
                add("arm", _GEOM.mjGEOM_CAPSULE, pos, quat, [r, h, 0.0], g0, "_capsule")
            continue
        if bname.startswith("gripper0_"):
            for i, g in enumerate(geoms):
                if m.geom_type[g] == _GEOM.mjGEOM_BOX:
                    add(
                        "grip", _GEOM.mjGEOM_BOX, m.geom_pos[g], m.geom_quat[g], m.geom_size[g], g, f"_pad{i}"
                    )
                elif m.geom_type[g] == _GEOM.mjGEOM_MESH:
                    # in the body's frame: the principal axes of a tapered finger mesh are tilted, and
                    # that box narrowed the open fingers' gap from 80 to 47 mm (no 62 mm can fit between).
                    # A finger is cut along its length (body z), the hand across its width (body x)
                    finger = bname.endswith("finger")
                    n, axis = (cfg.finger_boxes, 2) if finger else (cfg.hand_boxes, 0)
                    for k, (pos, half) in enumerate(slab_boxes(mesh_edges(m, g), n, axis)):
                        add("grip", _GEOM.mjGEOM_BOX, pos, [1, 0, 0, 0], half, g, f"_box{i}_{k}")
                else:
                    pos, quat, half = fit_box_in_frame(geom_points(m, g), np.array([1.0, 0.0, 0.0, 0.0]))
                    add("grip", _GEOM.mjGEOM_BOX, pos, quat, half, g, f"_box{i}")
            continue
        kind = "object" if root_body(m, b) in free_roots else "fixture"
        # LIBERO's XML repeats some boxes verbatim; count each shape once
        unique: dict[tuple, int] = {}
        for g in geoms:
            key = tuple(np.round(np.concatenate([m.geom_pos[g], m.geom_quat[g], m.geom_size[g]]), 6))
            unique.setdefault(key, g)
        geoms = list(unique.values())
        # rings of LIBERO's boxes sit at a few heights: weigh z so a group stays within one ring
        growth = cfg.max_wall_growth if kind == "object" else cfg.fixture_wall_growth
        if kind == "object":
            root_name = mujoco.mj_id2name(m, _OBJ.mjOBJ_BODY, root_body(m, b)) or ""
            growth = next((g for p, g in cfg.object_wall_growth if root_name.startswith(p)), growth)
        for j, members in enumerate(wall_groups(m, geoms, cfg.boxes_per_body, growth, cfg.group_frame)):
            if len(members) == 1 and m.geom_type[members[0]] == _GEOM.mjGEOM_BOX:  # LIBERO's own box
                g = members[0]
                add(kind, _GEOM.mjGEOM_BOX, m.geom_pos[g], m.geom_quat[g], m.geom_size[g], g, f"{j}")
                continue
            pos, quat, half = group_box(m, members, cfg.group_frame)
            if cfg.canonical_box_frames:
                pos, quat, half = canonical_box(pos, quat, half)
            add(kind, _GEOM.mjGEOM_BOX, pos, quat, half, members[0], f"{j}")
    if not any(g.kind == "plane" for g in out):  # no table: objects stand on the floor
        floor = [g for g in range(m.ngeom) if m.geom_bodyid[g] == 0 and m.geom_type[g] == _GEOM.mjGEOM_PLANE]
        if floor:
            f = floor[0]
            out.append(
                _NewGeom("world", "floor_mjx", "plane", "world", int(_GEOM.mjGEOM_PLANE), m.geom_pos[f].copy(),
                         m.geom_quat[f].copy(), m.geom_size[f].copy(), m.geom_friction[f].copy(),
                         m.geom_solref[f].copy(), m.geom_solimp[f].copy(), np.array([0.5, 0.4, 0.3, 1.0]))
            )  # fmt: skip
    return out


def _pairs(geoms: list[_NewGeom]) -> list[tuple[_NewGeom, _NewGeom]]:
    """Which fitted geoms may touch: gripper, forearm, objects, fixtures, table."""
    allowed = {
        ("grip", "object"), ("grip", "fixture"), ("grip", "plane"), ("arm", "object"),
        ("object", "plane"), ("object", "object"), ("object", "fixture"),
    }  # fmt: skip
    out = []
    for i, a in enumerate(geoms):
        for b in geoms[i + 1 :]:
            ka, kb = a.kind, b.kind
            if (ka, kb) not in allowed and (kb, ka) not in allowed:
                continue
            if ka == kb == "object" and a.root == b.root:
                continue
            # planes first: MJX's collision functions take the plane as the first geom
            out.append((b, a) if kb == "plane" else (a, b))
    return out


def mjx_scene_spec(xml_path: str | os.PathLike, cfg: SceneConfig = SceneConfig()) -> mujoco.MjSpec:
    """The MJX version of a LIBERO task's compiled MJCF (see the module docstring)."""
    compiled = mujoco.MjModel.from_xml_path(str(xml_path))
    spec = mujoco.MjSpec.from_file(str(xml_path))
    new = _new_geoms(compiled, cfg)
    # explicit inertias from the compiled model: the geoms that defined them are about to go
    for body in spec.bodies:
        if body.name == "world":
            continue
        b = mujoco.mj_name2id(compiled, _OBJ.mjOBJ_BODY, body.name)
        body.explicitinertial = True
        body.mass = float(compiled.body_mass[b])
        body.ipos = compiled.body_ipos[b].copy()
        body.iquat = compiled.body_iquat[b].copy()
        body.inertia = np.maximum(compiled.body_inertia[b], 1e-9)
        body.fullinertia = np.full(6, np.nan)
    for joint in spec.joints:
        if joint.type == mujoco.mjtJoint.mjJNT_FREE:
            joint.armature = max(float(joint.armature), cfg.object_armature)
    for g in list(spec.geoms):
        spec.delete(g)
    for kind in (spec.meshes, spec.materials, spec.textures):
        for el in list(kind):
            spec.delete(el)
    for p in list(spec.pairs) + list(spec.excludes):
        spec.delete(p)
    bodies = {b.name: b for b in spec.bodies}
    bodies["world"] = spec.worldbody
    for g in new:
        geom = bodies[g.body].add_geom()
        geom.name, geom.type = g.name, g.type
        geom.pos, geom.quat, geom.size = g.pos, g.quat, g.size
        geom.contype = geom.conaffinity = 0
        geom.mass = 0.0
        geom.density = 0.0
        geom.friction, geom.solref, geom.solimp = g.friction, g.solref, g.solimp
        geom.rgba = g.rgba
        geom.group = 0
    for a, b in _pairs(new):
        p = spec.add_pair()
        p.geomname1, p.geomname2 = a.name, b.name
        grip = "grip" in (a.kind, b.kind)
        p.condim = cfg.grip_condim if grip else 3
        fr = np.maximum(a.friction, b.friction)
        # a free object against a finger (not the hand's box: it presses plates on its way to a drawer
        # handle, libero_goal 0), not a knob or handle
        held = "object" in (a.kind, b.kind) and any(x.kind == "grip" and "finger" in x.body for x in (a, b))
        spin = (cfg.grip_object_spin_friction if held else cfg.grip_spin_friction) if grip else fr[1]
        p.friction = np.array([fr[0], fr[0], spin, fr[2], fr[2]])
        p.solref = 0.5 * (a.solref + b.solref)
        if a.kind == b.kind == "object" and cfg.object_solref[0] > 0:
            p.solref = np.asarray(cfg.object_solref, np.float64)
        p.solimp = 0.5 * (a.solimp + b.solimp)
        p.margin = p.gap = 0.0
    opt = spec.option
    opt.timestep = cfg.timestep
    opt.iterations = cfg.solver_iterations
    opt.ls_iterations = cfg.ls_iterations
    opt.cone = mujoco.mjtCone.mjCONE_ELLIPTIC if cfg.cone == "elliptic" else mujoco.mjtCone.mjCONE_PYRAMIDAL
    opt.impratio = cfg.impratio
    opt.jacobian = mujoco.mjtJacobian.mjJAC_DENSE
    opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
    spec.nuserdata = max(spec.nuserdata, OSC_USERDATA_SIZE)
    for name, value in (
        ("max_geom_pairs", cfg.max_geom_pairs),
        ("max_contact_points", cfg.max_contact_points),
    ):
        n = spec.add_numeric()
        n.name, n.data = name, [float(value)]
    return spec


@functools.lru_cache(maxsize=64)
def _cached_model(xml_path: str, cfg: SceneConfig) -> mujoco.MjModel:
    return mjx_scene_spec(xml_path, cfg).compile()


@dataclasses.dataclass(frozen=True)
class LiberoTask:
    """One LIBERO task rebuilt for MJX: the model, LIBERO's initial states and the task's facts."""

    suite: str
    task_id: int
    model: mujoco.MjModel
    init_states: np.ndarray
    """f64[50, 1 + nq + nv]: LIBERO's flattened MuJoCo states (time, qpos, qvel)."""
    meta: dict
    """prompt, bddl, goal, joint and body names, ... (pirl.envs.build_libero)."""

    @property
    def prompt(self) -> str:
        return self.meta["prompt"]


def load_task(
    suite: str, task_id: int, cfg: SceneConfig = SceneConfig(), cache: str | os.PathLike | None = None
) -> LiberoTask:
    """A LIBERO task as an MJX-ready MuJoCo model (built into the cache on first use)."""
    d = pathlib.Path(ensure_built(suite, task_id, cache))
    model = _cached_model(str(d / "scene.xml"), cfg.for_task(suite, task_id))
    meta = json.loads((d / "meta.json").read_text())
    init = np.load(d / "init_states.npy")
    if init.shape[1] != 1 + model.nq + model.nv:
        raise ValueError(
            f"init states of {suite} task {task_id} have {init.shape[1]} columns, model needs 1+nq+nv"
        )
    return LiberoTask(suite, task_id, model, init, meta)


# ----------------------------------------------------------------------------- MJX episode pieces

EEF_BODY = "robot0_right_hand"
"""robosuite's eef_name: robot0_eef_quat is this body's orientation."""


def init_data(task: LiberoTask, mx: mjx.Model, init_id: int) -> mjx.Data:
    """mjx.Data holding LIBERO's official initial state `init_id` (qpos, qvel; kinematics current)."""
    if not 0 <= init_id < len(task.init_states):
        raise ValueError(
            f"{task.suite} task {task.task_id} has {len(task.init_states)} initial states, got {init_id}"
        )
    s = task.init_states[init_id]
    nq, nv = task.model.nq, task.model.nv
    d = mjx.make_data(mx)
    d = d.replace(
        qpos=jnp.asarray(s[1 : 1 + nq], d.qpos.dtype), qvel=jnp.asarray(s[1 + nq : 1 + nq + nv], d.qvel.dtype)
    )
    return mjx.kinematics(mx, d)


def quat_to_axis_angle(quat_wxyz: jax.Array) -> jax.Array:
    """robosuite's quat2axisangle of a MuJoCo (w, x, y, z) quaternion, in JAX (the sign is the quaternion's)."""
    w = jnp.clip(quat_wxyz[0], -1.0, 1.0)
    den = jnp.sqrt(jnp.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * jnp.arccos(w)
    safe = den > 1e-6
    return jnp.where(safe, quat_wxyz[1:] * angle / jnp.where(safe, den, 1.0), jnp.zeros(3, quat_wxyz.dtype))


def libero_state(idx: OSCIndices, eef_body: int, data: mjx.Data) -> jax.Array:
    """f32[8] state as LIBERO's observation: grip-site position, eef body axis-angle, finger qpos x2.

    `data` kinematics must be current (as after osc_control_step: those of the last substep start).
    """
    return jnp.concatenate(
        [
            data.site_xpos[idx.site],
            quat_to_axis_angle(data.xquat[eef_body]),
            data.qpos[np.asarray(idx.finger_qpos)],
        ]
    )

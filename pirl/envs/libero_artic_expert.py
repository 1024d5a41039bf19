"""Scripted expert for LIBERO's contact goals: open / close a drawer, turn on a stove's knob, push a
door shut about its hinge, push a flat object along the table onto a region.

Host numpy, one plan for both simulators (as `pirl.envs.expert.pick_place_action`): the plan reads a
simulator-neutral `ArticView` (grip site, finger axis, the joint's value and its body's pose), built
by `articulation_view` from any data object with MuJoCo's field names (MuJoCo C's MjData in the real
LIBERO, the host copy of an mjx.Data in pirl's scene), and returns robosuite OSC_POSE actions.

- A slide joint (a drawer): to open it the grip turns to face the drawer's front (fingers pointing
  into the cabinet, tipped `artic_pitch` down so the hand behind them rises off what stands in
  front of it, closing about vertically: a top-down grasp of a drawer's handle is blocked by the
  handle of the drawer above), comes in front of the handle, grasps it and pulls
  along the drawer's outward axis; to close it the closed fingers point down, leaning into the push
  (`PUSH_TILT`), come in front of the handle and push it in; each until the joint
  is past the goal's threshold (closed loop on the joint value), then backs off, returns to where it
  started and turns back to its starting orientation (so that a next plan starts pointing down).
- A hinge about the vertical (a stove's knob): the grip comes down over the joint's axis, closes
  across the knob's narrow horizontal side, twists about the axis until the joint is past the
  threshold, releases and rises.
- A hinge about the vertical whose body reaches further from the axis than the open fingers span (a
  door, `DOOR_MIN_REACH`): the closed fingers come down beside the door's face that turns towards
  the goal, partway out along the door, and push it round its arc (the contact point's goal is
  itself turned a little further about the hinge each step: closed loop on the joint value) until
  it is past the threshold, then back off.
- A push (`push_action`, for an object too flat to grasp and too wide to straddle, with a rim: a
  plate): the closed fingers come down into its middle and move towards the target region's centre,
  re-aimed each step from the object's position; they meet the rim from inside and drag it along
  until the object is at the region's centre; then they rise and return. (Coming down behind the
  object instead needs room there: libero_goal 5's plate starts 3 cm from the cabinet's handles.)

The joint, its goal interval and the handle come from the task's goal spec
(`pirl.envs.libero_predicates`) and the MJX scene's geoms (`articulation_geometry`).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from pirl.envs.expert import FINGERTIP_BELOW_SITE, LiberoPlanConfig, rotation_error, servo_action

DOOR_MIN_REACH = 0.08
"""A vertical hinge whose body reaches further than this (m) from its axis is a door (pushed round its
arc), else a knob (grasped and twisted): the Panda's fingers open to 0.08 m."""
FINGER_FACE = 0.012
"""Closed fingers: distance (m) from the grip site to the faces they push with (the finger boxes)."""
PALM_ABOVE_SITE = 0.031
"""Bottom of the hand's box above the grip site (m): a pushed door's top must stay below it."""

PUSH_TILT = np.pi / 4
"""A drawer pushed shut: the closed fingers point down, tilted this far (rad) into the push, the closing
axis along the drawer's front. The hand's box (6.4 cm thick, 3.1 cm over the grip site) then stays
behind the fingers' front (upright it stands 2 cm ahead of it, into the handle of the drawer above
when the pushed one is nearly shut; turned to face the cabinet, its 0.2 m length reaches down into
the table under a bottom drawer's handle)."""

ARTIC_PHASES = ("orient", "align", "insert", "close", "move", "release", "retreat", "upright", "done")
"""Phases of the articulated plan, in order (for a knob "orient" and "align" are one waypoint above it)."""


@dataclasses.dataclass(frozen=True)
class ArticGeometry:
    """One articulated goal joint, from the MJX scene (body-frame facts)."""

    kind: str
    """"slide" (a drawer), "hinge" (a knob) or "door" (a hinge pushed round its arc)."""
    body: str
    """Body the joint moves (by name: LIBERO's compiled model and the MJX scene share names)."""
    qpos_adr: int
    """The joint's qpos address."""
    q_goal: float
    """Joint value the plan drives to (inside the goal interval, within the joint's range)."""
    outward: np.ndarray
    """f64[3] body frame: a drawer's pull-out direction; a knob's or door's joint axis."""
    handle: np.ndarray
    """f64[3] body frame: a drawer's handle centre; a knob's grasp point (on its axis, below its top);
    a door's push point (the grip site touching its face)."""
    narrow: np.ndarray
    """f64[3] body frame: a knob's narrow horizontal axis (the fingers close along it); the direction a
    door's push point moves towards the goal; unused for a drawer."""
    pull: bool
    """Drawer: grasp and pull out (True) or push in (False)."""
    increase: bool
    """The goal lies above the threshold (q must rise to q_goal) rather than below."""
    anchor: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    """f64[3] body frame: a point on the joint's axis (a door turns about it)."""
    reach: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    """f64[3] body frame: a door's direction from its axis out along it (the fingers' closing axis
    follows it, turned half way to the goal); unused otherwise."""


@dataclasses.dataclass(frozen=True)
class ArticView:
    """What the articulated plan reads from a simulator (world frame)."""

    grip_pos: np.ndarray
    grip_mat: np.ndarray
    finger_axis: np.ndarray
    """f64[3] unit vector from the right to the left finger."""
    q: float
    """The goal joint's value."""
    body_pos: np.ndarray
    body_mat: np.ndarray


@dataclasses.dataclass(frozen=True)
class ArticPlanState:
    """Where the articulated plan is: phase index (ARTIC_PHASES), steps spent in it, held orientations."""

    phase: int = 0
    steps: int = 0
    ref_mat: np.ndarray | None = None
    """Grip orientation the plan holds (set at the first step)."""
    start_mat: np.ndarray | None = None
    """Grip orientation at the first step, restored at the end ("upright") so that a next plan starts
    pointing down."""
    start_pos: np.ndarray | None = None
    """Grip position at the first step, returned to at the end ("upright")."""
    twist_from: tuple[float, np.ndarray] | None = None
    """Knob: (joint value, grip orientation) when the twist began."""


def _goal_value(lo: float, hi: float, jlo: float, jhi: float) -> float:
    """A value inside (lo, hi) and the joint's range, past the threshold by a margin."""
    a, b = max(lo, jlo), min(hi, jhi)
    if np.isfinite(lo) and not np.isfinite(hi):  # reach above lo
        return min(lo + 0.3 if lo > 0.1 else lo + 0.5 * (b - lo), b - 0.002) if np.isfinite(b) else lo + 0.3
    if np.isfinite(hi) and not np.isfinite(lo):  # reach below hi
        return max(hi - 0.5 * (hi - a), a + 0.002)
    return 0.5 * (a + b)


def articulation_geometry(m: mujoco.MjModel, term: dict) -> ArticGeometry:
    """The plan's facts for one `joints` goal term of a goal spec (`ensure_goal_spec(...)["terms"]`),
    from model `m` (the MJX scene; joint and body names are LIBERO's). The first joint of the term is
    the one driven ("any" terms need one; the "all" terms of the four suites have one joint)."""
    from pirl.envs.libero_scene import geom_points

    if term["kind"] != "joints":
        raise ValueError(f"not an articulation term: {term['term']}")
    j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, term["joints"][0])
    if j < 0:
        raise ValueError(f"model has no joint {term['joints'][0]!r}")
    lo, hi = term["intervals"][0]
    jlo, jhi = m.jnt_range[j] if m.jnt_limited[j] else (-np.inf, np.inf)
    q_goal = _goal_value(lo, hi, jlo, jhi)
    increase = bool(np.isfinite(lo) and not np.isfinite(hi))
    body = int(m.jnt_bodyid[j])
    body_name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, body)
    axis = np.asarray(m.jnt_axis[j], np.float64)
    pts = np.concatenate([geom_points(m, g) for g in np.where(m.geom_bodyid == body)[0]])
    centres = np.array([m.geom_pos[g] for g in np.where(m.geom_bodyid == body)[0]])
    if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE:
        # the pull-out direction: towards q decreasing when "open" is the low end or "close" the high end
        pred = term["term"][0].lower()
        open_low = (pred == "open" and np.isfinite(hi) and not np.isfinite(lo)) or (
            pred == "close" and np.isfinite(lo) and not np.isfinite(hi)
        )
        outward = -axis if open_low else axis
        handle = centres[int(np.argmax(centres @ outward))]  # the geom standing out furthest: the handle
        return ArticGeometry(
            "slide",
            body_name,
            int(m.jnt_qposadr[j]),
            q_goal,
            outward,
            handle,
            np.zeros(3),
            pred == "open",
            increase,
        )
    if m.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE:
        raise ValueError(f"joint {term['joints'][0]!r} is neither slide nor hinge")
    anchor = np.asarray(m.jnt_pos[j], np.float64)
    radial = (pts - anchor) - np.outer((pts - anchor) @ axis, axis)
    if np.linalg.norm(radial, axis=1).max() > DOOR_MIN_REACH:
        return _door_geometry(m, body, body_name, int(m.jnt_qposadr[j]), q_goal, increase, axis, anchor)
    # a knob: grasp on the axis, 1.5 cm under the top; close along the narrow side of its upper part
    top = pts @ axis
    upper = pts[top > top.max() - 0.025]
    perp = upper - np.outer(upper @ axis, axis)
    c = perp - perp.mean(0)
    w, v = np.linalg.eigh(c.T @ c)
    narrow = v[:, int(np.argmin(np.where(np.abs(v.T @ axis) > 0.9, np.inf, w)))]
    handle = anchor + axis * (top.max() - anchor @ axis - 0.015)
    return ArticGeometry(
        "hinge", body_name, int(m.jnt_qposadr[j]), q_goal, axis, handle, narrow, True, increase
    )


def _door_geometry(
    m: mujoco.MjModel, body: int, body_name: str, qpos_adr: int, q_goal: float, increase: bool,
    axis: np.ndarray, anchor: np.ndarray, push_frac: float = 0.6,
) -> ArticGeometry:  # fmt: skip
    """A door's push point: `push_frac` of its reach out along it (short of a handle at its free end),
    on the face that turns towards the goal (the door's geoms spanning that radius), the grip site
    `FINGER_FACE` off it, its fingertips down to 2 cm under the door's top with the hand above it."""
    from pirl.envs.libero_scene import geom_points

    per_geom = [geom_points(m, g) - anchor for g in np.where(m.geom_bodyid == body)[0]]
    pts = np.concatenate(per_geom)
    flat = pts - np.outer(pts @ axis, axis)

    def spread(p: np.ndarray) -> tuple[float, np.ndarray]:
        c = p - np.outer(p @ axis, axis)
        c = c - c.mean(0)
        w, v = np.linalg.eigh(c.T @ c)
        return float(w.max()), v[:, int(np.argmax(w))]

    # the door's panel is its widest geom (handles on it would tilt the whole body's principal axis)
    _, reach = max((spread(p) for p in per_geom), key=lambda sv: sv[0])
    reach = reach if flat.mean(0) @ reach > 0 else -reach
    # the push point moves along axis x reach for a rising joint (a right-handed turn about the axis)
    move = np.cross(axis, reach) * (1.0 if increase else -1.0)
    r_push = push_frac * float((flat @ reach).max())
    face = min(float((p @ move).min()) for p in per_geom if (p @ reach).min() <= r_push <= (p @ reach).max())
    top = float((pts @ axis).max())
    height = top - (PALM_ABOVE_SITE - 0.011)  # the hand's box 1.1 cm over the door's top
    handle = anchor + r_push * reach + (face - FINGER_FACE) * move + height * axis
    return ArticGeometry(
        "door", body_name, qpos_adr, q_goal, axis, handle, move, False, increase, anchor, reach
    )


def articulation_view(m: mujoco.MjModel, d, geo: ArticGeometry) -> ArticView:
    """ArticView from a model and data with MuJoCo's field names (qpos, xpos, xmat, site_xpos, site_xmat)."""
    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
    left = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_leftfinger")
    right = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_rightfinger")
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, geo.body)
    axis = np.asarray(d.xpos[left], np.float64) - np.asarray(d.xpos[right], np.float64)
    return ArticView(
        grip_pos=np.array(d.site_xpos[site], np.float64),
        grip_mat=np.array(d.site_xmat[site], np.float64).reshape(3, 3),
        finger_axis=axis / max(np.linalg.norm(axis), 1e-9),
        q=float(np.asarray(d.qpos)[geo.qpos_adr]),
        body_pos=np.array(d.xpos[body], np.float64),
        body_mat=np.array(d.xmat[body], np.float64).reshape(3, 3),
    )


def _axis_rot(axis: np.ndarray, angle: float) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, np.float64), float(angle))
    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, q)
    return r.reshape(3, 3)


def _facing(view: ArticView, into: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Grip orientation with its approach axis (site z) along `into` and the fingers closing vertically
    (turned by `roll` about the approach axis), the one of the two nearest the current orientation."""
    closing_local = view.grip_mat.T @ view.finger_axis
    best = None
    for up in (1.0, -1.0):
        # columns: world images of the site axes; solve R @ e_z = into, R @ closing_local = up * z
        z = into / np.linalg.norm(into)
        c_world = np.array([0.0, 0.0, up])
        c_world = c_world - z * (c_world @ z)
        c_world /= np.linalg.norm(c_world)
        c_world = np.cos(roll) * c_world + np.sin(roll) * np.cross(z, c_world)
        # closing_local lies in the site's xy plane (the fingers move across the approach axis)
        cl = closing_local - np.array([0.0, 0.0, closing_local[2]])
        cl /= np.linalg.norm(cl)
        other_local = np.cross([0.0, 0.0, 1.0], cl)
        other_world = np.cross(z, c_world)
        src = np.stack([cl, other_local, [0.0, 0.0, 1.0]], 1)
        dst = np.stack([c_world, other_world, z], 1)
        r = dst @ src.T
        ang = np.linalg.norm(rotation_error(r, view.grip_mat))
        if best is None or ang < best[0]:
            best = (ang, r)
    return best[1]


def _yawed(view: ArticView, want_axis: np.ndarray) -> np.ndarray:
    """The grip's orientation turned about the vertical (at most 90 degrees either way) so that its
    closing axis lies along `want_axis`'s horizontal part."""
    have = view.finger_axis
    yaw = np.arctan2(want_axis[1], want_axis[0]) - np.arctan2(have[1], have[0])
    yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
    return _axis_rot(np.array([0.0, 0.0, 1.0]), yaw) @ view.grip_mat


def _leaning(view: ArticView, push: np.ndarray, tilt: float) -> np.ndarray:
    """Grip orientation with its closing axis horizontal across `push` (the sign nearest the current
    one) and its approach axis (site z) pointing down, turned `tilt` towards `push` (the hand leans
    away from it)."""
    p = np.array([push[0], push[1], 0.0]) / max(np.linalg.norm(push[:2]), 1e-9)
    closing = np.cross([0.0, 0.0, 1.0], p)
    closing *= 1.0 if closing @ view.finger_axis >= 0 else -1.0
    approach = np.sin(tilt) * p - np.cos(tilt) * np.array([0.0, 0.0, 1.0])
    cl = view.grip_mat.T @ view.finger_axis  # the closing axis in the site frame (in its xy plane)
    cl = np.array([cl[0], cl[1], 0.0]) / max(np.linalg.norm(cl[:2]), 1e-9)
    src = np.stack([cl, np.cross([0.0, 0.0, 1.0], cl), [0.0, 0.0, 1.0]], 1)
    dst = np.stack([closing, np.cross(approach, closing), approach], 1)
    return dst @ src.T


def _upright_want(view: ArticView, state: ArticPlanState, ref: np.ndarray) -> np.ndarray:
    """The plan's orientation until the grip is back within 5 cm of where it started, then the
    starting one: turned upright far out (a top drawer pulled open), the stretched arm reached
    its elbow limit and stalled (a singular pose the OSC cannot leave)."""
    near = np.linalg.norm(view.grip_pos - state.start_pos) < 0.05
    return state.start_mat if near else ref


def articulated_action(
    cfg: LiberoPlanConfig, geo: ArticGeometry, view: ArticView, state: ArticPlanState
) -> tuple[np.ndarray, ArticPlanState]:
    """One control step of the articulated plan: (OSC_POSE action f32[7], next plan state)."""
    out_w = view.body_mat @ geo.outward
    handle = view.body_pos + view.body_mat @ geo.handle
    past = view.q >= geo.q_goal if geo.increase else view.q <= geo.q_goal
    name = ARTIC_PHASES[state.phase]
    if state.start_mat is None:
        state = dataclasses.replace(state, start_mat=view.grip_mat, start_pos=view.grip_pos)
    ref = state.ref_mat
    if geo.kind == "slide":
        if ref is None:
            into = -np.cos(cfg.artic_pitch) * out_w - np.sin(cfg.artic_pitch) * np.array([0.0, 0.0, 1.0])
            ref = _facing(view, into, cfg.artic_roll) if geo.pull else _leaning(view, -out_w, PUSH_TILT)
        # pulling: half closed on the way in (fully open, the fingers' outer faces reach 66 mm from the
        # grip axis: into the handles 70 mm above and below), closed on the handle, open to let go;
        # pushing: closed throughout. robosuite's gripper moves by the action's sign (0 holds).
        if not geo.pull or name in ("close", "move"):
            grip = 1.0
        elif name in ("orient", "align", "insert"):
            grip = 1.0 if name == "orient" and state.steps < cfg.half_close_steps else 0.0
        else:
            grip = -1.0
        stand = 0.12
        if name == "orient":
            goal = handle + out_w * stand + np.array([0.0, 0.0, cfg.artic_clearance])
        elif name == "align":
            goal = handle + out_w * stand
        elif name == "insert":
            goal = handle + out_w * (0.008 if geo.pull else 0.03)
        elif name == "close":
            goal = view.grip_pos
        elif name == "move":
            # closed loop on the joint: the handle still has |q_goal - q| to travel, plus a little
            direction = out_w if geo.pull else -out_w
            goal = view.grip_pos + direction * min(abs(geo.q_goal - view.q) + 0.01, 0.05)
        elif name == "release":
            goal = view.grip_pos
        elif name == "retreat":
            goal = handle + out_w * stand
        else:  # upright, done: back to where the plan started, then turn back
            goal = state.start_pos
        want = ref
        if name in ("upright", "done"):
            want = _upright_want(view, state, ref)
    elif geo.kind == "door":  # closed fingers against its face, pushed round the hinge
        axis_w = view.body_mat @ geo.outward
        anchor_w = view.body_pos + view.body_mat @ geo.anchor
        move_w = view.body_mat @ geo.narrow
        if ref is None:
            # the closing axis along the door half way to the goal: the hand's box stays clear of the
            # door's top over the whole turn without turning the wrist with it
            ref = _yawed(view, _axis_rot(axis_w, 0.5 * (geo.q_goal - view.q)) @ view.body_mat @ geo.reach)
        grip, want = 1.0, ref
        up = np.array([0.0, 0.0, 1.0])
        if name == "orient":
            goal = handle - move_w * 0.05 + up * 0.08
        elif name == "align":
            goal = handle - move_w * 0.05
        elif name == "insert":
            goal = handle
        elif name in ("close", "release"):
            goal = view.grip_pos
        elif name == "move":
            # the push point turned a little further about the hinge: closed loop on the joint value
            turn = np.sign(geo.q_goal - view.q) * min(abs(geo.q_goal - view.q) + 0.1, 0.3)
            goal = anchor_w + _axis_rot(axis_w, turn) @ (handle - anchor_w)
        elif name == "retreat":
            goal = handle - move_w * 0.1 + up * 0.05
        else:  # upright, done
            goal = state.start_pos
            want = _upright_want(view, state, ref)
    else:  # a knob: down over its axis, grasp, twist about the axis
        if ref is None:
            ref = _yawed(view, view.body_mat @ geo.narrow)
        axis_w = view.body_mat @ geo.outward
        grip = 1.0 if name in ("close", "move") else -1.0
        want = ref
        if name in ("orient", "align"):
            goal = handle + axis_w * 0.08
        elif name == "insert":
            goal = handle
        elif name in ("close", "release"):
            goal = view.grip_pos
        elif name == "move":
            goal = handle  # on the axis: it stays put while the knob turns
            q0, mat0 = state.twist_from if state.twist_from is not None else (view.q, view.grip_mat)
            state = dataclasses.replace(state, twist_from=(q0, mat0))
            want = _axis_rot(axis_w, geo.q_goal - q0 + 0.1 * np.sign(geo.q_goal - q0)) @ mat0
        else:  # retreat, upright, done
            goal = handle + axis_w * 0.12 if name == "retreat" else state.start_pos
            if name in ("upright", "done"):
                want = _upright_want(view, state, ref)
    err = goal - view.grip_pos
    speed = cfg.carry_speed if name == "move" else 1.0
    action = servo_action(cfg, err, rotation_error(want, view.grip_mat), grip, speed)
    rot_ok = np.linalg.norm(rotation_error(want, view.grip_mat)) < (0.3 if name == "upright" else 0.1)
    if name in ("close", "release"):
        done = state.steps + 1 >= (1 if geo.kind == "door" else cfg.grip_steps)  # a door's fingers stay shut
    elif name == "move":
        done = bool(past) or state.steps + 1 >= 2 * cfg.phase_timeout
    elif name == "done":
        done = False
    elif name == "upright":
        done = (
            np.linalg.norm(err) < 2 * cfg.reach_tol and rot_ok
        ) or state.steps + 1 >= cfg.phase_timeout // 2
    else:
        done = (
            np.linalg.norm(err) < cfg.reach_tol * (1.0 if name in ("align", "insert") else 2.0) and rot_ok
        ) or (state.steps + 1 >= cfg.phase_timeout)
    nxt = dataclasses.replace(
        state,
        ref_mat=ref,
        phase=state.phase + 1 if done else state.phase,
        steps=0 if done else state.steps + 1,
    )
    return action, nxt


# ----------------------------------------------------------------------------- pushing an object

PUSH_PHASES = ("above", "down", "push", "lift", "return", "done")
"""Phases of the push plan, in order."""

PUSH_MAX_HEIGHT = 0.03
"""An object lower than this (m) is pushed, not picked, when it is also wider than the open fingers
and holds its fingers inside a rim: too low for the fingers to straddle its wall (the pick-and-place
grasps 2 cm under its top)."""
PUSH_MIN_WIDTH = 0.08
"""... (m, its smaller horizontal extent): narrower, it fits between the open fingers."""
PUSH_MIN_RIM = 0.008
"""... and its rim stands this much (m) over its floor at its middle, so the closed fingers, set down
on the floor, catch the rim from inside."""


@dataclasses.dataclass(frozen=True)
class PushConfig:
    """Waypoints and gains of the push plan (m, control steps)."""

    hover: float = 0.05
    """Height above the push height at which the fingers arrive over the object's middle (and
    return to when they slipped out over its rim)."""
    tip_clearance: float = -0.007
    """Fingertips above the object's floor while pushing (below: they press on it, and the rim they
    drag by is low; at -0.004 MJX's fingers slipped out over the plate's rim more often)."""
    lead: float = 0.04
    """How far ahead of where it is the grip is driven while pushing (m; less near the goal)."""
    speed: float = 0.5
    """Largest position action while pushing."""
    tol_frac: float = 0.25
    """The push stops with the object's centre this fraction of the region's half-size from its centre."""
    timeout: int = 250
    """Steps after which the push gives up."""
    cell: float = 0.01
    """Grid step (m) of the object's path."""
    margin: float = 0.012
    """Clearance (m) the path keeps between the object and other bodies where there is room, and
    the depth inside the region's edge it ends at."""
    blocked_cost: float = 20.0
    """Cost per metre of the path where it passes closer than `margin` (per metre in the clear: 1)."""
    look_ahead: float = 0.04
    """The object is steered at the path's point this far (m) beyond the point nearest to it."""
    max_reach: float = 0.75
    """The grip's goals are kept within this horizontal distance (m) of the robot's base: further out,
    low over the table, the Panda's elbow straightens onto its limit (-0.07 rad), a singular posture
    the OSC cannot leave (MJX's arm stalled there at 0.749-0.764 m in libero_goal 5; at 0.73 the real
    LIBERO lost pushes that need the grip out to 0.74)."""


@dataclasses.dataclass(frozen=True)
class PushGeometry:
    """An object with a rim (a plate) to push onto a region (from the MJX scene and the goal term)."""

    centre: np.ndarray
    """f64[3] the object's middle in its body frame (its floor's height)."""
    tol: float
    """Stop within this distance (m) of the region's centre."""
    radius: float
    """Half the object's smaller horizontal extent (m): the grip further than this from its centre
    has slipped out over the rim (the plan goes back over the middle)."""
    reach: float = 0.0
    """The object's largest horizontal distance from its middle (m): its path keeps this far (plus
    `PushConfig.margin`) from everything else."""
    height: tuple[float, float] = (0.0, 0.0)
    """Its bottom and top in its body frame (z, m): the geoms of other bodies between them block it."""
    base: np.ndarray | None = None
    """f64[2] the robot's base (world xy; `PushConfig.max_reach` is measured from it), None: no limit."""
    others: tuple = ()
    """(body name, f64[n, 3] the points of one of its geoms in its frame) for every geom of every other
    body but the robot's: placed at the episode's poses (`push_path`), those at the object's height
    are its obstacles."""


def _footprint(m: mujoco.MjModel, body: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(lowest corner, highest corner, floor) of a body's geoms in its frame; the floor is the top
    of the geoms whose horizontal extent covers the body's middle (-inf if none does)."""
    from pirl.envs.libero_scene import geom_points, tops_over

    per_geom = [geom_points(m, g) for g in np.where(m.geom_bodyid == body)[0]]
    if not per_geom:
        return np.zeros(3), np.zeros(3), -np.inf
    pts = np.concatenate(per_geom)
    lo, hi = pts.min(0), pts.max(0)
    return lo, hi, max(tops_over(per_geom, 0.5 * (lo[:2] + hi[:2])), default=-np.inf)


def pushable(m: mujoco.MjModel, body: int) -> bool:
    """Whether the object of `body` (its own geoms, in the MJX scene `m`) is pushed rather than
    picked: lower than PUSH_MAX_HEIGHT, wider than PUSH_MIN_WIDTH, a rim PUSH_MIN_RIM over its floor."""
    lo, hi, floor = _footprint(m, body)
    width = hi - lo
    return bool(
        width[2] < PUSH_MAX_HEIGHT and width[:2].min() > PUSH_MIN_WIDTH and hi[2] - floor > PUSH_MIN_RIM
    )


def push_geometry(
    m: mujoco.MjModel, body: int, size: np.ndarray, cfg: PushConfig = PushConfig()
) -> PushGeometry:
    """PushGeometry of the object of `body` (MJX scene `m`) for a region of half-size `size`."""
    from pirl.envs.libero_scene import geom_points, robot_base_xy, root_body

    lo, hi, floor = _footprint(m, body)
    centre = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), floor])
    radius = 0.5 * float(np.min(hi[:2] - lo[:2]))
    pts = np.concatenate([geom_points(m, g) for g in np.where(m.geom_bodyid == body)[0]])
    reach = float(np.linalg.norm(pts[:, :2] - centre[:2], axis=1).max())
    others = []
    for g in range(m.ngeom):
        b = int(m.geom_bodyid[g])
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or ""
        top = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, root_body(m, b)) or "" if b else ""
        if b == 0 or root_body(m, b) == root_body(m, body) or top.startswith(("robot0_", "mount0_")):
            continue
        if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE:
            continue
        others.append((name, geom_points(m, g)))
    tol = cfg.tol_frac * float(np.min(np.asarray(size)[:2]))
    return PushGeometry(
        centre, tol, radius, reach, (float(lo[2]), float(hi[2])), base=robot_base_xy(m), others=tuple(others)
    )


def _hull(p: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull f64[k, 2] of 2-D points (Andrew's monotone chain)."""
    p = np.unique(np.round(p, 6), axis=0)
    if len(p) < 3:
        return p

    def half(points):
        out = []
        for q in points:
            while len(out) >= 2 and np.cross(out[-1] - out[-2], q - out[-2]) <= 0:
                out.pop()
            out.append(q)
        return out[:-1]

    return np.array(half(p) + half(p[::-1]))


def _polygon_distance(cells: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance f64[n] from 2-D points to a convex polygon (0 inside); `poly` counter-clockwise."""
    if len(poly) < 3:
        return np.linalg.norm(cells[:, None] - poly[None], axis=-1).min(1)
    a, b = poly, np.roll(poly, -1, axis=0)
    e = b - a
    rel = cells[:, None] - a[None]
    inside = np.all(e[None, :, 0] * rel[..., 1] - e[None, :, 1] * rel[..., 0] >= 0, axis=1)
    t = np.clip((rel * e[None]).sum(-1) / np.maximum((e * e).sum(-1), 1e-12)[None], 0.0, 1.0)
    dist = np.linalg.norm(rel - t[..., None] * e[None], axis=-1).min(1)
    return np.where(inside, 0.0, dist)


def push_path(
    geo: PushGeometry, pose, obj_pos: np.ndarray, obj_mat: np.ndarray, target: np.ndarray,
    size: np.ndarray, cfg: PushConfig = PushConfig(),
) -> np.ndarray:  # fmt: skip
    """The object's centre's way f64[k, 2] (world xy) from where it is to the region (half-size `size`
    about `target`, shrunk by `cfg.margin`), on a `cfg.cell` grid: the shortest, where a step costs
    its length times `cfg.blocked_cost` while the object would come within `cfg.margin` of another
    body's geom at its height (`pose(name)`: (xpos, xmat) of a body by name, in the episode's
    simulator), so it goes round them where there is room."""
    import heapq

    centre = obj_pos + obj_mat @ geo.centre
    bottom, top = obj_pos[2] + geo.height[0], obj_pos[2] + geo.height[1]
    polys = []
    for name, pts in geo.others:
        xpos, xmat = pose(name)
        w = xpos + pts @ np.asarray(xmat).reshape(3, 3).T
        if w[:, 2].max() > bottom + 0.004 and w[:, 2].min() < top:  # not its support, not overhead
            polys.append(_hull(w[:, :2]))
    lo = np.minimum(centre[:2], target[:2]) - 0.15
    hi = np.maximum(centre[:2], target[:2]) + 0.15
    nx, ny = (np.ceil((hi - lo) / cfg.cell).astype(int) + 1).tolist()
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    cells = lo + cfg.cell * np.stack([gx.ravel(), gy.ravel()], 1)
    clear = np.full(len(cells), np.inf)
    for poly in polys:
        clear = np.minimum(clear, _polygon_distance(cells, poly))
    blocked = (clear < geo.reach + cfg.margin).reshape(nx, ny)
    inner = np.maximum(np.asarray(size[:2]) - cfg.margin, cfg.cell)
    goal = np.all(np.abs(cells - target[:2]) <= inner, axis=1).reshape(nx, ny)
    start = tuple(np.clip(np.round((centre[:2] - lo) / cfg.cell).astype(int), 0, [nx - 1, ny - 1]).tolist())
    dist, prev, heap = {start: 0.0}, {}, [(0.0, start)]
    end = None
    while heap:
        c, (i, j) = heapq.heappop(heap)
        if c > dist[(i, j)]:
            continue
        if goal[i, j]:
            end = (i, j)
            break
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ni, nj = i + di, j + dj
                if (di or dj) and 0 <= ni < nx and 0 <= nj < ny:
                    step = np.hypot(di, dj) * (cfg.blocked_cost if blocked[ni, nj] else 1.0)
                    if c + step < dist.get((ni, nj), np.inf):
                        dist[(ni, nj)], prev[(ni, nj)] = c + step, (i, j)
                        heapq.heappush(heap, (c + step, (ni, nj)))
    if end is None:
        return np.array([target[:2]])
    way = [end]
    while way[-1] != start:
        way.append(prev[way[-1]])
    return lo + cfg.cell * np.array(way[::-1], np.float64)


@dataclasses.dataclass(frozen=True)
class PushPlanState:
    """Where the push plan is: phase index (PUSH_PHASES), steps spent in it, held poses."""

    phase: int = 0
    steps: int = 0
    ref_mat: np.ndarray | None = None
    """Grip orientation while pushing (the starting one turned so the fingers lie across the push)."""
    start_mat: np.ndarray | None = None
    start_pos: np.ndarray | None = None
    """Grip pose at the first step, returned to at the end."""
    path: np.ndarray | None = None
    """f64[k, 2] the object's way (`push_path`), set by the caller before the first step; None: straight
    to the region."""


def push_action(
    cfg: LiberoPlanConfig, push: PushConfig, geo: PushGeometry, view, state: PushPlanState
) -> tuple[np.ndarray, PushPlanState]:
    """One control step of the push plan: (OSC_POSE action f32[7], next plan state). `view`: a
    `pirl.envs.expert.PickPlaceView` (grip, object and target positions). The closed fingers go
    down into the object's middle, just over its floor, and move towards the region: they meet the
    rim from inside and drag the object with them (the rim slides along them until the contact lies
    on the line through its centre, so the object follows the grip without being aimed at)."""
    name = PUSH_PHASES[state.phase]
    obj_mat = view.obj_mat if view.obj_mat is not None else np.eye(3)
    centre = view.obj_pos + obj_mat @ geo.centre
    path = state.path if state.path is not None else view.target_pos[None, :2]
    near = int(np.argmin(np.linalg.norm(path - centre[:2], axis=1)))
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path[near:], axis=0), axis=1))])
    aim = path[near + int(np.searchsorted(along, push.look_ahead).clip(0, len(along) - 1))]
    line = aim - centre[:2]
    remaining = float(np.linalg.norm(path[-1] - centre[:2]))
    d = np.append(line / max(float(np.linalg.norm(line)), 1e-9), 0.0)
    if state.start_mat is None:
        state = dataclasses.replace(state, start_mat=view.grip_mat, start_pos=view.grip_pos)
    ref = state.ref_mat
    if ref is None:  # the fingers across the push: both meet the rim
        aview = ArticView(view.grip_pos, view.grip_mat, view.finger_axis, 0.0, np.zeros(3), np.eye(3))
        ref = _yawed(aview, np.cross([0.0, 0.0, 1.0], d))
    height = centre[2] + FINGERTIP_BELOW_SITE + push.tip_clearance
    want = ref
    if name == "above":
        goal = np.array([centre[0], centre[1], height + push.hover])
        if np.linalg.norm(goal[:2] - view.grip_pos[:2]) > push.hover:
            # across at the height it comes from, then down: a diagonal descent reached the hover
            # height short of the object (each axis' action saturates) and swept the hand low across
            # the bowl beside the plate, which pushed the plate off its path (libero_goal 5, MJX)
            goal[2] = max(goal[2], view.grip_pos[2])
    elif name == "down":
        goal = np.array([centre[0], centre[1], height])
    elif name == "push":
        # towards the path's point ahead, by what the object still has to go (re-aimed each step)
        goal = view.grip_pos + d * min(remaining, push.lead)
        goal[2] = height
    elif name == "lift":
        goal = np.array([view.grip_pos[0], view.grip_pos[1], height + push.hover])
    else:  # return, done
        goal = state.start_pos
        want = state.start_mat
    if name in ("above", "down", "push") and geo.base is not None:
        out = goal[:2] - geo.base
        r = float(np.linalg.norm(out))
        if r > push.max_reach:  # pulled in along the line from the base (see `PushConfig.max_reach`)
            goal = np.append(geo.base + out * (push.max_reach / r), goal[2])
    err = goal - view.grip_pos
    speed = push.speed if name == "push" else 1.0
    rot = rotation_error(want, view.grip_mat)
    action = servo_action(cfg, err, rot, 1.0, speed)
    if name == "down":  # over the middle, down on the floor (the press target lies under it)
        reached = np.linalg.norm(err[:2]) < cfg.reach_tol and err[2] > -cfg.reach_tol - max(
            -push.tip_clearance, 0.0
        )
    else:
        reached = np.linalg.norm(err) < 2 * cfg.reach_tol
    rot_ok = np.linalg.norm(rot) < (0.3 if name == "return" else 0.1)
    phase = state.phase
    if name == "push":
        done = remaining < geo.tol or state.steps + 1 >= push.timeout
        if not done and np.linalg.norm(view.grip_pos[:2] - centre[:2]) > geo.radius:
            phase, done = PUSH_PHASES.index("above") - 1, True  # slipped out over the rim: start again
    elif name == "done":
        done = False
    else:
        done = (reached and rot_ok) or state.steps + 1 >= cfg.phase_timeout
    nxt = dataclasses.replace(
        state,
        ref_mat=ref,
        phase=phase + 1 if done else phase,
        steps=0 if done else state.steps + 1,
    )
    return action, nxt

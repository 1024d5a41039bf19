"""Scripted expert for LIBERO's articulated goals: open / close a drawer, turn on a stove's knob.

Host numpy, one plan for both simulators (as `pirl.envs.expert.pick_place_action`): the plan reads a
simulator-neutral `ArticView` (grip site, finger axis, the joint's value and its body's pose), built
by `articulation_view` from any data object with MuJoCo's field names (MuJoCo C's MjData in the real
LIBERO, the host copy of an mjx.Data in pirl's scene), and returns robosuite OSC_POSE actions.

- A slide joint (a drawer): the grip turns to face the drawer's front (fingers horizontal, pointing
  into the cabinet, closing vertically: a top-down grasp of a drawer's handle is blocked by the
  handle of the drawer above), comes in front of the handle, then either grasps it and pulls along
  the drawer's outward axis (open) or pushes it in with closed fingers (close), each until the joint
  is past the goal's threshold (closed loop on the joint value), then backs off, returns to where it
  started and turns back to its starting orientation (so that a next plan starts pointing down).
- A hinge about the vertical (a stove's knob): the grip comes down over the joint's axis, closes
  across the knob's narrow horizontal side, twists about the axis until the joint is past the
  threshold, releases and rises.

The joint, its goal interval and the handle come from the task's goal spec
(`pirl.envs.libero_predicates`) and the MJX scene's geoms (`articulation_geometry`).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from pirl.envs.expert import LiberoPlanConfig, rotation_error

ARTIC_PHASES = ("orient", "align", "insert", "close", "move", "release", "retreat", "upright", "done")
"""Phases of the articulated plan, in order (for a knob "orient" and "align" are one waypoint above it)."""


@dataclasses.dataclass(frozen=True)
class ArticGeometry:
    """One articulated goal joint, from the MJX scene (body-frame facts)."""

    kind: str
    """"slide" (a drawer) or "hinge" (a knob)."""
    body: str
    """Body the joint moves (by name: LIBERO's compiled model and the MJX scene share names)."""
    qpos_adr: int
    """The joint's qpos address."""
    q_goal: float
    """Joint value the plan drives to (inside the goal interval, within the joint's range)."""
    outward: np.ndarray
    """f64[3] body frame: a drawer's pull-out direction; a knob's joint axis."""
    handle: np.ndarray
    """f64[3] body frame: a drawer's handle centre; a knob's grasp point (on its axis, below its top)."""
    narrow: np.ndarray
    """f64[3] body frame: a knob's narrow horizontal axis (the fingers close along it); unused for a drawer."""
    pull: bool
    """Drawer: grasp and pull out (True) or push in (False)."""
    increase: bool
    """The goal lies above the threshold (q must rise to q_goal) rather than below."""


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
    # a knob: grasp on the axis, 1.5 cm under the top; close along the narrow side of its upper part
    top = pts @ axis
    upper = pts[top > top.max() - 0.025]
    perp = upper - np.outer(upper @ axis, axis)
    c = perp - perp.mean(0)
    w, v = np.linalg.eigh(c.T @ c)
    narrow = v[:, int(np.argmin(np.where(np.abs(v.T @ axis) > 0.9, np.inf, w)))]
    anchor = np.asarray(m.jnt_pos[j], np.float64)
    handle = anchor + axis * (top.max() - anchor @ axis - 0.015)
    return ArticGeometry(
        "hinge", body_name, int(m.jnt_qposadr[j]), q_goal, axis, handle, narrow, True, increase
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
            ref = _facing(view, -out_w, cfg.artic_roll)
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
    else:  # a knob: down over its axis, grasp, twist about the axis
        if ref is None:
            want_axis, have = view.body_mat @ geo.narrow, view.finger_axis
            yaw = np.arctan2(want_axis[1], want_axis[0]) - np.arctan2(have[1], have[0])
            yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
            ref = _axis_rot(np.array([0.0, 0.0, 1.0]), yaw) @ view.grip_mat
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
    a_pos = np.clip(err / 0.05 * cfg.pos_gain, -speed, speed)
    a_rot = np.clip(rotation_error(want, view.grip_mat) / 0.5 * cfg.rot_gain, -1.0, 1.0)
    action = np.concatenate([a_pos, a_rot, [grip]]).astype(np.float32)
    rot_ok = np.linalg.norm(rotation_error(want, view.grip_mat)) < (0.3 if name == "upright" else 0.1)
    if name in ("close", "release"):
        done = state.steps + 1 >= cfg.grip_steps
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

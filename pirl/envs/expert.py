"""Scripted experts: a reactive phase machine per goal, pure JAX (jit / batch over envs).

The expert reads the simulator state only (no memory): it works on the first goal of the task
that does not hold yet and picks the phase from geometry:
  pick-and-place  approach above the object -> descend -> close -> (fingers stopped) lift ->
                  transport over the region at reduced speed, wrist still -> lower -> release
                  (a missed grasp re-opens and retries)
  drawer          grasp the handle from above -> pull along the drawer axis
  knob            straddle the knob bar with the fingers -> close -> rotate the wrist
A placed object still between the fingers is released and cleared upward before the next goal;
when every goal holds the expert opens the gripper and retreats upward. Actions are the env's
7-D OSC-style actions: a proportional pose servo, saturated to [-1, 1].

`run_episodes` rolls policies (the expert, random actions) out from fixed initial states and
reports success: the measure behind the "expert >= 90%, random < 5%" checks.

For LIBERO's own tasks (pirl.envs.libero_scene), `pick_place_action` runs the same pick-and-place
phases as a waypoint plan in host numpy, so that one plan drives both the MJX scene and the real
LIBERO (pirl.envs.libero_check, check (c)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from pirl.envs import controller as ctl
from pirl.envs import tasks as tsk
from pirl.envs.env import ManipEnv, State

# TCP orientation with the gripper pointing down at yaw 0 (home): x -> x, y -> -y, z -> -z.
R_DOWN = np.diag([1.0, -1.0, -1.0])
TCP_TIP_CLEARANCE = 0.026  # m: lowest TCP height that keeps the fingertips off the table
# |TCP yaw| (rad from home) the expert plans grasps within; the nearest symmetric grasp yaw
# drifts with every regrasp and would otherwise wind the last joint into its limit.
YAW_LIMIT = 2.0
FINGERTIP_BELOW_SITE = 0.009
"""Fingertips below the grip site (m)."""
HAND_HALF_DEPTH = 0.032
"""Half thickness (m) of the hand's box across its closing axis (the Panda hand's 6.4 cm)."""
ENTRY_BACK_OUT = 0.08
"""A side entry's retreat backs the open hand this far (m) out along the entry before it rises."""
HANDLE_DEPTH = 0.02
"""A side entry (`PickPlaceGeometry.entry`) grasps the object's part within this (m) of its outermost
point facing out of the container (the mug's fitted handle stands 2.5 cm out from its cup), half way in."""


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """Gains and heights of the scripted expert."""

    pos_gain: float = 1.2
    """Action per (error / pos_scale)."""
    rot_gain: float = 1.0
    """Action per (rotation error / rot_scale)."""
    hover: float = 0.08
    """Approach height above the grasp point (m)."""
    carry_clearance: float = 0.1
    """Object bottom height while transporting (m)."""
    place_drop: float = 0.012
    """Object bottom height above the region surface at release (m)."""
    basket_drop: float = 0.06
    """Object bottom height at release over a basket (clears its rim)."""
    carry_speed: float = 0.5
    """Largest position action while holding an object (fast swings shake it out of the grip)."""
    knob_rate: float = 0.3
    """Yaw lead (rad) while turning a knob."""
    retreat_height: float = 0.3
    """TCP height after all goals hold."""


MECH_NONE, MECH_DRAWER, MECH_KNOB = 0, 1, 2


def _mechanism_tables(env: ManipEnv):
    """Per (task, goal): mechanism type, body whose origin is the grasp point, pull direction.

    Host numpy arrays computed from the MuJoCo model: they enter a trace as constants, so nothing
    traced is ever kept between calls (an earlier cache of jnp arrays on the env object leaked a
    tracer into the next compilation)."""
    m = env.info.mj_model
    t_n = env.num_tasks
    kind = np.zeros((t_n, tsk.MAX_GOALS), np.int32)
    body = np.zeros((t_n, tsk.MAX_GOALS), np.int32)
    pull = np.zeros((t_n, tsk.MAX_GOALS, 3), np.float32)
    for t, task in enumerate(env.suite.tasks):
        for g, goal in enumerate(task.goals):
            if goal.kind == "open":
                kind[t, g], body[t, g] = MECH_DRAWER, m.body("drawer_handle").id
                jid = m.joint(goal.joint).id
                b = m.jnt_bodyid[jid]
                # World axis of the (static-parented) slide joint at the model's reference pose.
                d = mujoco.MjData(m)
                mujoco.mj_kinematics(m, d)
                pull[t, g] = d.xmat[b].reshape(3, 3) @ m.jnt_axis[jid]
            elif goal.kind == "turn_on":
                kind[t, g], body[t, g] = MECH_KNOB, m.body("knob").id
    return kind, body, pull


def _yaw_of(mat: jax.Array) -> jax.Array:
    """Yaw psi of a TCP orientation written as Rz(psi) @ R_DOWN."""
    rz = mat @ jnp.asarray(R_DOWN).T
    return jnp.arctan2(rz[1, 0], rz[0, 0])


def _wrap(x: jax.Array, period: jax.Array) -> jax.Array:
    return (x + period / 2) % period - period / 2


def _fold(psi: jax.Array, period: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Shift a yaw by one symmetry period back into [lo, hi] (the wrist joint's usable range)."""
    return jnp.where(psi > hi, psi - period, jnp.where(psi < lo, psi + period, psi))


def _rz(psi: jax.Array) -> jax.Array:
    c, s = jnp.cos(psi), jnp.sin(psi)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _action(cfg: ExpertConfig, env: ManipEnv, tcp, mat, target, psi_des, grip, speed=1.0) -> jax.Array:
    c = env.config.controller
    a_pos = jnp.clip((target - tcp) / c.pos_scale * cfg.pos_gain, -speed, speed)
    r_des = _rz(psi_des) @ jnp.asarray(R_DOWN)
    a_rot = jnp.clip(ctl.mat_to_rotvec(r_des @ mat.T) / c.rot_scale * cfg.rot_gain, -1.0, 1.0)
    return jnp.concatenate([a_pos, a_rot, grip[None]]).astype(jnp.float32)


def _approach(cfg, tcp, yaw_err, gap, grasp, half_width):
    """Not holding: (target f32[3], grip) to get the open fingers around `grasp` and close."""
    hover = grasp[2] + cfg.hover
    xy_err = jnp.linalg.norm(grasp[:2] - tcp[:2])
    missed = gap < 2 * half_width - 0.02
    near = xy_err < 0.02
    fine = (xy_err < 0.01) & (jnp.abs(yaw_err) < 0.1)
    low = tcp[2] < grasp[2] + 0.04
    at_grasp = tcp[2] < grasp[2] + 0.008
    open_enough = gap > 2 * half_width + 0.015
    up = jnp.concatenate([tcp[:2], hover[None]])
    above = jnp.concatenate([grasp[:2], jnp.maximum(hover, tcp[2])[None]])
    servo_xy = jnp.concatenate([grasp[:2], tcp[2:3]])
    descend = fine & open_enough
    close = at_grasp & (xy_err < 0.012)
    target = jnp.where(
        missed | (low & ~near),
        up,
        jnp.where(~near, above, jnp.where(close, grasp, jnp.where(descend, grasp, servo_xy))),
    )
    grip = jnp.where(~missed & near & close, 1.0, -1.0)
    return target, grip


def expert_action(env: ManipEnv, state: State, cfg: ExpertConfig = ExpertConfig()) -> jax.Array:
    """Scripted action f32[7] for one (unbatched) state; vmap for batches."""
    info, data = env.info, state.data
    task_id = state.info["task_id"]
    table = env.goal_table
    # Built per trace from the host model (never cached across traces).
    mech_kind, mech_body, mech_pull = (jnp.asarray(x) for x in _mechanism_tables(env))
    tcp, mat = ctl.tcp_pose(info, data)
    yaw = _yaw_of(mat)
    fingers = data.qpos[info.finger_qpos_adr]
    gap = fingers[0] - fingers[1]
    # A grasp counts once the closing fingers have stopped on the object (lifting earlier, while
    # they still close, slips); they stay still while carrying.
    m = info.mj_model
    finger_dofs = np.array([m.jnt_dofadr[m.joint(n).id] for n in ("finger_left", "finger_right")])
    fingers_still = jnp.max(jnp.abs(data.qvel[finger_dofs])) < 0.02
    sat = tsk.goals_satisfied(table, info, data, task_id)
    half = jnp.asarray(info.object_half_size)
    obj_body = jnp.asarray(info.object_body)

    actions = []
    for g in range(tsk.MAX_GOALS):
        # ---- pick and place
        o = table.obj[task_id, g]
        pos = data.xpos[obj_body[o]]
        omat = data.xmat[obj_body[o]]
        h = half[o]
        narrow_is_x = h[0] < h[1]
        half_width = jnp.minimum(h[0], h[1])
        phi = jnp.arctan2(omat[1, 0], omat[0, 0]) + jnp.where(narrow_is_x, 0.0, jnp.pi / 2)
        period = jnp.where(jnp.abs(h[0] - h[1]) < 1e-3, jnp.pi / 2, jnp.pi)
        psi = _fold(yaw + _wrap(phi + jnp.pi / 2 - yaw, period), period, -YAW_LIMIT, YAW_LIMIT)
        # 2.2 cm below the top, but no higher than 2 cm above the centre: tall items held near
        # their top swing loose in transport.
        grasp_z = jnp.maximum(pos[2] + jnp.minimum(h[2] - 0.022, 0.02), TCP_TIP_CLEARANCE)
        grasp = jnp.concatenate([pos[:2], grasp_z[None]])
        holding = (
            (gap < 2 * half_width + 0.008)
            & (fingers_still | (pos[2] - h[2] > 0.01))  # still to lift; once lifted, it held
            & (gap > 2 * half_width - 0.02)
            & (jnp.linalg.norm(tcp[:2] - pos[:2]) < 0.025)
            & (jnp.abs(tcp[2] - grasp_z) < 0.03)
        )
        # While holding, relative geometry is frozen: steer the object, not the TCP.
        bottom = pos[2] - h[2]
        region_xy = tsk.region_center(table, data, task_id, g)
        is_in = table.kind[task_id, g] == 1
        release_bottom = jnp.where(is_in, cfg.basket_drop, table.region_top[task_id, g] + cfg.place_drop)
        carry_bottom = jnp.maximum(cfg.carry_clearance, release_bottom + 0.02)
        xy_err = region_xy - pos[:2]
        far = jnp.linalg.norm(xy_err) > 0.012
        tcp_above_bottom = tcp[2] - bottom
        carry_target = jnp.where(
            bottom < carry_bottom - 0.02,
            jnp.concatenate([tcp[:2], (carry_bottom + tcp_above_bottom)[None]]),
            jnp.concatenate([tcp[:2] + xy_err, (carry_bottom + tcp_above_bottom)[None]]),
        )
        place_target = jnp.concatenate([tcp[:2] + xy_err, (release_bottom + tcp_above_bottom)[None]])
        release = ~far & (bottom < release_bottom + 0.008)
        held_target = jnp.where(far, carry_target, place_target)
        held_grip = jnp.where(release, -1.0, 1.0)
        app_target, app_grip = _approach(cfg, tcp, yaw - psi, gap, grasp, half_width)
        pp_action = _action(
            cfg,
            env,
            tcp,
            mat,
            jnp.where(holding, held_target, app_target),
            # Holding: keep the wrist still (the grasp yaw is what it is; re-aligning it with the
            # object's symmetry axes while moving flips between equivalent yaws and shakes it loose).
            jnp.where(holding, yaw, psi),
            jnp.where(holding, held_grip, app_grip),
            jnp.where(holding, cfg.carry_speed, 1.0),
        )

        # ---- mechanisms (drawer handle / knob bar), both grasped from above
        mk = mech_kind[task_id, g]
        mpos = data.xpos[mech_body[task_id, g]]
        mmat = data.xmat[mech_body[task_id, g]]
        bar_angle = jnp.arctan2(mmat[1, 0], mmat[0, 0])  # bar runs along the body's local x
        # The knob turns the wrist by +0.8 rad or more: grasp it with room left below the limit.
        m_psi = _fold(
            yaw + _wrap(bar_angle - yaw, jnp.pi),
            jnp.pi,
            -YAW_LIMIT,
            jnp.where(mk == MECH_KNOB, YAW_LIMIT - 1.0, YAW_LIMIT),
        )
        m_half = jnp.where(mk == MECH_DRAWER, 0.008, 0.009)
        m_hold = (
            (jnp.linalg.norm(tcp - mpos) < 0.02)
            & (gap < 2 * m_half + 0.012)
            & (gap > 2 * m_half - 0.012)
            & (jnp.abs(_wrap(yaw - m_psi, jnp.pi)) < 0.2)
        )
        m_app_target, m_app_grip = _approach(cfg, tcp, yaw - m_psi, gap, mpos, m_half)
        pull_target = mpos + mech_pull[task_id, g] * 0.06
        hold_target = jnp.where(mk == MECH_DRAWER, pull_target, mpos)
        hold_psi = jnp.where(mk == MECH_KNOB, yaw + cfg.knob_rate, m_psi)
        mech_action = _action(
            cfg,
            env,
            tcp,
            mat,
            jnp.where(m_hold, hold_target, m_app_target),
            jnp.where(m_hold, hold_psi, m_psi),
            jnp.where(m_hold, 1.0, m_app_grip),
        )
        actions.append(jnp.where(mk == MECH_NONE, pp_action, mech_action))

    retreat = _action(
        cfg,
        env,
        tcp,
        mat,
        # Open fully before rising, so the released object is not dragged along.
        jnp.concatenate([tcp[:2], jnp.where(gap > 0.07, cfg.retreat_height, tcp[2])[None]]),
        yaw,
        jnp.array(-1.0),
    )
    actions.append(retreat)
    stage = jnp.argmin(jnp.concatenate([sat, jnp.zeros((1,), bool)]))
    # A placed object still between the fingers is let go of, and cleared upward, before the next
    # goal (moving on at once drags it off its region).
    placed_obj = table.obj[task_id]
    placed_pos = data.xpos[obj_body[placed_obj]]  # [G, 3]
    placed_top = placed_pos[:, 2] + half[placed_obj, 2]
    entangled = (
        sat
        & table.valid[task_id]
        & (table.kind[task_id] < 2)
        & (jnp.linalg.norm(placed_pos[:, :2] - tcp[:2], axis=-1) < 0.04)
        & (tcp[2] < placed_top + 0.03)
    )
    let_go = _action(
        cfg,
        env,
        tcp,
        mat,
        jnp.concatenate([tcp[:2], jnp.where(gap > 0.07, jnp.max(placed_top) + 0.06, tcp[2])[None]]),
        yaw,
        jnp.array(-1.0),
    )
    return jnp.where(jnp.any(entangled), let_go, jnp.stack(actions)[stage])


def random_action(rng: jax.Array) -> jax.Array:
    """Uniform random action f32[7] in [-1, 1] (the baseline experts are compared to)."""
    return jax.random.uniform(rng, (7,), minval=-1.0, maxval=1.0)


PolicyFn = Callable[[State, jax.Array], jax.Array]  # (one env's state, key) -> action f32[7]


def expert_policy(env: ManipEnv, cfg: ExpertConfig = ExpertConfig()) -> PolicyFn:
    """`expert_action` as a PolicyFn (the key is unused)."""
    return lambda state, key: expert_action(env, state, cfg)


def random_policy(state: State, key: jax.Array) -> jax.Array:
    """`random_action` as a PolicyFn."""
    return random_action(key)


def run_episodes(
    env: ManipEnv,
    policies: PolicyFn | Sequence[PolicyFn],
    task_ids: jax.Array,
    init_ids: jax.Array,
    rng: jax.Array,
    num_steps: int,
    policy_ids: jax.Array | None = None,
    step_limits: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Roll policies out from fixed initial states, physics only (no rendering); jit at the caller.

    task_ids, init_ids i32[N]; env n follows policies[policy_ids[n]] (default 0) for at most
    min(num_steps, step_limits[n], env.max_steps) control steps and stops at its first success.
    Batched with `env.batched`. With `batching="map"` (a sequential lax.map) the policy switch and
    the stopping are real branches, so a finished env costs nothing and only its own policy runs;
    under vmap every env runs every policy for all `num_steps`.
    Returns (success bool[N], first_success_step i32[N], -1 where never).
    """
    policies = (policies,) if callable(policies) else tuple(policies)
    n = task_ids.shape[0]
    ids = jnp.zeros((n,), jnp.int32) if policy_ids is None else jnp.asarray(policy_ids, jnp.int32)
    limits = jnp.full((n,), env.max_steps, jnp.int32) if step_limits is None else step_limits
    limits = jnp.minimum(jnp.asarray(limits, jnp.int32), env.max_steps)
    if ids.shape != (n,) or limits.shape != (n,) or init_ids.shape != (n,):
        raise ValueError(f"task_ids, init_ids, policy_ids, step_limits must all have shape ({n},)")

    def one(task_id, init_id, key, policy_id, limit):
        state = env.reset_to(task_id, init_id)

        def act_and_step(st, k):
            action = jax.lax.switch(policy_id, policies, st, k)
            return env.advance(st, action)  # obs are not needed: skip rendering

        def body(carry, k):
            st, first = carry
            finished = st.info["success_once"] | (st.info["step"] >= limit)
            st = jax.lax.cond(finished, lambda s, _: s, act_and_step, st, k)
            first = jnp.where((first < 0) & st.info["success_once"], st.info["step"], first)
            return (st, first), None

        keys = jax.random.split(key, num_steps)
        (state, first), _ = jax.lax.scan(body, (state, jnp.full((), -1, jnp.int32)), keys)
        return state.info["success_once"], first

    keys = jax.random.split(rng, n)
    task_ids, init_ids = jnp.asarray(task_ids, jnp.int32), jnp.asarray(init_ids, jnp.int32)
    return env.batched(one)(task_ids, init_ids, keys, ids, limits)


# ----------------------------------------------------------------------------- LIBERO's own tasks
# The faithful LIBERO tasks (pirl.envs.libero_scene) run the same plan in MJX and in the real LIBERO
# (pirl.envs.libero_check), so this expert is host numpy over a simulator-neutral view of the state:
# the phases of the pick-and-place above as a waypoint plan (approach above -> descend -> close ->
# lift -> transport -> lower -> release -> retreat), advanced when a waypoint is reached, and
# robosuite's OSC_POSE actions (delta position 0.05 m and rotation 0.5 rad per unit).

PHASES = ("approach", "descend", "close", "lift", "transport", "lower", "release", "retreat", "done")
"""Phases of the LIBERO pick-and-place plan, in order."""


@dataclasses.dataclass(frozen=True)
class LiberoPlanConfig:
    """Waypoints and gains of the LIBERO pick-and-place plan (m, control steps)."""

    hover: float = 0.08
    """Approach height of the grip site above the grasp point."""
    grasp_depth: float = 0.02
    """Grasp point below the object's top (fingertips straddle a bowl's rim)."""
    centre_depth: float = 0.028
    """Grasp point below the object's top (its world-frame extents: LIBERO's bottles stand with their
    body's y axis up) for objects grasped across their middle: the hand's palm is 3.1 cm above the
    grip site, so a deeper grasp of a tall bottle stalls the descent on its top."""
    rim_grip: float = -0.02
    """Lowest grip-site height over a container's top while lowering an object into it (In goals):
    the object goes down to the container's floor as far as the palm stays over the rim."""
    rim_shift: float = 0.0
    """Grasp point outside (+) the middle of the object's upper wall, along the fingers' closing axis."""
    lift: float = 0.12
    """Carry height of the object's bottom above the target's top."""
    release_gap: float = 0.015
    """Object bottom above the target's top when the fingers open."""
    pick_clearance: float = 0.05
    """Carry height of the object's bottom above where it started, at least (an object picked off a
    cabinet or a drawer higher than the target's top + `lift` is lifted off its support first)."""
    turn_tol: float = 0.05
    """Rotation error (rad) under which the carry's turn (`PlanState.place_yaw`) counts as done."""
    wall_clearance: float = 0.045
    """Carry height of the object's bottom above the walls round where it started, at least
    (`PlanState.pick_walls_top`). At 0.03 libero_spatial 4's bowl, carried out of the top drawer, swung
    back and up in the grasp and fell (MJX 39/50 over all inits); 0.045: 45/50, real 10/10. Of the 40
    tasks only that carry is raised by it (the others' carry is higher for their target)."""
    pos_gain: float = 2.5
    """Position action per (error / 0.05 m)."""
    rot_gain: float = 1.0
    """Rotation action per (error / 0.5 rad)."""
    carry_speed: float = 0.5
    """Largest position action while holding."""
    reach_tol: float = 0.008
    """Waypoint reached within this distance."""
    grip_steps: int = 12
    """Control steps to close or open the gripper."""
    phase_timeout: int = 60
    """Steps after which a moving phase gives up waiting for its waypoint and moves on."""
    artic_clearance: float = 0.06
    """Articulated plan: height over a drawer's handle at which the grip turns to face it (the turned
    hand reaches 0.1 m below the grip)."""
    artic_roll: float = 0.5
    """Articulated plan: the facing grip's turn (rad) about its approach axis, so that the hand (0.2 m
    along the closing axis) does not reach straight down onto what stands below a drawer's handle."""
    artic_pitch: float = 0.3
    """Articulated plan: the facing grip's approach axis tipped this far (rad) below the horizontal into
    a drawer's front, so that the hand behind the fingers rises: level, the hand's box came down on
    libero_goal 0's plate in front of the cabinet (8.7 mm into it), dragged it against the bottom
    drawer and the handle was missed (MJX 29/50); at 0.3 it clears the plate by 4-16 mm and the handle
    of the drawer above by 7 mm (MJX and real 50/50, the plate untouched). 0.4 reaches that handle."""
    half_close_steps: int = 4
    """Articulated plan (pirl.envs.libero_artic_expert): closing steps that take the open fingers to
    about half open before they straddle a drawer handle."""
    container_close_steps: int = 4
    """Into a container (an In goal): once the released object has dropped clear below the fingertips,
    the retreat closes the fingers and waits this many steps before rising. The open fingers reach
    the basket's walls in MJX (its fitted finger boxes stand up to 11 mm outside LIBERO's mesh) and,
    pressed outward, lifted the basket with the hand (libero_10 0 and 7)."""
    drop_clearance: float = 0.005
    """The released object counts as clear of the fingers when its top is this far (m) below the
    fingertips."""
    transit_clearance: float = 0.03
    """The approach passes this far (m) over the tops of what stands on its straight path from the
    start to the hover point (libero_10 1: the milk carton beside the cream cheese was knocked over)."""
    rest_speed: float = 0.05
    """Goal sequences: a pick-and-place after the first waits until every free object moves slower
    than this (m/s)..."""
    rest_wait: int = 40
    """...for at most this many control steps (LIBERO throws the milk up at some inits of libero_10 1;
    it must land before the approach)."""
    entry_gap: float = 0.015
    """Side entry (`PickPlaceGeometry.entry`): the object's bottom over the container's floor while it is
    carried in."""
    entry_release: float = 0.003
    """Side entry: the object's bottom over the container's floor when the fingers open."""

    def __post_init__(self):
        if not abs(self.artic_pitch) < np.pi / 2:
            # tipped a quarter turn the approach is vertical: no closing axis "about vertical" is left
            raise ValueError(
                f"artic_pitch must lie strictly between -pi/2 and pi/2 (rad), got {self.artic_pitch}"
            )


@dataclasses.dataclass(frozen=True)
class PickPlaceView:
    """What the plan reads from a simulator (world frame)."""

    grip_pos: np.ndarray
    """f64[3] grip site position."""
    grip_mat: np.ndarray
    """f64[3, 3] grip site orientation."""
    finger_axis: np.ndarray
    """f64[3] unit vector from the right to the left finger (the closing axis)."""
    obj_pos: np.ndarray
    """f64[3] object body position."""
    target_pos: np.ndarray
    """f64[3] target body position."""
    obj_mat: np.ndarray | None = None
    """f64[3, 3] object body orientation (read when the geometry names a `grasp_axis`)."""


@dataclasses.dataclass(frozen=True)
class PickPlaceGeometry:
    """Object and target extents in their body frames (from the MJX scene's geoms)."""

    obj_lo: np.ndarray
    """f64[3] lowest corner of the object's geoms in its body frame."""
    obj_hi: np.ndarray
    """f64[3] highest corner."""
    target_hi: np.ndarray
    """f64[3] highest corner of the target's geoms in its body frame."""
    wall_radius: float
    """Horizontal distance from the object's centre to the middle of its upper wall (the geoms within
    3 cm of its top): where the fingers straddle it (0: grasp across the middle)."""
    grasp_axis: np.ndarray | None = None
    """f64[3] the object's narrow horizontal axis in its body frame: the fingers turn (about the
    vertical) to close along it; None keeps the starting orientation."""
    obj_points: np.ndarray | None = None
    """f64[n, 3] the object's geom corners / vertices in its body frame: its world-frame extents at any
    orientation (None: the turned corners of obj_lo / obj_hi)."""
    target_floor: float | None = None
    """In a container (an In goal): its floor's height over the target position; None for On goals.
    The object is lowered towards it before the fingers open (centre and wall grasps)."""
    top_grasp: np.ndarray | None = None
    """f64[3] body-frame grasp point of an object wider than the open fingers whose top part fits
    between them (the moka pot's lid knob): the fingers straddle that part (wall_radius 0) instead of
    a wall round the middle of the whole object's extents, the grip site no lower than its z (nor
    than `grasp_depth` under the top); None: the wall grasp (bowls)."""
    entry: np.ndarray | None = None
    """f64[3] world horizontal unit vector into a roofed container through its open side (an In goal
    into the microwave: 14.4 cm high inside, the hand over an 11.6 cm mug does not fit under its
    roof): the object is grasped from above by its part facing out (`HANDLE_DEPTH`: the mug's
    handle), carried in at its floor's height (`LiberoPlanConfig.entry_gap`) and set down where the
    hand stays outside (`entry_face`, `PlanState.place_shift`); None: lowered in from above."""
    entry_face: float = 0.0
    """With `entry`: the open side's distance (m) from the target position, against `entry`."""


@dataclasses.dataclass(frozen=True)
class PlanState:
    """Where the plan is: phase index, steps spent in it, the reference orientation and grasp offset."""

    phase: int = 0
    steps: int = 0
    ref_mat: np.ndarray | None = None
    """Grip orientation held throughout (the one at the first step: pointing down)."""
    grasp_offset: np.ndarray | None = None
    """Grasp point minus object position, fixed at the first step (in the object's frame where
    `grasp_in_body`, else in the world frame)."""
    grasp_in_body: bool = False
    """`grasp_offset` is in the object's frame (wall grasps) and follows its orientation."""
    grasp_yaw: float = 0.0
    """Turn (rad, about the vertical) of the grip from its starting orientation for a wall grasp, and
    with it of the closing axis; for a centre grasp, from the object's narrow axis (chosen per episode
    from the scene: libero_check.grasp_choice)."""
    grasp_side: float = 1.0
    """+1: the fingers straddle the wall on the side the (turned) closing axis points to; -1: the other."""
    pick_bottom: float | None = None
    """The object's bottom (world z) at the first step."""
    place_yaw: float = 0.0
    """Turn (rad, about the vertical) of the grip, and with it of the held object, during the carry: the
    object is set down turned so the hand clears what stands by its place (libero_check.place_choice)."""
    place_shift: np.ndarray | None = None
    """f64[3] world offset of the place point from the target's (within an On region), same source."""
    pick_walls_top: float | None = None
    """Top (world z) of the walls round the object where it starts (a drawer's sides), which its bottom
    is lifted `wall_clearance` over before it is carried; None: nothing round it (libero_check.plan_start)."""
    transit: float | None = None
    """Approach: the height (grip site, world z) it moves over at (`transit_height`), None: straight
    to the hover point."""


def transit_height(
    start: np.ndarray,
    hover: np.ndarray,
    footprints: Sequence[tuple[np.ndarray, np.ndarray, float]],
    clearance: float,
    parts: Sequence[tuple[float, float]] = (),
) -> float | None:
    """Height (world z) at which the approach from `start` f64[3] to `hover` f64[3] moves over: `clearance`
    over the highest top of the footprints (lo f64[2], hi f64[2] world xy box, top z) that overlap the
    xy rectangle spanned by the two points and reach within `clearance` of the lower point's height;
    None when none does. The approach's way is not a straight line (each axis's action saturates on its
    own and the arm came down faster than it moved across: libero_10 7, z 0.169 m in 16 steps against
    y 0.099), so it may be at the lower height anywhere between the two. `parts`: (reach, bottom) of
    the gripper's parts round the grip site (`libero_check.gripper_parts`: the hand's box, 0.2 m along
    the closing axis, its bottom 3 cm over the site; the fingers, up to 6.6 cm out open, their tips 1 cm
    under it): each footprint also counts padded by a part's reach in xy (any turn), its top to be
    passed at the part's bottom."""
    start, hover = np.asarray(start, np.float64), np.asarray(hover, np.float64)
    box_lo, box_hi = np.minimum(start[:2], hover[:2]), np.maximum(start[:2], hover[:2])
    low = min(start[2], hover[2])
    need = None
    for lo, hi, top in footprints:
        for reach, bottom in ((0.0, 0.0), *parts):
            crossed = np.all(lo - reach <= box_hi) and np.all(box_lo <= hi + reach)
            if crossed and low + bottom < top + clearance:
                need = max(need if need is not None else -np.inf, top + clearance - bottom)
    return None if need is None else float(max(need, hover[2]))


def rot_z(angle: float) -> np.ndarray:
    """f64[3, 3] rotation by `angle` (rad) about the world's vertical."""
    c, s_ = np.cos(angle), np.sin(angle)
    return np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_error(desired: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle f64[3] of desired @ current^T (world frame: the OSC's rotation action direction)."""
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, (desired @ current.T).reshape(9))
    v = np.zeros(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def world_extents(geo: PickPlaceGeometry, mat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) f64[3] corners of the object's geoms in the world frame, relative to its body
    position, at orientation `mat` (the body frame's when None)."""
    if geo.obj_points is not None:
        pts = geo.obj_points
    else:
        pts = np.array([[x, y, z] for x in (geo.obj_lo[0], geo.obj_hi[0]) for y in (geo.obj_lo[1], geo.obj_hi[1])
                        for z in (geo.obj_lo[2], geo.obj_hi[2])])  # fmt: skip
    w = pts if mat is None else pts @ mat.T
    return w.min(0), w.max(0)


def release_height(
    cfg: LiberoPlanConfig, geo: PickPlaceGeometry, target_pos: np.ndarray, held: float
) -> float:
    """World height (m) of the object's bottom when the fingers open over / in the target at
    `target_pos` (f64[3]), the grip site `held` (m) over the object's bottom: `release_gap` over the
    target's top; into a container, either grasp, down to its floor with the palm no lower than
    `rim_grip` under its rim (a bowl let go over a drawer's walls, libero_10 3: 7 cm over its floor,
    under the handles of the drawers above, fell onto the handle above and the front wall and stayed
    wedged there, tilted, jamming the push); through a side entry, `entry_release` over its floor."""
    top = target_pos[2] + geo.target_hi[2]
    release = top + cfg.release_gap
    if geo.target_floor is not None:
        release = max(target_pos[2] + geo.target_floor + cfg.release_gap, top + cfg.rim_grip - held)
        release = min(release, top + cfg.release_gap)
        if geo.entry is not None:
            release = target_pos[2] + geo.target_floor + cfg.entry_release
    return float(release)


def grasp_point(view: PickPlaceView, state: PlanState) -> np.ndarray:
    """World f64[3] grasp point of a plan state whose grasp offset is set (after its first step); a
    wall grasp follows the object's orientation (a bowl still settling, tilting off a ramekin)."""
    off = state.grasp_offset
    return view.obj_pos + (view.obj_mat @ off if state.grasp_in_body else off)


def facing_part(geo: PickPlaceGeometry, obj_mat: np.ndarray) -> tuple[np.ndarray, float]:
    """The object's points f64[n, 3] (world offsets from its position, at orientation `obj_mat`) within
    `HANDLE_DEPTH` of its outermost point against `geo.entry` (the part facing out of the container: the
    mug's handle), and that outermost reach (m)."""
    pts = geo.obj_points @ obj_mat.T
    out = pts @ -geo.entry
    return pts[out > out.max() - HANDLE_DEPTH], float(out.max())


def servo_action(
    cfg: LiberoPlanConfig, pos_err: np.ndarray, rot_err: np.ndarray, grip: float, speed: float = 1.0
) -> np.ndarray:
    """The plans' OSC_POSE action f32[7] towards a grip pose: position action `pos_gain` per (error /
    0.05 m) within +-`speed`, rotation action `rot_gain` per (axis-angle error / 0.5 rad) within +-1,
    and the gripper's command `grip` (robosuite's: -1 opens, +1 closes)."""
    a_pos = np.clip(np.asarray(pos_err) / 0.05 * cfg.pos_gain, -speed, speed)
    a_rot = np.clip(np.asarray(rot_err) / 0.5 * cfg.rot_gain, -1.0, 1.0)
    return np.concatenate([a_pos, a_rot, [grip]]).astype(np.float32)


def pick_place_action(
    cfg: LiberoPlanConfig, geo: PickPlaceGeometry, view: PickPlaceView, state: PlanState
) -> tuple[np.ndarray, PlanState]:
    """One control step of the plan: (OSC_POSE action f32[7], next plan state)."""
    if state.place_shift is not None:
        view = dataclasses.replace(view, target_pos=view.target_pos + state.place_shift)
    ref = state.ref_mat
    if ref is None:
        ref = view.grip_mat
        if geo.grasp_axis is not None and view.obj_mat is not None:
            # yaw the grip (at most 90 degrees either way) so the closing axis lies along the object's narrow axis
            want, have = view.obj_mat @ geo.grasp_axis, view.finger_axis
            yaw = np.arctan2(want[1], want[0]) - np.arctan2(have[1], have[0])
            yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2 + state.grasp_yaw
            ref = rot_z(yaw) @ view.grip_mat
        elif geo.entry is not None:
            # the closing axis across the entry (the hand's thin side towards the container), the
            # nearer of the two turns
            across = np.cross([0.0, 0.0, 1.0], geo.entry)
            yaw = np.arctan2(across[1], across[0]) - np.arctan2(view.finger_axis[1], view.finger_axis[0])
            ref = rot_z((yaw + np.pi / 2) % np.pi - np.pi / 2) @ view.grip_mat
        elif state.grasp_yaw:
            ref = rot_z(state.grasp_yaw) @ view.grip_mat
    if state.grasp_offset is None:
        # the fingers straddle the object's wall on the side the (turned) closing axis points to
        axis = rot_z(state.grasp_yaw) @ np.array([view.finger_axis[0], view.finger_axis[1], 0.0])
        axis *= state.grasp_side / max(np.linalg.norm(axis), 1e-9)
        centre = np.array([(geo.obj_hi[0] + geo.obj_lo[0]) / 2, (geo.obj_hi[1] + geo.obj_lo[1]) / 2, 0.0])
        tilt = view.obj_mat if geo.grasp_axis is None and view.obj_mat is not None else None
        # a wall grasp in the object's frame: a tilted bowl's rim is not where an upright one's is
        if tilt is not None:
            axis = tilt.T @ axis
            axis[2] = 0.0
            axis /= max(np.linalg.norm(axis), 1e-9)
        offset = centre + axis * max(geo.wall_radius + cfg.rim_shift, 0.0)
        offset[2] = max(geo.obj_hi[2] - cfg.grasp_depth, geo.obj_lo[2] + 0.01)
        if geo.top_grasp is not None:  # its narrow top part, no lower than the fingertips allow
            offset = np.array(geo.top_grasp, np.float64)
            offset[2] = max(geo.obj_hi[2] - cfg.grasp_depth, offset[2])
        w_lo, w_hi = world_extents(geo, view.obj_mat if geo.grasp_axis is not None else None)
        if geo.entry is not None and view.obj_mat is not None:
            # the part facing out of the container (the handle), from above, closing across the entry
            part, reach = facing_part(geo, view.obj_mat)
            offset = part.mean(0) + geo.entry * (np.mean(part @ -geo.entry) - (reach - HANDLE_DEPTH / 2))
            offset[2] = part[:, 2].max() - cfg.grasp_depth
            w_lo = world_extents(geo, view.obj_mat)[0]
            tilt = None
        if geo.grasp_axis is not None:  # across the middle, under the top as it stands (world frame)
            offset = np.array([(w_lo[0] + w_hi[0]) / 2, (w_lo[1] + w_hi[1]) / 2,
                               max(w_hi[2] - cfg.centre_depth, w_lo[2] + 0.01)])  # fmt: skip
        state = dataclasses.replace(
            state,
            grasp_offset=offset,
            grasp_in_body=tilt is not None,
            pick_bottom=float(view.obj_pos[2] + w_lo[2]),
        )
    phase, steps = state.phase, state.steps
    grasp = grasp_point(view, state)
    target_top = view.target_pos[2] + geo.target_hi[2]
    # carry height of the object's bottom: over the target, and off the support it was picked from
    carry = max(target_top + cfg.lift, state.pick_bottom + cfg.pick_clearance)
    if state.pick_walls_top is not None:  # out over the walls of the drawer it stood in
        carry = max(carry, state.pick_walls_top + cfg.wall_clearance)
    if geo.entry is not None:  # in through the open side, just over the floor
        carry = view.target_pos[2] + geo.target_floor + cfg.entry_gap
    # while holding, steer the object: the grip keeps its offset to it
    hold = view.grip_pos - view.obj_pos
    if geo.entry is not None:
        # steer the grip: its way in ends at the container's face (the handle held by its pinch turns
        # in MJX, the cup pitching down up to 20 degrees, and the object's origin runs 3 cm ahead)
        hold = state.grasp_offset
    # Centre grasps read the object as it stands (LIBERO's bottles are body-y up); wall grasps (bowls,
    # body z up) keep the body frame's z and, onto an On target, the release over its top, as measured
    # on libero_spatial (a held bowl tilts: its turned extents would release it higher).
    centre = geo.grasp_axis is not None
    obj_bottom = view.obj_pos[2] + world_extents(geo, view.obj_mat if centre else None)[0][2]
    release = release_height(cfg, geo, view.target_pos, view.grip_pos[2] - obj_bottom)
    name = PHASES[phase]
    grip, speed = (-1.0, 1.0) if phase in (0, 1, 6, 7, 8) else (1.0, cfg.carry_speed)
    closing = False  # the retreat closes the fingers before it rises
    transiting = False  # an approach leg short of the hover point
    transit = None
    if name == "approach":
        goal = grasp + np.array([0.0, 0.0, cfg.hover])
        transit = state.transit
        if geo.entry is not None:
            # over the container (its open door): the fingers coming down across the arm's way to the
            # handle swung the microwave door shut in MJX (libero_10 9 init 6)
            transit = max(transit if transit is not None else -np.inf, target_top + cfg.transit_clearance)
        if (
            transit is not None
            and steps < 3 * cfg.phase_timeout
            and np.linalg.norm(goal[:2] - view.grip_pos[:2]) > 2 * cfg.reach_tol
        ):
            # over what stands on the straight path: rise first, then across, then down
            transiting = True
            if view.grip_pos[2] < transit - cfg.reach_tol:
                goal = np.array([*view.grip_pos[:2], transit])
            else:
                goal = np.array([*goal[:2], max(transit, goal[2])])
    elif name == "descend":
        goal = grasp
    elif name in ("close", "release"):
        goal = view.grip_pos
        speed = 0.0
    elif name == "lift":
        goal = np.array([*view.grip_pos[:2], view.grip_pos[2] + (carry - obj_bottom)])
    elif name == "transport":
        goal = np.array([*(view.target_pos[:2] + hold[:2]), view.grip_pos[2] + (carry - obj_bottom)])
        if geo.entry is not None:  # lined up with the place across the opening first, then straight in
            along = geo.entry * ((goal - view.grip_pos) @ geo.entry)
            if np.linalg.norm(goal - view.grip_pos - along) > 2 * cfg.reach_tol:
                goal = goal - along
    elif name == "lower":
        goal = np.array(
            [
                *(view.target_pos[:2] + hold[:2]),
                view.grip_pos[2] + (release - obj_bottom),
            ]
        )
    else:  # retreat, done
        goal = np.array([*view.grip_pos[:2], max(view.grip_pos[2], target_top + 0.2)])
        if geo.entry is not None and name == "retreat":
            # back out first, clear of the handle (in MJX the released mug rocks back onto the palm)
            back = view.target_pos + hold - geo.entry * ENTRY_BACK_OUT
            if (back - view.grip_pos)[:2] @ -geo.entry[:2] > cfg.reach_tol:
                goal = np.array([*back[:2], view.grip_pos[2]])
        obj_top = view.obj_pos[2] + world_extents(geo, view.obj_mat)[1][2]
        tips = view.grip_pos[2] - FINGERTIP_BELOW_SITE
        inside = geo.target_floor is not None and geo.entry is None  # (a side entry's hand is outside)
        if name == "retreat" and inside and obj_top < tips - cfg.drop_clearance:
            # out of a container the object has dropped into: close the fingers (off its walls) first
            grip = 1.0
            closing = steps < cfg.container_close_steps
            if closing:
                goal = view.grip_pos
    err = goal - view.grip_pos
    # from the transport on, the grip (and the object held) turns by place_yaw
    hold_mat = rot_z(state.place_yaw) @ ref if phase >= PHASES.index("transport") else ref
    turn_err = rotation_error(hold_mat, view.grip_mat)
    action = servo_action(cfg, err, turn_err, grip, speed)
    if name in ("close", "release"):
        done = steps + 1 >= cfg.grip_steps
    elif name == "done" or closing or transiting:
        done = False
    else:
        there = np.linalg.norm(err) < cfg.reach_tol * (2.0 if name == "retreat" else 1.0)
        if name == "transport" and state.place_yaw:  # lowered only once turned
            there = there and np.linalg.norm(turn_err) < cfg.turn_tol
        if name == "approach" and transit is not None:
            # the long way round arrives with the turn unfinished
            there = there and np.linalg.norm(turn_err) < cfg.turn_tol
        done = there or steps + 1 >= cfg.phase_timeout
    nxt = dataclasses.replace(
        state, ref_mat=ref, phase=phase + 1 if done else phase, steps=0 if done else steps + 1
    )
    return action, nxt


NUDGE_PHASES = ("over", "down", "push", "back", "up", "done")
"""Phases of the nudge after a side entry (`nudge_action`), in order."""
NUDGE_FRONT = 0.025
"""The closed fingers come down this far (m) in front of the object's outermost point facing out."""


@dataclasses.dataclass(frozen=True)
class NudgeState:
    """Where the nudge is: phase index (NUDGE_PHASES), steps spent in it, and its push point."""

    phase: int = 0
    steps: int = 0
    start: np.ndarray | None = None
    """f64[3] world point the closed fingers come down to, in front of the object (the first step's)."""
    ref_mat: np.ndarray | None = None
    """Grip orientation held throughout (the first step's)."""


def nudge_action(
    cfg: LiberoPlanConfig, geo: PickPlaceGeometry, view: PickPlaceView, state: NudgeState
) -> tuple[np.ndarray, NudgeState]:
    """One control step of the push that follows a side entry (`PickPlaceGeometry.entry`): the closed
    fingers come down `NUDGE_FRONT` in front of the object's part facing out (the mug's handle), at that
    part's middle height, push it along the entry until the hand's box reaches the container's open face
    (the roof's front edge), back out `ENTRY_BACK_OUT` and rise. In MJX the mug set down by its handle
    stands 2.4-4 cm short of the region (it pitches in the pinch and rocks back when let go), and the
    closing door jammed on the handle; the real LIBERO's mug gets the same push. (OSC_POSE action f32[7],
    next state)."""
    e = geo.entry
    if state.start is None:
        part, reach = facing_part(geo, view.obj_mat)
        front = view.obj_pos + part.mean(0) + e * (np.mean(part @ -e) - reach - NUDGE_FRONT)
        front[2] = view.obj_pos[2] + 0.5 * (part[:, 2].min() + part[:, 2].max())
        state = dataclasses.replace(state, start=front, ref_mat=view.grip_mat)
    name = NUDGE_PHASES[state.phase]
    limit = (view.target_pos - e * (geo.entry_face + HAND_HALF_DEPTH)) @ e  # the grip's furthest along e
    speed = 1.0
    if name == "over":
        goal = state.start + np.array([0.0, 0.0, cfg.hover])
    elif name == "down":
        goal = state.start
    elif name == "push":
        goal = state.start + e * (limit - state.start @ e)
        speed = cfg.carry_speed
    elif name == "back":
        goal = view.grip_pos - e * (view.grip_pos @ e - (limit - ENTRY_BACK_OUT))
    else:  # up, done
        goal = np.array([*view.grip_pos[:2], max(view.grip_pos[2], state.start[2] + cfg.hover)])
    err = goal - view.grip_pos
    action = servo_action(cfg, err, rotation_error(state.ref_mat, view.grip_mat), 1.0, speed)
    there = np.linalg.norm(err) < cfg.reach_tol * (2.0 if name in ("back", "up") else 1.0)
    done = name != "done" and (there or state.steps + 1 >= cfg.phase_timeout)
    return action, dataclasses.replace(
        state, phase=state.phase + 1 if done else state.phase, steps=0 if done else state.steps + 1
    )


def pick_place_batch(
    cfg: LiberoPlanConfig,
    geo: PickPlaceGeometry,
    views: Sequence[PickPlaceView],
    sim_step: Callable[[np.ndarray], tuple[np.ndarray, Sequence[PickPlaceView]]],
    steps: int,
    states: Sequence[PlanState] | None = None,
) -> tuple[np.ndarray, list[PlanState]]:
    """The plan over a batch of envs stepped together (`sim_step`: actions f32[N, 7] -> (success
    bool[N] on the step's data, the new views)); one plan state per env, host numpy.

    An env is finished at its first success or when its plan is done; a finished env holds still
    (zero motion, its gripper as it was) and the loop ends when every env is finished or after
    `steps` control steps; `states`: the plan states to start from (default: PlanState() each). Returns (first success step i32[N] counted from 1, -1 where never; the
    plan states)."""
    n = len(views)
    states = list(states) if states is not None else [PlanState() for _ in range(n)]
    first = np.full(n, -1, np.int32)
    for t in range(steps):
        done = (first > 0) | np.array([PHASES[s.phase] == "done" for s in states])
        if done.all():
            break
        actions = np.zeros((n, 7), np.float32)
        for i in range(n):
            if done[i]:  # outcome recorded: hold the gripper as the plan last had it
                actions[i, 6] = (
                    1.0 if PHASES[states[i].phase] in ("close", "lift", "transport", "lower") else -1.0
                )
            else:
                actions[i], states[i] = pick_place_action(cfg, geo, views[i], states[i])
        success, views = sim_step(actions)
        first[(first < 0) & ~done & np.asarray(success, bool)] = t + 1
    return first, states

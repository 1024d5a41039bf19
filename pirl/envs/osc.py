"""robosuite's OSC_POSE controller as LIBERO drives the Panda, in JAX for MJX.

LIBERO steps robosuite 1.4 at 20 Hz: each control step sets a goal pose once from the 7-D action,
then runs `control_dt / timestep` physics substeps (25 at MuJoCo's 0.002 s), recomputing the
operational-space torques from the current state before every substep. This module does the same
on an `mjx.Model` / `mjx.Data`, with robosuite's numbers as defaults (`OSCConfig`):

- action[:6] clipped to [-1, 1] and scaled by the output limits (0.05 m, 0.5 rad); goal position =
  eef position + delta; goal orientation = R(delta_axis_angle) @ eef orientation, but only when the
  rotation delta is non-zero: a step whose rotation part is exactly 0 keeps the previous goal
  orientation (robosuite's `set_goal` skips it), so that goal is controller state;
- no interpolation (LIBERO's OSC_POSE config has `interpolation: null`);
- torques = J^T [Lambda_pos F; Lambda_ori M] + qfrc_bias (gravity/Coriolis compensation) + null-space
  posture torques toward the robot's init_qpos (kp 10, critically damped), with F, M from kp 150 and
  critical damping on the site pose error and velocity; clipped to the actuator ctrlrange;
- gripper: action[6]'s sign moves robosuite's PandaGripper `current_action` by 0.01 per 2 ms call
  (0.25 per control step) toward closed (+) or open (-); the finger position actuators get
  `bias + weight * current_action` over their ctrlrange. That ramp state is read back from
  `data.ctrl`, so it needs no extra storage.

The controller state robosuite keeps between control steps (goal orientation, and right after a
reset the position the first goal is taken from) lives in `data.userdata` (OSC_USERDATA_SIZE slots
at `OSCIndices.userdata_adr`): the MJCF must declare `<size nuserdata="13"/>` (or more). Call
`osc_reset` after putting the initial state into `data`, then `osc_control_step` once per control
step. All functions are pure and jit/vmap-able; indices are static numpy built once from the
`mujoco.MjModel` by robosuite's names.

`pirl.envs.osc_reference` records robosuite's own controller on the same robot (MuJoCo C) for the
tests; `benchmarks/osc.py` measures the cost.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from pirl.envs.controller import rotvec_to_mat
from pirl.envs.mjx_module import mjx

OSC_USERDATA_SIZE = 13
"""userdata slots used: goal orientation (9, row-major), reset eef position (3), reset flag (1)."""

PANDA_INIT_QPOS = (0.0, -0.161037389, 0.0, -2.44459747, 0.0, 2.2267522, math.pi / 4)
"""init_qpos of LIBERO's MountedPanda / OnTheGroundPanda (robosuite's Panda): the null-space target."""

ROBOSUITE_TIMESTEP = 0.002
"""robosuite's physics timestep (macros.SIMULATION_TIMESTEP); its gripper ramp is per such step."""


@dataclasses.dataclass(frozen=True)
class OSCConfig:
    """robosuite OSC_POSE (osc_pose.json) + PandaGripper as LIBERO uses them, and the MJX timestep."""

    kp: float = 150.0
    """Stiffness on the position and orientation error (robosuite `kp`)."""
    damping_ratio: float = 1.0
    """kd = 2 sqrt(kp) * damping_ratio (robosuite `damping_ratio`)."""
    output_max_pos: float = 0.05
    """Metres of goal offset per unit action (robosuite `output_max[:3]`)."""
    output_max_ori: float = 0.5
    """Radians of goal rotation per unit action (robosuite `output_max[3:]`)."""
    uncouple_pos_ori: bool = True
    """Separate Lambda for position and orientation (robosuite `uncouple_pos_ori`)."""
    nullspace_kp: float = 10.0
    """Null-space posture stiffness (robosuite `nullspace_torques` joint_kp), critically damped."""
    nullspace_qpos: tuple[float, ...] = PANDA_INIT_QPOS
    """Posture the null space pulls toward (robosuite: the robot's init_qpos at reset)."""
    gripper_rate: float = 5.0
    """Gripper `current_action` change per second (robosuite: 0.01 per 2 ms call)."""
    control_dt: float = 0.05
    """Seconds per control step (LIBERO's control_freq = 20)."""
    timestep: float = 0.005
    """Physics timestep the scene should use (torques are recomputed every substep). robosuite's
    0.002 reproduces it to 0.2 mm at 2.5x the cost; 0.005 stays within ~1.5 mm (single-axis, 20
    steps) and 0.01 within ~4 mm at half that again (docs/osc.md)."""
    reset_goal_from_init_qpos: bool = True
    """After a reset, as robosuite's controller after LIBERO's reset() + set_init_state(): goal
    orientation and the first step's goal position come from the init_qpos pose, not the restored
    state (the controller was built before the state was restored and is not refreshed)."""

    def __post_init__(self):
        if len(self.nullspace_qpos) != 7:
            raise ValueError(f"nullspace_qpos needs 7 arm joint angles, got {len(self.nullspace_qpos)}")
        n = self.control_dt / self.timestep
        if self.timestep <= 0 or abs(n - round(n)) > 1e-6:
            raise ValueError(
                f"timestep {self.timestep} must divide control_dt {self.control_dt} (e.g. 0.002, 0.0025, 0.005, 0.01)"
            )

    @property
    def substeps(self) -> int:
        """Physics substeps per control step."""
        return round(self.control_dt / self.timestep)

    @property
    def kd(self) -> float:
        return 2.0 * math.sqrt(self.kp) * self.damping_ratio


@dataclasses.dataclass(frozen=True)
class OSCIndices:
    """Static indices of the Panda in a model (robosuite names; hashable, so usable as a static arg)."""

    arm_qpos: tuple[int, ...]
    arm_dof: tuple[int, ...]
    arm_actuator: tuple[int, ...]
    torque_low: tuple[float, ...]
    torque_high: tuple[float, ...]
    finger_qpos: tuple[int, ...]
    finger_actuator: tuple[int, ...]
    finger_ctrl_low: tuple[float, ...]
    finger_ctrl_high: tuple[float, ...]
    site: int
    site_body: int
    userdata_adr: int

    @classmethod
    def from_model(
        cls,
        model: mujoco.MjModel,
        robot_prefix: str = "robot0_",
        gripper_prefix: str = "gripper0_",
        site_name: str = "grip_site",
        userdata_adr: int = 0,
    ) -> OSCIndices:
        """Look up robosuite's names: {robot}joint1..7, {robot}torq_j1..7, {gripper}finger_joint1/2,
        {gripper}gripper_finger_joint1/2 (actuators), {gripper}grip_site."""

        def find(kind, name):
            i = mujoco.mj_name2id(model, kind, name)
            if i < 0:
                raise ValueError(
                    f"model has no {kind.name[6:].lower()} named {name!r} (robosuite's Panda names)"
                )
            return i

        joints = [find(mujoco.mjtObj.mjOBJ_JOINT, f"{robot_prefix}joint{k}") for k in range(1, 8)]
        arm_act = [find(mujoco.mjtObj.mjOBJ_ACTUATOR, f"{robot_prefix}torq_j{k}") for k in range(1, 8)]
        fingers = [find(mujoco.mjtObj.mjOBJ_JOINT, f"{gripper_prefix}finger_joint{k}") for k in (1, 2)]
        finger_act = [
            find(mujoco.mjtObj.mjOBJ_ACTUATOR, f"{gripper_prefix}gripper_finger_joint{k}") for k in (1, 2)
        ]
        site = find(mujoco.mjtObj.mjOBJ_SITE, f"{gripper_prefix}{site_name}")
        if model.nuserdata < userdata_adr + OSC_USERDATA_SIZE:
            raise ValueError(
                f"the OSC keeps its goal in data.userdata[{userdata_adr}:{userdata_adr + OSC_USERDATA_SIZE}] but the "
                f'model has nuserdata={model.nuserdata}: add <size nuserdata="{userdata_adr + OSC_USERDATA_SIZE}"/> '
                "to the MJCF (or spec.nuserdata = ...)"
            )
        ctrlrange = np.asarray(model.actuator_ctrlrange)
        return cls(
            arm_qpos=tuple(int(model.jnt_qposadr[j]) for j in joints),
            arm_dof=tuple(int(model.jnt_dofadr[j]) for j in joints),
            arm_actuator=tuple(arm_act),
            torque_low=tuple(float(ctrlrange[a, 0]) for a in arm_act),
            torque_high=tuple(float(ctrlrange[a, 1]) for a in arm_act),
            finger_qpos=tuple(int(model.jnt_qposadr[j]) for j in fingers),
            finger_actuator=tuple(finger_act),
            finger_ctrl_low=tuple(float(ctrlrange[a, 0]) for a in finger_act),
            finger_ctrl_high=tuple(float(ctrlrange[a, 1]) for a in finger_act),
            site=int(site),
            site_body=int(model.site_bodyid[site]),
            userdata_adr=int(userdata_adr),
        )


@dataclasses.dataclass(frozen=True)
class Goal:
    """The pose target of one control step."""

    pos: jax.Array  # f32[3] world
    ori: jax.Array  # f32[3,3] world


jax.tree_util.register_dataclass(Goal, data_fields=["pos", "ori"], meta_fields=[])


def orientation_error(desired: jax.Array, current: jax.Array) -> jax.Array:
    """robosuite's orientation error f32[3] between rotation matrices: 0.5 * sum_i current_i x desired_i."""
    return 0.5 * jnp.sum(jnp.cross(current.T, desired.T), axis=0)


def eef_pose(idx: OSCIndices, data: mjx.Data) -> tuple[jax.Array, jax.Array]:
    """Grip-site position f32[3] and rotation matrix f32[3,3] (data kinematics must be current)."""
    return data.site_xpos[idx.site], data.site_xmat[idx.site]


def set_goal(cfg: OSCConfig, idx: OSCIndices, data: mjx.Data, action: jax.Array) -> tuple[Goal, mjx.Data]:
    """Goal of one control step from action f32[7] (robosuite `set_goal`); updates the stored goal.

    `data` must have current kinematics. Returns the goal and `data` with the new controller state in
    userdata (goal orientation kept; reset flag cleared).
    """
    a = jnp.clip(action[:6], -1.0, 1.0)
    dpos, drot = a[:3] * cfg.output_max_pos, a[3:] * cfg.output_max_ori
    pos, ori = eef_pose(idx, data)
    adr = idx.userdata_adr
    state = data.userdata[adr : adr + OSC_USERDATA_SIZE]
    stored_ori = state[:9].reshape(3, 3)
    after_reset = state[12] > 0.5
    # right after a reset robosuite's controller still sees the init_qpos pose (see osc_reset)
    base_pos = jnp.where(after_reset, state[9:12], pos)
    base_ori = jnp.where(after_reset, stored_ori, ori)
    # robosuite only re-targets the orientation when some rotation component is non-zero
    goal_ori = jnp.where(jnp.any(drot != 0.0), rotvec_to_mat(drot) @ base_ori, stored_ori)
    goal_pos = base_pos + dpos
    state = jnp.concatenate([goal_ori.reshape(9), state[9:12], jnp.zeros(1, state.dtype)])
    data = data.replace(userdata=data.userdata.at[adr : adr + OSC_USERDATA_SIZE].set(state))
    return Goal(goal_pos, goal_ori), data


def arm_torques(cfg: OSCConfig, idx: OSCIndices, mx: mjx.Model, data: mjx.Data, goal: Goal) -> jax.Array:
    """Joint torques f32[7] toward `goal` for one substep (robosuite `run_controller` + clipping).

    `data` must have the position and velocity stages current (kinematics, mass matrix, qfrc_bias).
    """
    dof = np.asarray(idx.arm_dof)
    pos, ori = eef_pose(idx, data)
    jacp, jacr = mjx.jac(mx, data, pos, idx.site_body)  # [nv, 3] each
    vel_pos, vel_ori = jacp.T @ data.qvel, jacr.T @ data.qvel
    j_pos, j_ori = jacp[dof].T, jacr[dof].T  # [3, 7]
    j_full = jnp.concatenate([j_pos, j_ori])
    mass = mjx.full_m(mx, data)[dof[:, None], dof[None, :]]
    mass_inv = jnp.linalg.inv(mass)

    force = cfg.kp * (goal.pos - pos) - cfg.kd * vel_pos
    torque = cfg.kp * orientation_error(goal.ori, ori) - cfg.kd * vel_ori

    def lam(j):  # task-space inertia, pseudo-inverse like robosuite's opspace_matrices
        return jnp.linalg.inv(j @ mass_inv @ j.T)

    lambda_full = lam(j_full)
    if cfg.uncouple_pos_ori:
        wrench = jnp.concatenate([lam(j_pos) @ force, lam(j_ori) @ torque])
    else:
        wrench = lambda_full @ jnp.concatenate([force, torque])
    tau = j_full.T @ wrench + data.qfrc_bias[dof]

    # null-space posture torques (robosuite nullspace_torques)
    j_bar = mass_inv @ j_full.T @ lambda_full
    nullspace = jnp.eye(7) - j_bar @ j_full
    q, qd = data.qpos[np.asarray(idx.arm_qpos)], data.qvel[dof]
    kv = 2.0 * math.sqrt(cfg.nullspace_kp)
    posture = mass @ (cfg.nullspace_kp * (jnp.asarray(cfg.nullspace_qpos) - q) - kv * qd)
    tau = tau + nullspace.T @ posture
    return jnp.clip(tau, jnp.asarray(idx.torque_low), jnp.asarray(idx.torque_high))


def gripper_ctrl(cfg: OSCConfig, idx: OSCIndices, ctrl: jax.Array, grip: jax.Array, dt: float) -> jax.Array:
    """Finger actuator ctrl f32[2] after one substep of robosuite's PandaGripper ramp.

    The ramp state `current_action` (f32[2], +1/-1 per finger when open) is recovered from the
    previous ctrl; `grip` > 0 closes, < 0 opens, 0 holds, at `gripper_rate` per second.
    """
    low, high = jnp.asarray(idx.finger_ctrl_low), jnp.asarray(idx.finger_ctrl_high)
    bias, weight = 0.5 * (high + low), 0.5 * (high - low)
    current = (ctrl[np.asarray(idx.finger_actuator)] - bias) / weight
    current = jnp.clip(current + jnp.array([-1.0, 1.0]) * (cfg.gripper_rate * dt) * jnp.sign(grip), -1.0, 1.0)
    return bias + weight * current


def _position_velocity(mx: mjx.Model, d: mjx.Data) -> mjx.Data:
    """The part of mjx.forward that does not depend on ctrl."""
    d = mjx.fwd_position(mx, d)
    d = mjx.sensor_pos(mx, d)
    d = mjx.fwd_velocity(mx, d)
    return mjx.sensor_vel(mx, d)


def _accelerate_integrate(mx: mjx.Model, d: mjx.Data) -> mjx.Data:
    """The rest of mjx.step after the controller wrote ctrl: actuation, constraints, integration."""
    d = mjx.fwd_actuation(mx, d)
    d = mjx.fwd_acceleration(mx, d)
    if d._impl.efc_J.size == 0:  # static shape; mirrors mjx.forward (no public accessor)
        d = d.replace(qacc=d.qacc_smooth)
    else:
        d = mjx.solve(mx, d)
        d = mjx.sensor_acc(mx, d)
    if mx.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER:
        return mjx.euler(mx, d)
    if mx.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST:
        return mjx.implicit(mx, d)
    raise ValueError(f"OSC substeps support the Euler and implicitfast integrators, not {mx.opt.integrator}")


def osc_substep(
    cfg: OSCConfig, idx: OSCIndices, mx: mjx.Model, data: mjx.Data, goal: Goal, grip: jax.Array, dt: float
) -> mjx.Data:
    """One physics substep: torques and gripper ctrl from the current state, then integrate.

    `data` must have the position/velocity stages current; the returned data has them as MuJoCo C
    leaves them after mj_step: from before the integration.
    """
    ctrl = data.ctrl.at[np.asarray(idx.arm_actuator)].set(arm_torques(cfg, idx, mx, data, goal))
    ctrl = ctrl.at[np.asarray(idx.finger_actuator)].set(gripper_ctrl(cfg, idx, data.ctrl, grip, dt))
    return _accelerate_integrate(mx, data.replace(ctrl=ctrl))


def osc_control_step(
    cfg: OSCConfig,
    idx: OSCIndices,
    mx: mjx.Model,
    data: mjx.Data,
    action: jax.Array,
    substeps: int | None = None,
) -> mjx.Data:
    """One 20 Hz control step for action f32[7] (robosuite env.step): goal once, `substeps` physics
    substeps with torques recomputed before each.

    substeps defaults to cfg.substeps; `mx.opt.timestep` should be cfg.control_dt / substeps. The
    result is what LIBERO observes after env.step: qpos/qvel advanced, kinematics (site_xpos, xpos,
    ...) from the start of the last substep, as MuJoCo C leaves them after mj_step. Call
    `mjx.kinematics` on it where current kinematics are needed.
    """
    substeps = cfg.substeps if substeps is None else int(substeps)
    dt = cfg.control_dt / substeps
    if not isinstance(mx.opt.timestep, jax.core.Tracer) and abs(float(mx.opt.timestep) - dt) > 1e-9:
        raise ValueError(
            f"the model's timestep {float(mx.opt.timestep)} is not control_dt / substeps = {dt}: set "
            f"opt.timestep = {dt} in the scene (or OSCConfig(timestep=...) / substeps to match)"
        )
    grip = jnp.clip(action[6], -1.0, 1.0)
    blank = Goal(jnp.zeros(3, data.qpos.dtype), jnp.eye(3, dtype=data.qpos.dtype))

    def body(carry, k):
        d, goal = carry
        d = _position_velocity(mx, d)
        # the goal is set once, at the first substep (set_goal is cheap next to a substep)
        new_goal, with_goal = set_goal(cfg, idx, d, action)
        first = k == 0
        goal = jax.tree.map(lambda a, b: jnp.where(first, a, b), new_goal, goal)
        d = d.replace(userdata=jnp.where(first, with_goal.userdata, d.userdata))
        return (osc_substep(cfg, idx, mx, d, goal, grip, dt), goal), None

    (data, _), _ = jax.lax.scan(body, (data, blank), jnp.arange(substeps))
    return data


def osc_reset(cfg: OSCConfig, idx: OSCIndices, mx: mjx.Model, data: mjx.Data) -> mjx.Data:
    """Controller state after an env reset, for data already holding the initial state.

    As robosuite after LIBERO's reset() + set_init_state() (when cfg.reset_goal_from_init_qpos):
    the goal orientation and the first step's goal position are the grip-site pose at
    cfg.nullspace_qpos (the robot's init_qpos); otherwise both come from the current pose. The
    gripper ramp restarts at 0 (finger ctrl at mid-range), like a freshly loaded PandaGripper.
    """
    if cfg.reset_goal_from_init_qpos:
        posed = data.replace(qpos=data.qpos.at[np.asarray(idx.arm_qpos)].set(jnp.asarray(cfg.nullspace_qpos)))
    else:
        posed = data
    posed = mjx.kinematics(mx, posed)
    pos, ori = eef_pose(idx, posed)
    flag = jnp.ones(1) if cfg.reset_goal_from_init_qpos else jnp.zeros(1)
    state = jnp.concatenate([ori.reshape(9), pos, flag]).astype(data.userdata.dtype)
    adr = idx.userdata_adr
    low, high = jnp.asarray(idx.finger_ctrl_low), jnp.asarray(idx.finger_ctrl_high)
    ctrl = data.ctrl.at[np.asarray(idx.finger_actuator)].set(0.5 * (low + high))
    return data.replace(userdata=data.userdata.at[adr : adr + OSC_USERDATA_SIZE].set(state), ctrl=ctrl)

"""End-effector pose controller (robosuite OSC_POSE semantics, damped-least-squares tracking).

An action a f32[7] in [-1, 1] asks for a TCP displacement of `pos_scale * a[:3]` metres and a
world-frame rotation `rot_scale * a[3:6]` (axis-angle, radians) relative to the current pose, like
robosuite's OSC_POSE with its default output limits (0.05 m, 0.5 rad), and a gripper command
a[6] (-1 open, +1 close). The pose step is mapped to joint targets by one damped-least-squares
step through the TCP Jacobian (plus a null-space pull toward the home posture); stiff joint
position servos then track the targets during the physics substeps. Pure functions of
(model, data); jit at the caller.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pirl.envs.mjx_module import mjx
from pirl.envs.scene import FINGER_OPEN, HOME_QPOS, SceneInfo


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Action scaling and IK gains."""

    pos_scale: float = 0.05
    """Metres of TCP motion per unit action (robosuite OSC_POSE output_max)."""
    rot_scale: float = 0.5
    """Radians of TCP rotation per unit action (robosuite OSC_POSE output_max)."""
    damping: float = 0.05
    """Damped-least-squares damping lambda."""
    nullspace_gain: float = 0.2
    """Fraction of the home-posture error removed per step in the Jacobian null space."""
    finger_close_target: float = -0.012
    """Finger servo target when fully closed (past contact, so the grip presses; force-limited)."""


def skew(v: jax.Array) -> jax.Array:
    """f32[3] -> f32[3,3] cross-product matrix."""
    x, y, z = v[0], v[1], v[2]
    zero = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([zero, -z, y]), jnp.stack([z, zero, -x]), jnp.stack([-y, x, zero])])


def rotvec_to_mat(r: jax.Array) -> jax.Array:
    """Axis-angle f32[3] -> rotation matrix f32[3,3] (Rodrigues; safe at 0)."""
    theta2 = jnp.sum(r * r)
    theta = jnp.sqrt(theta2 + 1e-20)
    small = theta2 < 1e-10
    a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
    b = jnp.where(small, 0.5 - theta2 / 24.0, (1.0 - jnp.cos(theta)) / (theta2 + 1e-20))
    k = skew(r)
    return jnp.eye(3) + a * k + b * (k @ k)


def quat_to_rotvec(q: jax.Array) -> jax.Array:
    """Unit quaternion (w, x, y, z) f32[4] -> axis-angle f32[3] with angle in [0, pi]."""
    q = q * jnp.where(q[0] < 0, -1.0, 1.0)
    w = jnp.clip(q[0], -1.0, 1.0)
    s = jnp.sqrt(jnp.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * jnp.arccos(w)
    scale = jnp.where(s < 1e-6, 2.0, angle / jnp.maximum(s, 1e-6))
    return q[1:] * scale


def mat_to_quat(m: jax.Array) -> jax.Array:
    """Rotation matrix f32[3,3] -> unit quaternion (w, x, y, z), robust branchless form."""
    t = jnp.trace(m)
    cands = jnp.stack(
        [
            jnp.array([1.0 + t, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]),
            jnp.array(
                [m[2, 1] - m[1, 2], 1.0 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]]
            ),
            jnp.array(
                [m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1.0 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1]]
            ),
            jnp.array(
                [m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1.0 - m[0, 0] - m[1, 1] + m[2, 2]]
            ),
        ]
    )
    diag = jnp.array([t, m[0, 0], m[1, 1], m[2, 2]])
    q = cands[jnp.argmax(diag)]
    return q / jnp.linalg.norm(q)


def mat_to_rotvec(m: jax.Array) -> jax.Array:
    """Rotation matrix f32[3,3] -> axis-angle f32[3]."""
    return quat_to_rotvec(mat_to_quat(m))


def tcp_pose(info: SceneInfo, data: mjx.Data) -> tuple[jax.Array, jax.Array]:
    """TCP position f32[3] and orientation matrix f32[3,3] (z axis points out of the gripper)."""
    return data.site_xpos[info.tcp_site], data.site_xmat[info.tcp_site]


def gripper_targets(cfg: ControllerConfig, g: jax.Array) -> jax.Array:
    """Gripper command g in [-1, 1] (-1 open) -> finger servo targets f32[2] (left +, right -)."""
    open_frac = jnp.clip((1.0 - g) * 0.5, 0.0, 1.0)
    left = cfg.finger_close_target + (FINGER_OPEN - cfg.finger_close_target) * open_frac
    return jnp.stack([left, -left])


def joint_targets(
    cfg: ControllerConfig, info: SceneInfo, mx: mjx.Model, data: mjx.Data, action: jax.Array
) -> jax.Array:
    """One DLS IK step: action f32[7] -> arm joint targets f32[7] (within joint limits)."""
    action = jnp.clip(action, -1.0, 1.0)
    err = jnp.concatenate([action[:3] * cfg.pos_scale, action[3:6] * cfg.rot_scale])
    pos, _ = tcp_pose(info, data)
    jacp, jacr = mjx.jac(mx, data, pos, info.hand_body)
    jac = jnp.concatenate([jacp[info.arm_dof_adr].T, jacr[info.arm_dof_adr].T])  # [6, 7]
    jjt = jac @ jac.T + (cfg.damping**2) * jnp.eye(6)
    jpinv = jac.T @ jnp.linalg.solve(jjt, jnp.eye(6))  # [7, 6]
    q = data.qpos[info.arm_qpos_adr]
    null = jnp.eye(7) - jpinv @ jac
    dq = jpinv @ err + cfg.nullspace_gain * (null @ (jnp.asarray(HOME_QPOS) - q))
    rng = jnp.asarray(info.arm_range)
    return jnp.clip(q + dq, rng[:, 0], rng[:, 1])


def compute_ctrl(
    cfg: ControllerConfig, info: SceneInfo, mx: mjx.Model, data: mjx.Data, action: jax.Array
) -> jax.Array:
    """Action f32[7] -> actuator controls f32[nu]."""
    ctrl = data.ctrl
    ctrl = ctrl.at[info.arm_ctrl_ids].set(joint_targets(cfg, info, mx, data, action))
    return ctrl.at[info.finger_ctrl_ids].set(gripper_targets(cfg, jnp.clip(action[6], -1.0, 1.0)))


def physics_step(mx: mjx.Model, data: mjx.Data, ctrl: jax.Array, substeps: int) -> mjx.Data:
    """Hold `ctrl` for `substeps` MJX steps, then refresh kinematics so observations are current."""
    data = data.replace(ctrl=ctrl)

    def body(d, _):
        return mjx.step(mx, d), None

    data, _ = jax.lax.scan(body, data, None, length=substeps)
    data = mjx.kinematics(mx, data)
    return mjx.com_pos(mx, data)

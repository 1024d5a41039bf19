"""Task suites: language instructions, goal predicates, and the fixed initial states per task.

A suite is one MJCF scene plus a list of tasks. A task is an instruction and one or two goals
(all must hold). Goals are predicates over the simulator state, evaluated in JAX:
  on(obj, region)     object centre inside a disc region (plate, stove burner), resting low
  in(obj, region)     object centre inside a rectangular region (basket), below its rim
  open / turn_on      a 1-DoF mechanism's joint (drawer slide, stove knob) past a threshold
Initial states are generated on the host from a per-task seed (numpy), 50 per task, so every
run, every process and every GRPO group sees the same list.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from pirl.envs.mjx_module import mjx
from pirl.envs.scene import FINGER_OPEN, HOME_QPOS, SceneInfo

NUM_INIT_STATES = 50
MAX_GOALS = 2
GoalKind = Literal["on", "in", "open", "turn_on"]
KIND_ID = {"on": 0, "in": 1, "open": 2, "turn_on": 2}


@dataclasses.dataclass(frozen=True)
class Region:
    """A place objects go: a body (mocap or static) plus a footprint."""

    body: str
    """Body whose origin is the region centre."""
    radius: float = 0.0
    """Disc radius for `on` (m)."""
    half_xy: tuple[float, float] = (0.0, 0.0)
    """Rectangle half extents for `in` (m)."""
    offset: tuple[float, float] = (0.0, 0.0)
    """Centre offset from the body origin (m, world xy)."""
    top: float = 0.006
    """Height of the surface an object rests on (m)."""


@dataclasses.dataclass(frozen=True)
class Goal:
    """One predicate of a task."""

    kind: GoalKind
    obj: str = ""
    """Free object name (on / in)."""
    region: str = ""
    """Region name (on / in)."""
    joint: str = ""
    """Mechanism joint (open / turn_on)."""
    threshold: float = 0.0
    """Joint value above which the mechanism counts as open / on."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Nominal placement of one task's scene; initial states jitter around it."""

    objects: dict[str, tuple[float, float]]
    """Free object -> nominal (x, y)."""
    mocap: dict[str, tuple[float, float]]
    """Mocap body -> nominal (x, y)."""
    jitter: float = 0.015
    """Uniform xy jitter half-width (m)."""
    yaw_jitter: float = 0.3
    """Uniform object yaw jitter half-width (rad)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: instruction, goals, nominal layout."""

    instruction: str
    goals: tuple[Goal, ...]
    layout: Layout


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """A suite of tasks over one scene."""

    name: str
    scene: str
    tasks: tuple[TaskSpec, ...]
    regions: dict[str, Region]
    max_steps: int
    """Episode limit in control steps."""
    control_hz: float = 20.0
    """Control rate; physics substeps = 1 / (control_hz * timestep)."""
    state_kind: Literal["eef", "joints"] = "eef"
    """`eef`: LIBERO 8-D state; `joints`: 7 arm joints + gripper opening."""
    cameras: tuple[str, ...] = ("agentview", "eye_in_hand")
    """MJCF cameras rendered, in observation order."""
    parked: tuple[float, float] = (0.0, 0.0)
    """Where objects absent from a layout are parked (x, y), spaced along x (off table, unseen)."""


# ----------------------------------------------------------------------------- suites

_BOWL_PLATE = Region("plate", radius=0.06)
_BASKET = Region("basket", half_xy=(0.085, 0.105), top=0.0)
_STOVE = Region("stove", radius=0.06)


def _on_plate(bowl: str) -> tuple[Goal, ...]:
    return (Goal("on", obj=bowl, region="plate"),)


def _spatial() -> SuiteSpec:
    def task(relation: str, target: str, objects: dict, mocap: dict) -> TaskSpec:
        return TaskSpec(
            f"pick up the black bowl {relation} and place it on the plate",
            _on_plate(target),
            Layout(objects, mocap),
        )

    tasks = (
        task(
            "between the plate and the ramekin",
            "bowl_0",
            {"bowl_0": (0.06, -0.02), "bowl_1": (-0.13, 0.05), "bowl_2": (-0.1, -0.17)},
            {"plate": (0.06, -0.19), "ramekin": (0.06, 0.13), "cookie_box": (-0.14, 0.22)},
        ),
        task(
            "next to the ramekin",
            "bowl_1",
            {"bowl_0": (-0.12, 0.0), "bowl_1": (0.1, 0.08), "bowl_2": (0.02, -0.06)},
            {"plate": (-0.08, -0.2), "ramekin": (0.12, 0.19), "cookie_box": (0.12, -0.2)},
        ),
        task(
            "next to the cookie box",
            "bowl_2",
            {"bowl_0": (0.12, 0.03), "bowl_1": (-0.12, -0.08), "bowl_2": (-0.08, 0.1)},
            {"plate": (0.06, -0.18), "ramekin": (0.12, 0.16), "cookie_box": (-0.1, 0.22)},
        ),
        task(
            "from table center",
            "bowl_0",
            {"bowl_0": (0.0, 0.0), "bowl_1": (0.15, -0.1), "bowl_2": (-0.16, 0.1)},
            {"plate": (-0.1, -0.19), "ramekin": (0.13, 0.18), "cookie_box": (-0.12, 0.24)},
        ),
        task(
            "next to the plate",
            "bowl_1",
            {"bowl_0": (-0.12, 0.02), "bowl_1": (0.1, 0.0), "bowl_2": (0.12, 0.2)},
            {"plate": (0.1, -0.14), "ramekin": (-0.12, 0.18), "cookie_box": (-0.12, -0.2)},
        ),
        task(
            "between the cookie box and the ramekin",
            "bowl_2",
            {"bowl_0": (-0.12, 0.12), "bowl_1": (-0.02, -0.12), "bowl_2": (0.11, 0.08)},
            {"plate": (-0.12, -0.19), "ramekin": (0.11, -0.06), "cookie_box": (0.11, 0.22)},
        ),
    )
    return SuiteSpec("toy_spatial", "toy_spatial", tasks, {"plate": _BOWL_PLATE}, max_steps=240)


_OBJECT_NAMES = {
    "alphabet_soup": "alphabet soup",
    "cream_cheese": "cream cheese",
    "tomato_sauce": "tomato sauce",
    "ketchup": "ketchup",
    "milk": "milk",
    "butter": "butter",
}
_OBJECT_SLOTS = ((-0.13, 0.06), (0.0, 0.06), (0.13, 0.06), (-0.13, 0.2), (0.0, 0.2), (0.13, 0.2))


def _object() -> SuiteSpec:
    tasks = []
    names = list(_OBJECT_NAMES)
    for k, obj in enumerate(names):
        # Each task has its own slot assignment, so the target is not always in the same place.
        order = np.random.default_rng(100 + k).permutation(len(names))
        objects = {names[i]: _OBJECT_SLOTS[j] for j, i in enumerate(order)}
        tasks.append(
            TaskSpec(
                f"pick up the {_OBJECT_NAMES[obj]} and place it in the basket",
                (Goal("in", obj=obj, region="basket"),),
                Layout(objects, {"basket": (0.02, -0.2)}, jitter=0.012),
            )
        )
    return SuiteSpec("toy_object", "toy_object", tuple(tasks), {"basket": _BASKET}, max_steps=240)


_DRAWER_OPEN = 0.08
_KNOB_ON = 0.8


def _goal() -> SuiteSpec:
    layout = Layout(
        {"bowl": (-0.05, 0.1), "cream_cheese": (0.1, -0.05)},
        {"plate": (-0.12, -0.12)},
        jitter=0.03,
    )
    tasks = (
        TaskSpec(
            "open the drawer of the cabinet", (Goal("open", joint="drawer", threshold=_DRAWER_OPEN),), layout
        ),
        TaskSpec("turn on the stove", (Goal("turn_on", joint="knob", threshold=_KNOB_ON),), layout),
        TaskSpec("put the bowl on the plate", (Goal("on", obj="bowl", region="plate"),), layout),
        TaskSpec("put the bowl on the stove", (Goal("on", obj="bowl", region="stove"),), layout),
        TaskSpec(
            "put the cream cheese on the plate", (Goal("on", obj="cream_cheese", region="plate"),), layout
        ),
        TaskSpec(
            "put the cream cheese on the stove", (Goal("on", obj="cream_cheese", region="stove"),), layout
        ),
    )
    return SuiteSpec("toy_goal", "toy_goal", tasks, {"plate": _BOWL_PLATE, "stove": _STOVE}, max_steps=320)


def _libero10() -> SuiteSpec:
    layout = Layout(
        {
            "alphabet_soup": (0.12, 0.05),
            "tomato_sauce": (0.14, 0.2),
            "cream_cheese": (-0.02, 0.0),
            # Not next to the basket: its wall capsules would overlap the butter's box at rest.
            "butter": (0.0, -0.17),
            "white_mug": (0.1, -0.1),
        },
        {"basket": (-0.12, 0.24), "plate_left": (-0.15, -0.2), "plate_right": (-0.1, 0.04)},
        jitter=0.012,
    )
    in_basket = lambda o: Goal("in", obj=o, region="basket")  # noqa: E731
    tasks = (
        TaskSpec(
            "put both the alphabet soup and the tomato sauce in the basket",
            (in_basket("alphabet_soup"), in_basket("tomato_sauce")),
            layout,
        ),
        TaskSpec(
            "put both the cream cheese box and the butter in the basket",
            (in_basket("cream_cheese"), in_basket("butter")),
            layout,
        ),
        TaskSpec(
            "turn on the stove and put the white mug on it",
            (Goal("turn_on", joint="knob", threshold=_KNOB_ON), Goal("on", obj="white_mug", region="stove")),
            layout,
        ),
        TaskSpec(
            "put the white mug on the left plate and put the butter on the right plate",
            (
                Goal("on", obj="white_mug", region="plate_left"),
                Goal("on", obj="butter", region="plate_right"),
            ),
            layout,
        ),
        TaskSpec(
            "put both the alphabet soup and the cream cheese box in the basket",
            (in_basket("alphabet_soup"), in_basket("cream_cheese")),
            layout,
        ),
        TaskSpec(
            "put the tomato sauce on the left plate and turn on the stove",
            (
                Goal("on", obj="tomato_sauce", region="plate_left"),
                Goal("turn_on", joint="knob", threshold=_KNOB_ON),
            ),
            layout,
        ),
    )
    regions = {
        "basket": _BASKET,
        "stove": _STOVE,
        "plate_left": Region("plate_left", radius=0.055),
        "plate_right": Region("plate_right", radius=0.055),
    }
    return SuiteSpec("toy_10", "toy_10", tasks, regions, max_steps=480)


_MS_OBJECTS = ("carrot", "eggplant", "banana", "green_cube", "sponge")


def _maniskill() -> SuiteSpec:
    tasks = []
    for k, obj in enumerate(_MS_OBJECTS):
        distractor = _MS_OBJECTS[(k + 2) % len(_MS_OBJECTS)]
        tasks.append(
            TaskSpec(
                f"put {obj.replace('_', ' ')} on plate",
                (Goal("on", obj=obj, region="plate"),),
                Layout({obj: (0.05, 0.1), distractor: (-0.1, 0.15)}, {"plate": (0.0, -0.13)}, jitter=0.04),
            )
        )
    return SuiteSpec(
        "maniskill_put_on_plate",
        "maniskill_put_on_plate",
        tuple(tasks),
        {"plate": Region("plate", radius=0.065)},
        max_steps=80,
        control_hz=5.0,
        state_kind="joints",
        cameras=("agentview",),
        parked=(-0.3, -1.0),
    )


SUITES = {
    "toy_spatial": _spatial,
    "toy_object": _object,
    "toy_goal": _goal,
    "toy_10": _libero10,
    "maniskill_put_on_plate": _maniskill,
}


def get_suite(name: str) -> SuiteSpec:
    """Suite by name (see SUITES)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]()


# ----------------------------------------------------------------------------- initial states


@dataclasses.dataclass(frozen=True)
class InitStates:
    """Fixed initial states of a suite, indexed [task, init]."""

    qpos: np.ndarray  # f32[T, N, nq]
    mocap_pos: np.ndarray  # f32[T, N, nmocap, 3]
    mocap_quat: np.ndarray  # f32[T, N, nmocap, 4]


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def make_init_states(suite: SuiteSpec, info: SceneInfo, num: int = NUM_INIT_STATES) -> InitStates:
    """Generate `num` initial states per task from a seed derived from the suite and task index.

    Objects rest on the table (z = their collision half-height), arm at home, gripper open,
    mechanisms closed/off. Jitter never moves two items closer than their footprints allow.
    """
    m = info.mj_model
    n_tasks = len(suite.tasks)
    qpos = np.zeros((n_tasks, num, m.nq), np.float32)
    mpos = np.zeros((n_tasks, num, m.nmocap, 3), np.float32)
    mquat = np.zeros((n_tasks, num, m.nmocap, 4), np.float32)
    radius = {n: float(np.hypot(*info.object_half_size[i][:2])) for i, n in enumerate(info.object_names)}
    for t, task in enumerate(suite.tasks):
        unknown = set(task.layout.objects) - set(info.object_names)
        if unknown:
            raise ValueError(f"{suite.name} task {t}: layout names unknown objects {sorted(unknown)}")
        rng = np.random.default_rng(zlib.crc32(f"{suite.name}/{t}".encode()))
        for n in range(num):
            q = m.qpos0.copy()
            q[info.arm_qpos_adr] = HOME_QPOS
            q[info.finger_qpos_adr] = (FINGER_OPEN, -FINGER_OPEN)
            placed: list[tuple[float, float, float]] = []
            for i, name in enumerate(info.object_names):
                adr = info.object_qpos_adr[i]
                if name not in task.layout.objects:
                    x, y = suite.parked[0] + 0.15 * i, suite.parked[1]
                    q[adr : adr + 7] = (x, y, info.object_half_size[i][2], 1, 0, 0, 0)
                    continue
                nx, ny = task.layout.objects[name]
                for _ in range(100):
                    x, y = np.array([nx, ny]) + rng.uniform(-1, 1, 2) * task.layout.jitter
                    if all(np.hypot(x - px, y - py) > radius[name] + pr + 0.005 for px, py, pr in placed):
                        break
                placed.append((x, y, radius[name]))
                yaw = rng.uniform(-1, 1) * task.layout.yaw_jitter
                q[adr : adr + 3] = (x, y, info.object_half_size[i][2])
                q[adr + 3 : adr + 7] = _yaw_quat(yaw)
            for name, mid in info.mocap_id.items():
                nx, ny = task.layout.mocap.get(name, (suite.parked[0] - 0.3 * mid, suite.parked[1]))
                xy = np.array([nx, ny]) + rng.uniform(-1, 1, 2) * task.layout.jitter * 0.5
                mpos[t, n, mid] = (xy[0], xy[1], 0.0)
                mquat[t, n, mid] = (1, 0, 0, 0)
            for jname, adr in info.joint_qpos_adr.items():
                q[adr] = rng.uniform(-0.05, 0.05) if jname == "knob" else 0.0
            qpos[t, n] = q
    return InitStates(qpos, mpos, mquat)


# ----------------------------------------------------------------------------- predicates


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GoalTable:
    """Per-task goals as arrays, for evaluation under jit/vmap (T tasks, G goal slots)."""

    kind: jax.Array  # i32[T, G]: 0 on-disc, 1 in-rect, 2 joint-above
    valid: jax.Array  # bool[T, G]
    obj: jax.Array  # i32[T, G] object index
    region_body: jax.Array  # i32[T, G]
    region_offset: jax.Array  # f32[T, G, 2]
    region_size: jax.Array  # f32[T, G, 2] (radius, 0) or half extents
    region_top: jax.Array  # f32[T, G]
    joint_adr: jax.Array  # i32[T, G]
    threshold: jax.Array  # f32[T, G]


def make_goal_table(suite: SuiteSpec, info: SceneInfo) -> GoalTable:
    """Encode every task's goals as arrays; checks names against the scene."""
    t_n = len(suite.tasks)
    z = lambda dt, *s: np.zeros((t_n, MAX_GOALS, *s), dt)  # noqa: E731
    kind, valid, obj, body = z(np.int32), z(bool), z(np.int32), z(np.int32)
    off, size, top, adr, thr = z(np.float32, 2), z(np.float32, 2), z(np.float32), z(np.int32), z(np.float32)
    m = info.mj_model
    for t, task in enumerate(suite.tasks):
        if not 1 <= len(task.goals) <= MAX_GOALS:
            raise ValueError(f"{suite.name} task {t}: needs 1..{MAX_GOALS} goals")
        for g, goal in enumerate(task.goals):
            kind[t, g], valid[t, g] = KIND_ID[goal.kind], True
            if goal.kind in ("on", "in"):
                if goal.obj not in info.object_names or goal.region not in suite.regions:
                    raise ValueError(f"{suite.name} task {t}: bad goal {goal}")
                region = suite.regions[goal.region]
                obj[t, g] = info.object_names.index(goal.obj)
                body[t, g] = m.body(region.body).id
                off[t, g] = region.offset
                size[t, g] = (region.radius, 0.0) if goal.kind == "on" else region.half_xy
                top[t, g] = region.top
            else:
                if goal.joint not in info.joint_qpos_adr:
                    raise ValueError(f"{suite.name} task {t}: no joint {goal.joint!r} in scene")
                adr[t, g], thr[t, g] = info.joint_qpos_adr[goal.joint], goal.threshold
    return GoalTable(*(jnp.asarray(a) for a in (kind, valid, obj, body, off, size, top, adr, thr)))


def region_center(table: GoalTable, data: mjx.Data, task_id: jax.Array, g: int) -> jax.Array:
    """World xy f32[2] of goal g's region centre."""
    return data.xpos[table.region_body[task_id, g], :2] + table.region_offset[task_id, g]


def goals_satisfied(table: GoalTable, info: SceneInfo, data: mjx.Data, task_id: jax.Array) -> jax.Array:
    """bool[G]: which goals of `task_id` hold now (invalid slots count as satisfied)."""
    half_z = jnp.asarray(info.object_half_size[:, 2])
    out = []
    for g in range(MAX_GOALS):
        o = table.obj[task_id, g]
        pos = data.xpos[jnp.asarray(info.object_body)[o]]
        bottom = pos[2] - half_z[o]
        d = pos[:2] - region_center(table, data, task_id, g)
        size = table.region_size[task_id, g]
        on = (jnp.linalg.norm(d) < size[0]) & (bottom < table.region_top[task_id, g] + 0.02)
        inside = jnp.all(jnp.abs(d) < size) & (bottom < 0.05)
        joint = data.qpos[table.joint_adr[task_id, g]] > table.threshold[task_id, g]
        hold = jnp.stack([on, inside, joint])[table.kind[task_id, g]]
        out.append(hold | ~table.valid[task_id, g])
    return jnp.stack(out)


def task_success(table: GoalTable, info: SceneInfo, data: mjx.Data, task_id: jax.Array) -> jax.Array:
    """bool[]: all goals of the task hold."""
    return jnp.all(goals_satisfied(table, info, data, task_id))

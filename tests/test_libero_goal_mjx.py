"""LIBERO's BDDL goal predicates (pirl.envs.libero_predicates) and the faithful MJX env
(pirl.envs.libero_mjx_env) against the real LIBERO.

CI: the predicates against LIBERO's own `_eval_predicate` in the real env (two libero_10 tasks that
together use turnon, close, in and on-a-site, plus libero_spatial task 0's on-an-object), the jnp
evaluation on mjx.Data, and the env's cheap paths. Nightly: all 40 tasks, and the compiled env
(settle steps, control step, reward at a success state, vmap over 2 envs).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from support import settled_scene_data

from pirl.envs import libero_predicates as lp


def test_joint_interval_recovers_threshold_functions():
    assert lp.joint_interval(lambda q: q >= 0.5) == [0.5, math.inf]
    lo, hi = lp.joint_interval(lambda q: q < -1.3)
    assert lo == -math.inf and hi == pytest.approx(-1.3, abs=1e-9)
    lo, hi = lp.joint_interval(lambda q: q > -0.005)
    assert lo == pytest.approx(-0.005, abs=1e-9) and hi == math.inf
    assert lp.joint_interval(lambda q: False) == [math.inf, -math.inf]
    with pytest.raises(ValueError, match="one interval"):
        lp.joint_interval(lambda q: abs(q) > 1.0)


def test_rl_config_takes_faithful_task_sets():
    from pirl.rl.config import EnvSpec, RLConfig

    # several tasks in one MJX run: the env checks that their scenes match (test_tasks_that_share_a_scene...)
    assert RLConfig(env=EnvSpec(name="libero_spatial")).env.task_ids == ()
    # the real LIBERO backend's (RLinf's) episode limits, so both backends run the same episodes
    assert RLConfig(env=EnvSpec(name="libero_goal", task_ids=(3,))).max_episode_steps == 320
    assert RLConfig(env=EnvSpec(name="libero_10", task_ids=(3,), backend="libero")).max_episode_steps == 480


def test_task_models_stack_only_what_differs():
    """TaskModels keeps arrays equal in every task once and stacks the others; scenes of another
    structure are refused with what to do."""
    import jax.numpy as jnp
    import mujoco
    from mujoco import mjx

    from pirl.envs.libero_mjx_env import TaskModels
    from pirl.errors import UserError

    xml = '<mujoco><worldbody><body name="b" pos="{x} 0 0"><freejoint/><geom size="0.1"/>{extra}</body></worldbody></mujoco>'
    a, b, c = (
        mjx.put_model(mujoco.MjModel.from_xml_string(xml.format(x=x, extra=extra)))
        for x, extra in ((0.1, ""), (0.3, ""), (0.1, '<geom type="box" size="0.1 0.1 0.1"/>'))
    )
    models = TaskModels.build("s", (2, 5), [a, b])
    stacked = [i for i, v in enumerate(models.varying) if v]
    assert stacked and len(stacked) < len(models.varying)  # body_pos and what follows; not the rest
    np.testing.assert_allclose(np.asarray(models.model(1).body_pos), np.asarray(b.body_pos))
    np.testing.assert_allclose(np.asarray(models.model(jnp.int32(0)).body_pos), np.asarray(a.body_pos))
    assert models.model(1).geom_size is a.geom_size  # shared arrays are the first task's own
    with pytest.raises(UserError, match="tasks 2 and 5 have differently built scenes"):
        TaskModels.build("s", (2, 5), [a, c])


pytest.importorskip("libero")


def _check_report(report: dict) -> list[bool]:
    """Our terms equal LIBERO's at every state; LIBERO fails at the initial states and succeeds at the
    placed ones. Returns the placed states' LIBERO success."""
    placed_success = []
    for rec in report["records"]:
        assert rec["ours"] == rec["libero"], rec
        assert all(rec["libero"]) == rec["success_libero"]
        if not rec["placed"]:
            assert not rec["success_libero"], rec
        else:
            placed_success.append(rec["success_libero"])
    return placed_success


CI_TASKS = [("libero_spatial", 0), ("libero_10", 2), ("libero_10", 3)]
"""on(bowl, plate) (object with contact); turnon(flat_stove_1) + on(moka_pot_1, flat_stove_1_cook_region)
(site with its parent's contact); close(white_cabinet_1_bottom_region) + in(akita_black_bowl_1,
white_cabinet_1_bottom_region) (a drawer: opened, filled, closed)."""


@pytest.fixture(scope="module")
def reports() -> dict:
    """LIBERO's and our goal terms in the real LIBERO at init 0 of CI_TASKS (one spawned process)."""
    out = lp.libero_goal_reports_isolated(CI_TASKS, [0])
    return dict(zip(CI_TASKS, out, strict=True))


def test_predicates_agree_with_libero(reports):
    kinds = {key: {t["kind"] for t in r["spec"]["terms"]} for key, r in reports.items()}
    assert kinds == {
        ("libero_spatial", 0): {"object_on"},
        ("libero_10", 2): {"joints", "site_on"},
        ("libero_10", 3): {"joints", "site_in"},
    }
    for report in reports.values():
        assert _check_report(report) == [True]


@pytest.fixture(scope="module")
def spatial(reports):
    """libero_spatial task 0: the rebuilt model, its goal program, and LIBERO's states at init 0
    (as loaded, and with the bowl placed on the plate and settled, where LIBERO reports success)."""
    from pirl.envs import libero_scene as ls

    report = reports[("libero_spatial", 0)]
    task = ls.load_task("libero_spatial", 0)
    return task, lp.compile_goal(report["spec"], task.model), report["records"]


def test_goal_on_mjx_data_matches_mujoco_c(spatial):
    """The jnp evaluation on mjx.Data (contacts in MJX's layout) equals the numpy one on MuJoCo C, on
    the rebuilt scene, at LIBERO's initial and success states (as LIBERO has them, not re-settled:
    the fitted boxes sit higher than LIBERO's meshes, see the nightly test)."""
    import jax
    import jax.numpy as jnp
    import mujoco
    from mujoco import mjx

    from pirl.envs import libero_scene as ls

    _, program, records = spatial
    # MuJoCo C finds up to ~80 contacts at LIBERO's raw initial states; put_data needs room for them
    m = ls.load_task("libero_spatial", 0, ls.SceneConfig(max_contact_points=256)).model
    evaluate = jax.jit(lambda d: lp.success(program, lp.view_mjx(d), jnp))
    for rec in records:
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:] = rec["qpos"], rec["qvel"]
        mujoco.mj_forward(m, d)  # LIBERO's state as it is: the fitted boxes touch where LIBERO's geoms do
        host = bool(lp.success(program, lp.view_mujoco(m, d)))
        assert host == rec["placed"], rec["init_id"]
        assert bool(evaluate(mjx.put_data(m, d))) == host


def test_goal_term_reads_contacts_and_heights(spatial):
    """on(bowl, plate) needs the contact: the success state without its contacts, or with the bowl
    moved 5 cm sideways, is not success."""
    import mujoco

    task, program, records = spatial
    m = task.model
    d = mujoco.MjData(m)
    rec = next(r for r in records if r["placed"])
    d.qpos[:] = rec["qpos"]
    mujoco.mj_forward(m, d)
    v = lp.view_mujoco(m, d)
    assert bool(lp.success(program, v))
    no_contact = lp.SimView(
        v.qpos, v.xpos, v.site_xpos, v.site_xmat, v.contact_geom, np.zeros_like(v.contact_on)
    )
    assert not bool(lp.success(program, no_contact))
    obj = program.terms[0]["obj"]
    xpos = v.xpos.copy()
    xpos[obj, 0] += 0.05
    moved = lp.SimView(v.qpos, xpos, v.site_xpos, v.site_xmat, v.contact_geom, v.contact_on)
    assert not bool(lp.success(program, moved))


def test_make_env_checks_its_tasks():
    from pirl.envs import make_env
    from pirl.errors import UserError

    with pytest.raises(UserError, match="unknown LiberoEnvConfig"):
        make_env("libero_goal", task_ids=(0,), render=False, timestep=0.01)
    with pytest.raises(UserError, match="distinct tasks"):
        make_env("libero_goal", task_ids=(0, 0), render=False)
    env = make_env("libero_spatial", task_ids=(0,), render=False, settle_steps=0)
    assert env.max_steps == 220 and env.num_tasks == 10 and env.num_init_states == 50
    assert (
        env.prompts[0] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    assert env.goal.names == ("on(akita_black_bowl_1, plate_1)",)
    with pytest.raises(UserError, match=r"simulates tasks \(0,\)"):
        env.reset_to(3, 0)


def test_tasks_that_share_a_scene_run_in_one_env():
    """libero_goal's tasks are one scene (one model for all: task 6's own bowl plates are left out so it
    matches); libero_spatial's differ in the fixtures' poses, stacked per task; each task keeps its goal."""
    from mujoco import mjx

    from pirl.envs import libero_scene as ls
    from pirl.envs import make_env
    from pirl.envs.libero_mjx_env import task_groups
    from pirl.errors import UserError

    goal = make_env("libero_goal", task_ids=(0, 3, 5, 6), render=False, settle_steps=0)
    assert not any(goal.task_models.varying)
    assert goal.tasks[3].model.ngeom == goal.tasks[0].model.ngeom < ls.load_task("libero_goal", 6).model.ngeom
    assert [g.names for g in goal.goals] == [
        ("open(wooden_cabinet_1_middle_region)",),
        ("in(akita_black_bowl_1, wooden_cabinet_1_top_region)",),
        ("on(plate_1, main_table_stove_front_region)",),
        ("on(cream_cheese_1, akita_black_bowl_1)",),
    ]
    assert int(goal.task_slot(5)) == 2
    with pytest.raises(UserError, match=r"simulates tasks \(0, 3, 5, 6\)"):
        goal.reset_to(1, 0)
    spatial = make_env("libero_spatial", task_ids=(0, 4), render=False, settle_steps=0)
    assert any(spatial.task_models.varying)
    four = mjx.put_model(ls.load_task("libero_spatial", 4).model)
    np.testing.assert_allclose(np.asarray(spatial.task_models.model(1).body_pos), np.asarray(four.body_pos))
    assert spatial.init_qpos.shape == (2, 50, spatial.task.model.nq)
    with pytest.raises(UserError, match="libero_10 tasks 2 and 3 have differently built scenes"):
        make_env("libero_10", task_ids=(2, 3), render=False)
    # the sets of tasks that can share an env (MJX evaluation runs one env per set)
    assert task_groups("libero_goal", (6, 0, 3)) == [(6, 0, 3)]
    assert task_groups("libero_10", (2, 3)) == [(2,), (3,)]
    assert task_groups("libero_spatial", (4, 0)) == [(4, 0)]


def test_goal_plans_order_and_articulation_facts(reports):
    """The goal-sequencing expert's plans from the goal specs and the MJX scenes (host only): libero_10
    task 2 turns the stove's knob (a hinge about z, grasped on its axis, fingers across its narrow
    side) before placing the moka pot; task 3 puts the bowl in the bottom drawer (open at init 0, so
    no opener) and pushes it shut last; with that drawer closed an opener comes first. One step of
    the plan mid-move pulls / pushes along the drawer's axis and twists the knob about +z."""
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig
    from pirl.envs.libero_artic_expert import ARTIC_PHASES, ArticPlanState, ArticView, articulated_action
    from pirl.envs.libero_check import goal_subplans

    stove = ls.load_task("libero_10", 2)
    plans = goal_subplans(
        stove.model, reports[("libero_10", 2)]["spec"], stove.init_states[0][1 : 1 + stove.model.nq]
    )
    assert [p.kind for p in plans] == ["artic", "pick_place"] and plans[1].obj == "moka_pot_1"
    knob = plans[0].geo
    assert (knob.kind, knob.body, knob.increase) == ("hinge", "flat_stove_1_button", True)
    assert 0.5 < knob.q_goal < 2.1  # past LIBERO's turn_on threshold, inside the joint's range
    np.testing.assert_allclose(knob.outward, [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(knob.handle[:2], 0.0, atol=1e-6)  # on the axis
    assert abs(knob.narrow[1]) < 0.1  # the knob's ridge is narrow along its body x

    cab = ls.load_task("libero_10", 3)
    spec = reports[("libero_10", 3)]["spec"]
    qpos = cab.init_states[0][1 : 1 + cab.model.nq].copy()
    plans = goal_subplans(cab.model, spec, qpos)
    assert [p.kind for p in plans] == ["pick_place", "artic"] and plans[0].obj == "akita_black_bowl_1"
    push = plans[1].geo
    assert (push.kind, push.body, push.pull, push.increase) == (
        "slide",
        "white_cabinet_1_cabinet_bottom",
        False,
        True,
    )
    assert 0.0 < push.q_goal <= 0.01  # WhiteCabinet.is_close: q > 0, range up to 0.01
    np.testing.assert_allclose(push.outward, [0, -1, 0], atol=1e-6)  # pulled out against its joint axis
    qpos[push.qpos_adr] = 0.0
    plans = goal_subplans(cab.model, spec, qpos)
    assert [p.kind for p in plans] == ["artic", "pick_place", "artic"] and plans[0].geo.pull
    assert plans[0].geo.q_goal < -0.14  # WhiteCabinet's open: q < -0.14

    cfg = LiberoPlanConfig()
    down = np.diag([1.0, -1.0, -1.0])
    for geo, pull in ((plans[0].geo, True), (push, False)):
        view = ArticView(np.zeros(3), down, np.array([0.0, 1.0, 0.0]), -0.05, np.zeros(3), np.eye(3))
        state = ArticPlanState(phase=ARTIC_PHASES.index("move"), ref_mat=down, start_mat=down)
        action, nxt = articulated_action(cfg, geo, view, state)
        along = action[:3] @ geo.outward
        assert (along > 0.2) == pull and (along < -0.2) == (not pull) and action[6] == 1.0, action
        assert nxt.phase == state.phase  # the joint is not past its goal yet
    view = ArticView(knob.handle, down, np.array([0.0, 1.0, 0.0]), 0.0, np.zeros(3), np.eye(3))
    state = ArticPlanState(phase=ARTIC_PHASES.index("move"), ref_mat=down, start_mat=down)
    action, nxt = articulated_action(cfg, knob, view, state)
    assert action[5] > 0.5 and abs(action[3]) < 0.05 and abs(action[4]) < 0.05 and action[6] == 1.0, action
    assert nxt.twist_from is not None and nxt.twist_from[0] == 0.0


PLATE_PUSH = {"terms": [{"term": ["on", "plate_1", "main_table_stove_front_region"], "kind": "site_on",
                         "site": "main_table_stove_front_region", "size": [0.04, 0.04, 0.007],
                         "obj_body": "plate_1_main", "contact": None}]}  # fmt: skip
"""libero_goal 5's goal spec (as `ensure_goal_spec` writes it): push the plate in front of the stove."""
MUG_MICROWAVE = {"terms": [
    {"term": ["in", "white_yellow_mug_1", "microwave_1_heating_region"], "kind": "site_in",
     "site": "microwave_1_heating_region", "size": [0.12, 0.0835, 0.08], "obj_body": "white_yellow_mug_1_main"},
    {"term": ["close", "microwave_1"], "kind": "joints", "mode": "all", "joints": ["microwave_1_microjoint"],
     "intervals": [[-0.005, math.inf]]}]}  # fmt: skip
"""libero_10 9's: the mug in the microwave, its door closed (Microwave.is_close: q > -0.005)."""


def test_push_plan_facts_path_and_step():
    """libero_goal 5 (host only): the plate (1.9 cm high, 14 cm wide, a rim over its floor) is pushed,
    not picked; the bowl and the cream cheese are not pushable. From init 0 the straight line to the
    region runs over the cream cheese; the grid path goes round it (its centre kept more than the
    plate's reach away) and ends inside the region. One push step drives the grip along the path
    with the fingers closed and pressed down; a grip out past the rim sends the plan back above. Above,
    a grip far off moves across at its height first, and comes down once over the middle. At the
    arm's reach (`PushConfig.max_reach` from LIBERO's robot base) a push outwards holds the grip there."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig, PickPlaceView
    from pirl.envs.libero_artic_expert import (
        PUSH_PHASES,
        PushConfig,
        PushPlanState,
        push_action,
        push_path,
        pushable,
    )
    from pirl.envs.libero_check import goal_subplans

    task = ls.load_task("libero_goal", 5)
    m = task.model
    plans = goal_subplans(m, PLATE_PUSH)
    assert [(p.kind, p.obj) for p in plans] == [("push", "plate_1")]
    geo = plans[0].geo
    assert 0.065 < geo.radius < 0.072 and geo.reach >= geo.radius and 0.003 < geo.centre[2] < 0.01, geo
    assert geo.tol == pytest.approx(0.01)
    assert not pushable(m, m.body("akita_black_bowl_1_main").id) and not pushable(
        m, m.body("cream_cheese_1_main").id
    )

    d = mujoco.MjData(m)
    d.qpos[:] = task.init_states[0][1 : 1 + m.nq]
    mujoco.mj_kinematics(m, d)
    plate, cheese = m.body("plate_1_main").id, m.body("cream_cheese_1_main").id
    site = m.site("main_table_stove_front_region").id
    # LIBERO's initial states hold the objects above the table: the plate as if it had dropped as far
    # as the cream cheese (the path's obstacles are the geoms at the plate's height)
    low = (
        min(ls.geom_points(m, g)[:, 2].min() for g in np.where(m.geom_bodyid == cheese)[0])
        + d.xpos[cheese][2]
    )
    plate_pos = d.xpos[plate] - [0.0, 0.0, d.xpos[plate][2] + geo.height[0] - low]
    path = push_path(geo, lambda n: (d.xpos[m.body(n).id], d.xmat[m.body(n).id]), plate_pos,
                     d.xmat[plate].reshape(3, 3), d.site_xpos[site], m.site_size[site])  # fmt: skip
    np.testing.assert_allclose(path[0], d.xpos[plate][:2], atol=0.011)
    assert np.all(np.abs(path[-1] - d.site_xpos[site][:2]) <= 0.04 - 0.01 + 1e-9), path[-1]
    straight = np.linspace(d.xpos[plate][:2], d.site_xpos[site][:2], 50)
    assert np.linalg.norm(straight - d.xpos[cheese][:2], axis=1).min() < 0.04
    assert np.linalg.norm(path - d.xpos[cheese][:2], axis=1).min() > geo.reach + 0.005

    cfg, push = LiberoPlanConfig(), PushConfig()
    down = np.diag([1.0, -1.0, -1.0])
    centre = d.xpos[plate] + geo.centre
    view = PickPlaceView(
        centre + np.array([0.0, 0.0, 0.01]),
        down,
        np.array([0.0, 1.0, 0.0]),
        d.xpos[plate],
        d.site_xpos[site],
        np.eye(3),
    )
    state = PushPlanState(
        phase=PUSH_PHASES.index("push"), ref_mat=down, start_mat=down, start_pos=np.zeros(3), path=path
    )
    action, nxt = push_action(cfg, push, geo, view, state)
    ahead = path[min(4, len(path) - 1)] - path[0]
    assert action[:2] @ ahead / np.linalg.norm(ahead) > 0.3 and action[2] < 0 and action[6] == 1.0, action
    assert nxt.phase == state.phase
    slipped = dataclasses.replace(view, grip_pos=centre + np.array([0.1, 0.0, 0.01]))
    _, nxt = push_action(cfg, push, geo, slipped, state)
    assert PUSH_PHASES[nxt.phase] == "above"
    # arriving from high up and 20 cm away the grip goes across first; over the middle, down
    above = dataclasses.replace(state, phase=PUSH_PHASES.index("above"))
    far = dataclasses.replace(view, grip_pos=centre + np.array([-0.2, 0.0, 0.25]))
    action, _ = push_action(cfg, push, geo, far, above)
    assert action[0] > 0.9 and abs(action[2]) < 0.05, action
    over = dataclasses.replace(view, grip_pos=centre + np.array([-0.01, 0.0, 0.25]))
    action, _ = push_action(cfg, push, geo, over, above)
    assert action[2] < -0.9, action
    # the robot's base is LIBERO's; a grip at the reach pushing further out is held there (the path
    # ahead of it, outwards): its goal is pulled in to `max_reach` from the base
    np.testing.assert_allclose(geo.base, d.xpos[m.body("robot0_base").id][:2], atol=1e-9)
    outward = np.array([1.0, 0.0, 0.0])
    at_reach = geo.base + push.max_reach * outward[:2]
    c = np.append(at_reach, centre[2]) - 0.03 * outward
    reach_view = dataclasses.replace(
        view, grip_pos=c + 0.03 * outward + [0.0, 0.0, 0.01], obj_pos=c - geo.centre
    )
    ahead_path = np.stack([c[:2] + t * outward[:2] for t in np.linspace(0.0, 0.2, 21)])
    action, _ = push_action(cfg, push, geo, reach_view, dataclasses.replace(state, path=ahead_path))
    assert abs(action[0]) < 0.05 and action[2] < 0, action
    far_push = dataclasses.replace(push, max_reach=np.inf)
    action, _ = push_action(cfg, far_push, geo, reach_view, dataclasses.replace(state, path=ahead_path))
    assert action[0] > 0.3, action


def test_door_plan_facts_and_step():
    """libero_10 9 (host only): the mug's pick-and-place, its nudge, home, then the microwave's door (a vertical hinge
    reaching 26 cm from its axis) pushed shut: the push point 0.6 of the way out along the door,
    outside its outer face (which turns towards closed as q rises to the goal, inside LIBERO's
    -0.005 < q <= 0), with the hand's box above the door's top. One step mid-push moves the grip
    along the door's arc (tangent to the hinge), fingers closed."""
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig
    from pirl.envs.libero_artic_expert import (
        ARTIC_PHASES,
        PALM_ABOVE_SITE,
        ArticPlanState,
        ArticView,
        articulated_action,
    )
    from pirl.envs.libero_check import goal_subplans, plan_label

    task = ls.load_task("libero_10", 9)
    m = task.model
    plans = goal_subplans(m, MUG_MICROWAVE, task.init_states[0][1 : 1 + m.nq])
    assert [plan_label(p) for p in plans] == [
        "pick_place:white_yellow_mug_1",
        "nudge:white_yellow_mug_1",
        "home",  # after the side entry (its turned grip), before the door
        "push:microwave_1_microdoorroot",
    ]
    door = plans[3].geo
    assert (door.kind, door.increase, door.pull) == ("door", True, False)
    assert -0.005 < door.q_goal <= 0.0
    np.testing.assert_allclose(door.outward, [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(
        door.reach, [1, 0, 0], atol=1e-6
    )  # the panel's long side, not tilted by the handle
    np.testing.assert_allclose(door.narrow, [0, 1, 0], atol=1e-6)  # a rising q turns the door's far end to +y
    assert 0.14 < door.handle[0] < 0.17 and -0.045 < door.handle[1] < -0.03, (
        door.handle
    )  # outside the face at -0.025
    top = max(ls.geom_points(m, g)[:, 2].max() for g in np.where(m.geom_bodyid == m.body(door.body).id)[0])
    assert door.handle[2] < top < door.handle[2] + PALM_ABOVE_SITE

    q = -1.0
    rot = np.array([[np.cos(q), -np.sin(q), 0.0], [np.sin(q), np.cos(q), 0.0], [0.0, 0.0, 1.0]])
    down = np.diag([1.0, -1.0, -1.0])
    grip = rot @ door.handle
    view = ArticView(grip, down, np.array([0.0, 1.0, 0.0]), q, np.zeros(3), rot)
    state = ArticPlanState(
        phase=ARTIC_PHASES.index("move"), ref_mat=down, start_mat=down, start_pos=np.zeros(3)
    )
    action, nxt = articulated_action(LiberoPlanConfig(), door, view, state)
    tangent = np.cross([0.0, 0.0, 1.0], grip)
    tangent[2] = 0.0
    tangent /= np.linalg.norm(tangent)
    radial = np.array([grip[0], grip[1], 0.0]) / np.linalg.norm(grip[:2])
    assert action[:3] @ tangent > 0.3 and abs(action[:3] @ radial) < 0.5 * (action[:3] @ tangent), action
    assert action[6] == 1.0 and nxt.phase == state.phase
    _, nxt = articulated_action(LiberoPlanConfig(), door, dataclasses.replace(view, q=0.0), state)
    assert ARTIC_PHASES[nxt.phase] == "release"  # past the goal: done pushing


# ----------------------------------------------------------------------------- nightly


PLACEMENT_MISSES = {("libero_goal", 9), ("libero_10", 5), ("libero_10", 9)}
"""Tasks where `place_for_goal`'s drop does not reach LIBERO's goal (wine bottle onto the rack, book
into the caddy, mug into the microwave): their terms are still compared with LIBERO's."""


BOWL_TOP_DRAWER = {"terms": [{"term": ["in", "akita_black_bowl_1", "wooden_cabinet_1_top_region"],
                               "kind": "site_in", "site": "wooden_cabinet_1_top_region",
                               "size": [0.02993, 0.07561, 0.10224], "obj_body": "akita_black_bowl_1_main",
                               "open_intervals": [[-math.inf, -0.14]],
                               "open_joints": ["wooden_cabinet_1_top_level"]}]}  # fmt: skip
"""libero_goal 3's goal spec: the bowl in the top drawer (closed at the initial states)."""


def test_sequence_chooses_the_grasp_after_the_drawer_opens():
    """libero_goal 3 (host only): the bowl is set aside, the top drawer opened, then the bowl picked
    into it. Where the bowl stands at init 0 the first wall grasp clears everything with the drawer
    shut, not with it open (the open drawer overhangs the bowl's far wall); a pick-and-place chooses
    its grasp when it starts, so from there it takes another, and the same one from the same qpos on a
    view of MuJoCo data. A step's trace record (`plan_trace_line`) reads the same data."""
    import json

    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig
    from pirl.envs.libero_check import (
        GRASP_CHOICES,
        SequenceState,
        goal_subplans,
        grasp_choice,
        plan_trace_line,
        sequence_action,
    )

    task = ls.load_task("libero_goal", 3)
    m = task.model
    qpos = task.init_states[0][1 : 1 + m.nq].copy()
    plans = goal_subplans(m, BOWL_TOP_DRAWER, qpos)
    assert [p.kind for p in plans] == ["pick_place", "home", "artic", "pick_place"] and plans[2].geo.pull
    pp, cfg = plans[3], LiberoPlanConfig()
    assert grasp_choice(m, qpos, pp.obj, pp.target, pp.geo, cfg) == GRASP_CHOICES[0]
    qpos[plans[2].geo.qpos_adr] = plans[2].geo.q_goal
    chosen = grasp_choice(m, qpos, pp.obj, pp.target, pp.geo, cfg)
    assert chosen != GRASP_CHOICES[0]
    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
    start = d.site_xmat[site].reshape(3, 3).copy()
    action, state, finished = sequence_action(cfg, plans, m, d, SequenceState(3, None, start))
    assert (state.sub.grasp_yaw, state.sub.grasp_side) == chosen and not finished
    assert state.sub.phase == 0 and np.all(np.abs(action[:6]) <= 1.0) and action[6] == -1.0
    # the step as `--trace-dir` writes it: the sub-plan and its phase, poses read from the data
    line = json.loads(json.dumps(plan_trace_line(m, d, plans, state, action, 7)))
    assert (line["t"], line["subplan"], line["phase"]) == (7, 3, "approach")
    assert line["plan"] == "pick_place:akita_black_bowl_1"
    bowl = m.body("akita_black_bowl_1_main").id
    np.testing.assert_allclose(line["objects"]["akita_black_bowl_1"], d.xpos[bowl], atol=1e-4)
    np.testing.assert_allclose(line["grip"], d.site_xpos[site], atol=1e-4)
    assert line["joints"] == {plans[2].geo.body: pytest.approx(plans[2].geo.q_goal, abs=1e-4)}
    assert line["action"] == pytest.approx(action.tolist(), abs=1e-3)
    assert plan_trace_line(m, d, plans, SequenceState(1, None, start), action, 0)["phase"] == "home"
    assert plan_trace_line(m, d, plans, SequenceState(0, None, start), action, 0)["phase"] == "wait"


def test_approach_from_over_the_basket_lifts_the_gripper_over_its_rim():
    """libero_10 7 (host only): after the soup is in the basket, the approach to the cream cheese starts
    over the basket and comes down beside it. Measured on the grip site's straight path it went
    straight there, and the hand's box (0.2 m along the closing axis, its bottom 3 cm over the site)
    or the fingers (up to 6.6 cm out, tips 1 cm under it) came down on the basket's wall and threw the
    soup out (MJX, 12 of 50 inits): the approach now moves over the basket's top with every gripper
    part clear of it (`gripper_parts`)."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig, transit_height
    from pirl.envs.libero_check import _body, gripper_parts, standing_footprints

    task = ls.load_task("libero_10", 7)
    m = task.model
    d = mujoco.MjData(m)
    d.qpos[:] = task.init_states[5][1 : 1 + m.nq]
    mujoco.mj_kinematics(m, d)
    parts = gripper_parts(m, d)
    reach, bottom = max(parts)  # the hand's box
    assert 0.10 < reach < 0.115 and 0.025 < bottom < 0.035
    tips = min(b for _, b in parts)
    assert -0.015 < tips < 0.0  # the fingertips, under the site
    basket = d.xpos[_body(m, "basket_1")]
    start = np.array([basket[0], basket[1], 0.77])  # where the soup's retreat ends (trace, init 5)
    hover = d.xpos[_body(m, "cream_cheese_1")] + [0.0, 0.0, 0.08]
    feet = standing_footprints(m, d, "cream_cheese_1")
    clearance = LiberoPlanConfig().transit_clearance
    top = max(top for lo, hi, top in feet if lo[1] <= basket[1] <= hi[1] and lo[0] <= basket[0] <= hi[0])
    # the grip site alone passes the rim at the clearance; the fingertips under it then touch it
    assert transit_height(start, hover, feet, clearance) == pytest.approx(top + clearance)
    assert transit_height(start, hover, feet, clearance, parts) == pytest.approx(top + clearance - tips)


def test_grip_turns_the_way_the_wrist_can_go():
    """`wrist_turn` (host only, libero_10 0's scene): pointing down, the Panda's last joint turns the
    grip about the vertical the other way (+0.3 rad on the joint, -0.3 of yaw); a turn that would
    take the joint past its range becomes the half turn the other way (the same grasp), one that
    stays inside is kept. libero_10 0 inits 27, 42, 49: the wrist at its limit and the yaw action
    saturated, the approach stalled for 150 steps (MJX)."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import rot_z, rotation_error
    from pirl.envs.libero_check import WRIST_JOINT, WRIST_MARGIN, _grip_site, wrist_turn

    task = ls.load_task("libero_10", 0)
    m = task.model
    d = mujoco.MjData(m)
    d.qpos[:] = task.init_states[0][1 : 1 + m.nq]
    j = m.joint(WRIST_JOINT)
    lo = float(j.range[0])
    site = _grip_site(m)
    mujoco.mj_kinematics(m, d)
    before = d.site_xmat[site].reshape(3, 3).copy()
    d.qpos[j.qposadr[0]] += 0.3
    mujoco.mj_kinematics(m, d)
    assert rotation_error(d.site_xmat[site].reshape(3, 3), before)[2] == pytest.approx(-0.3, abs=0.02)
    d.qpos[j.qposadr[0]] = lo + WRIST_MARGIN + 0.2
    mujoco.mj_kinematics(m, d)
    grip = d.site_xmat[site].reshape(3, 3).copy()
    far = rot_z(0.5) @ grip  # the wrist would end 0.3 rad past its margin
    turned = wrist_turn(m, d, far, grip)
    assert rotation_error(turned, grip)[2] == pytest.approx(0.5 - np.pi, abs=1e-6)
    np.testing.assert_allclose(turned, rot_z(-np.pi) @ far, atol=1e-12)  # the closing axis's line kept
    near = rot_z(-0.5) @ grip
    np.testing.assert_allclose(wrist_turn(m, d, near, grip), near)
    bare = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
    with pytest.raises(ValueError, match="no joint 'robot0_joint7'"):
        wrist_turn(bare, mujoco.MjData(bare), near, grip)


def test_trace_dir_needs_the_plan_check(capsys):
    """`--trace-dir` traces goal-sequence plans only: without `--checks plan` the CLI refuses it
    before any simulator starts, saying what to add."""
    from pirl.envs.libero_check import main

    with pytest.raises(SystemExit):
        main(["--trace-dir", "traces", "--checks", "state"])
    assert "add --checks plan" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one side or the other, never neither
        main(["--checks", "plan", "--real-only", "--mjx-only"])
    assert "give one of them" in capsys.readouterr().err


BOWL_BOTTOM_DRAWER = {"terms": [
    {"term": ["close", "white_cabinet_1_bottom_region"], "kind": "joints", "mode": "all",
     "joints": ["white_cabinet_1_bottom_level"], "intervals": [[0.0, math.inf]]},
    {"term": ["in", "akita_black_bowl_1", "white_cabinet_1_bottom_region"], "kind": "site_in",
     "site": "white_cabinet_1_bottom_region", "size": [0.02993, 0.07561, 0.10224],
     "obj_body": "akita_black_bowl_1_main", "open_intervals": [[-math.inf, -0.14]],
     "open_joints": ["white_cabinet_1_bottom_level"]}]}  # fmt: skip
"""libero_10 3's goal spec: the bowl in the bottom drawer (open at init 0), the drawer closed."""


def test_drawer_push_leans_clear_of_the_drawer_above():
    """libero_10 3 (host only): the drawer is pushed shut with the closed fingers pointing down, the
    closing axis along its front and the approach axis leaning PUSH_TILT into the push. With the
    fingers' front on the shut drawer's handle, the hand so leaning stays more than 5 mm off the
    handle of the drawer above; upright (no tilt) it runs into it."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig
    from pirl.envs.libero_artic_expert import (
        ARTIC_PHASES,
        PUSH_TILT,
        ArticPlanState,
        articulated_action,
        articulation_view,
    )
    from pirl.envs.libero_check import goal_subplans
    from pirl.envs.libero_scene import geom_points

    task = ls.load_task("libero_10", 3)
    m = task.model
    d = mujoco.MjData(m)
    d.qpos[:] = task.init_states[0][1 : 1 + m.nq]
    mujoco.mj_kinematics(m, d)
    plans = goal_subplans(m, BOWL_BOTTOM_DRAWER, d.qpos)
    geo = plans[-1].geo
    assert [p.kind for p in plans] == ["pick_place", "artic"] and not geo.pull
    view = articulation_view(m, d, geo)
    _, state = articulated_action(LiberoPlanConfig(), geo, view, ArticPlanState())
    assert ARTIC_PHASES[state.phase] == "orient"
    push = -(view.body_mat @ geo.outward)
    ref = state.ref_mat
    np.testing.assert_allclose(
        ref[:, 2], np.sin(PUSH_TILT) * push - np.cos(PUSH_TILT) * np.eye(3)[2], atol=1e-9
    )
    closing = ref @ view.grip_mat.T @ view.finger_axis  # the closing axis along the drawer's front
    assert abs(closing @ push) < 0.02 and abs(closing[2]) < 0.02, closing

    # the drawer shut; the fingers' front on its handle's front, hand at `mat`: its distance to the
    # handle of the drawer above
    d.qpos[geo.qpos_adr] = 0.0
    mujoco.mj_kinematics(m, d)
    body = lambda g: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or ""  # noqa: E731
    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
    sp, sr = d.site_xpos[site].copy(), d.site_xmat[site].reshape(3, 3).copy()
    grip = [g for g in range(m.ngeom) if body(g).startswith("gripper0_")]
    fingers = [g for g in grip if "finger" in body(g)]
    hand = [g for g in grip if g not in fingers]
    above = [g for g in range(m.ngeom) if body(g) == "white_cabinet_1_cabinet_middle"]

    def world(g: int) -> np.ndarray:
        b = m.geom_bodyid[g]
        return d.xpos[b] + geom_points(m, g) @ d.xmat[b].reshape(3, 3).T

    drawer = np.where(m.geom_bodyid == m.body(geo.body).id)[0]
    handle = min(float((world(g) @ push).min()) for g in drawer)  # its front: the drawer's outermost face
    handle_pt = view.body_pos + d.xmat[m.body(geo.body).id].reshape(3, 3) @ geo.handle
    rel = {
        g: ((world(g) - sp) @ sr, sr.T @ d.geom_xmat[g].reshape(3, 3), sr.T @ (d.geom_xpos[g] - sp))
        for g in grip
    }

    def hand_clearance(mat: np.ndarray) -> float:
        front = max(float((rel[g][0] @ mat.T @ push).max()) for g in fingers)
        at = handle_pt + push * (handle - handle_pt @ push - front)
        for g in grip:
            d.geom_xpos[g] = at + mat @ rel[g][2]
            d.geom_xmat[g] = (mat @ rel[g][1]).reshape(9)
        return min(mujoco.mj_geomDistance(m, d, g, h, 0.05, None) for g in hand for h in above)

    down = -np.eye(3)[2]
    upright = np.stack([ref[:, 0], np.cross(down, ref[:, 0]), down], 1)  # the same, not tilted
    assert hand_clearance(ref) > 0.005
    assert hand_clearance(upright) < 0.0


MIDDLE_DRAWER_OPEN = {"terms": [{"term": ["open", "wooden_cabinet_1_middle_region"], "kind": "joints", "mode": "any",
                                 "joints": ["wooden_cabinet_1_middle_level"], "intervals": [[-math.inf, -0.14]]}]}  # fmt: skip
"""libero_goal 0's goal spec (as `ensure_goal_spec` writes it): open the middle drawer."""


def test_drawer_pull_pitch_lifts_the_hand_off_the_plate():
    """libero_goal 0 (host only, settled init 0): the grip facing the middle drawer's handle is tipped
    `artic_pitch` below the horizontal. Placed where the plan takes it (in front of the handle, half
    way in, at the handle), the hand and fingers so pitched stay off plate_1 in front of the cabinet
    (measured 4.3 / 14.9 / 9.1 mm) and the hand more than 5 mm off the handle of the drawer above
    (7.2 mm); level (pitch 0) they stand 8.5-8.7 mm into the plate at each point."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig
    from pirl.envs.libero_artic_expert import ArticPlanState, articulated_action, articulation_view
    from pirl.envs.libero_check import goal_subplans, gripper_and_others, pose_geoms

    task = ls.load_task("libero_goal", 0)
    m = task.model
    d = settled_scene_data(task, 0)
    [plan] = goal_subplans(m, MIDDLE_DRAWER_OPEN, d.qpos)
    geo = plan.geo
    assert (geo.kind, geo.pull, geo.body) == ("slide", True, "wooden_cabinet_1_cabinet_middle")
    view = articulation_view(m, d, geo)
    handle, out = view.body_pos + view.body_mat @ geo.handle, view.body_mat @ geo.outward
    grip, rel, others = gripper_and_others(m, d, m.body(geo.body).id)
    body = lambda g: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g])  # noqa: E731
    plate = [h for h in others if body(h) == "plate_1_main"]
    above = [h for h in range(m.ngeom) if body(h) == "wooden_cabinet_1_cabinet_top"]
    hand = [g for g in grip if "finger" not in body(g)]
    assert plate and above and hand

    def clearances(cfg: LiberoPlanConfig) -> tuple[list[float], float]:
        _, state = articulated_action(cfg, geo, view, ArticPlanState())
        dist = lambda gs, hs: min(mujoco.mj_geomDistance(m, d, g, h, 0.05, None) for g in gs for h in hs)  # noqa: E731
        to_plate = []
        for reach in (0.12, 0.06, 0.008):  # "align", half way in, "insert"
            pose_geoms(d, grip, rel, handle + out * reach, state.ref_mat)
            to_plate.append(dist(grip, plate))
        return to_plate, dist(hand, above)

    cfg = LiberoPlanConfig()
    assert cfg.artic_pitch > 0.0
    to_plate, to_above = clearances(cfg)
    assert min(to_plate) > 0.003 and to_above > 0.005, (to_plate, to_above)
    level, _ = clearances(dataclasses.replace(cfg, artic_pitch=0.0))
    assert max(level) < -0.005, level
    with pytest.raises(ValueError, match="artic_pitch"):
        LiberoPlanConfig(artic_pitch=np.pi / 2)


@pytest.mark.nightly
@pytest.mark.parametrize("suite", ["libero_spatial", "libero_object", "libero_goal", "libero_10"])
def test_predicates_agree_with_libero_all_tasks(suite):
    """Every task, initial states 0 and 1: our terms equal LIBERO's at the initial and the placed
    states; the placed states succeed in LIBERO (but for PLACEMENT_MISSES), and LIBERO's success state
    is success in the rebuilt scene too (MuJoCo C contacts of the fitted boxes, not re-settled)."""
    import mujoco

    from pirl.envs import libero_scene as ls

    reports = lp.libero_goal_reports_isolated([(suite, t) for t in range(10)], [0, 1])
    for task_id, report in enumerate(reports):
        placed = _check_report(report)
        if (suite, task_id) not in PLACEMENT_MISSES:
            assert placed == [True, True], (suite, task_id)
        task = ls.load_task(suite, task_id)
        program = lp.compile_goal(report["spec"], task.model)
        for rec in report["records"]:
            d = mujoco.MjData(task.model)
            d.qpos[:], d.qvel[:] = rec["qpos"], rec["qvel"]
            mujoco.mj_forward(task.model, d)
            ours = [bool(x) for x in lp.term_values(program, lp.view_mujoco(task.model, d))]
            assert ours == rec["libero"], (suite, task_id, rec["init_id"], rec["placed"])


@pytest.mark.nightly
def test_env_reset_step_and_success_reward(spatial):
    """The compiled env: reset_to settles (10 steps) to LIBERO's state within 1 mm and is not success;
    with the bowl put on the plate in the rebuilt scene (MuJoCo C, settled 1 s) in env 0 (init 0), a few
    steps reach success, pay 1 once and end that episode only; vmapped over 2 envs. (From init 1 the
    same placement is stable in MuJoCo C but MJX throws bowl and plate off within 3 steps:
    docs/libero_mjx.md.)"""
    import jax
    import jax.numpy as jnp
    import mujoco

    from pirl.envs import make_env
    from pirl.envs.libero_check import real_rollouts_isolated

    env = make_env("libero_spatial", task_ids=(0,), render=False)
    reset = jax.jit(jax.vmap(env.reset_to))
    step = jax.jit(jax.vmap(env.step))
    state = reset(jnp.zeros(2, jnp.int32), jnp.arange(2, dtype=jnp.int32))
    real = real_rollouts_isolated("libero_spatial", 0, 0, {}, env.config.settle_steps)
    np.testing.assert_allclose(np.asarray(state.obs["state"][0, :3]), real["settled"][:3], atol=1e-3)
    assert not bool(state.info["success"].any()) and int(state.info["step"].sum()) == 0
    # LIBERO's own success state starts the bowl inside the (taller) fitted plate and bounces it off;
    # a success state of the rebuilt geometry is made in it instead
    task, _, _ = spatial
    m = task.model
    d = mujoco.MjData(m)
    d.qpos[:] = np.asarray(state.data.qpos[0])
    mujoco.mj_forward(m, d)
    lp.place_for_goal(m, d, env.goal)
    lp.settle_held(m, d, 1.0)
    assert bool(lp.success(env.goal, lp.view_mujoco(m, d)))
    data = state.data.replace(
        qpos=state.data.qpos.at[0].set(jnp.asarray(d.qpos, jnp.float32)),
        qvel=state.data.qvel.at[0].set(0.0),
    )
    state = state.replace(data=data)
    noop = jnp.tile(jnp.asarray([0, 0, 0, 0, 0, 0, -1.0], jnp.float32), (2, 1))
    paid = np.zeros(2)
    for _ in range(5):
        state = step(state, noop)
        paid += np.asarray(state.reward)
    np.testing.assert_array_equal(np.asarray(state.info["success"]), [True, False])
    np.testing.assert_array_equal(paid, [1.0, 0.0])
    assert bool(state.done[0]) and not bool(state.done[1])
    assert np.isfinite(np.asarray(state.obs["state"])).all()


@pytest.mark.nightly
def test_tasks_in_one_env_reset_and_pay_as_their_own():
    """Compiled, several tasks in one env: each row of a libero_spatial (0, 3) env resets to its task's
    scene (the fixtures where that task's own env has them, its own initial state); in a libero_goal
    (0, 8) env the same state, the bowl put on the plate, pays only the row of task 8 (on(bowl, plate))
    and ends that episode only."""
    import jax
    import jax.numpy as jnp
    import mujoco

    from pirl.envs import make_env

    tasks, inits = jnp.asarray([0, 3, 3, 0]), jnp.asarray([0, 0, 1, 1])
    both = make_env("libero_spatial", task_ids=(0, 3), render=False, settle_steps=0)
    rows = jax.jit(jax.vmap(both.reset_to))(tasks, inits)
    assert np.asarray(rows.info["task_id"]).tolist() == [0, 3, 3, 0]
    for t in (0, 3):
        own = make_env("libero_spatial", task_ids=(t,), render=False, settle_steps=0)
        ref = jax.jit(jax.vmap(own.reset_to))(jnp.asarray([t, t]), jnp.asarray([0, 1]))
        got = np.asarray(rows.data.xpos)[np.asarray(tasks) == t]
        np.testing.assert_allclose(got, np.asarray(ref.data.xpos), atol=1e-3)
    # the fixtures stand elsewhere in the two tasks (else the check above says nothing): the stove 1.7 cm
    stove = both.task.model.body("flat_stove_1_main").id
    assert np.abs(np.asarray(rows.data.xpos[0, stove] - rows.data.xpos[1, stove])).max() > 0.01

    env = make_env("libero_goal", task_ids=(0, 8), render=False)
    state = jax.jit(jax.vmap(env.reset_to))(jnp.asarray([0, 8]), jnp.asarray([0, 0]))
    m = env.task.model
    d = mujoco.MjData(m)
    d.qpos[:] = np.asarray(state.data.qpos[1])
    mujoco.mj_forward(m, d)
    lp.place_for_goal(m, d, env.goals[1])
    lp.settle_held(m, d, 1.0)
    qpos = jnp.tile(jnp.asarray(d.qpos, jnp.float32), (2, 1))
    state = state.replace(data=state.data.replace(qpos=qpos, qvel=jnp.zeros_like(state.data.qvel)))
    step = jax.jit(jax.vmap(env.step))
    noop = jnp.tile(jnp.asarray([0, 0, 0, 0, 0, 0, -1.0], jnp.float32), (2, 1))
    paid = np.zeros(2)
    for _ in range(5):
        state = step(state, noop)
        paid += np.asarray(state.reward)
    np.testing.assert_array_equal(paid, [0.0, 1.0])
    assert not bool(state.done[0]) and bool(state.done[1])


@pytest.mark.nightly
@pytest.mark.parametrize("task_id", [0, 7])
def test_articulated_plan_succeeds_in_mjx_and_libero(task_id):
    """The articulated expert (one plan code path, each simulator read by it) opens libero_goal's
    middle drawer (task 0) and turns on the stove (task 7) from initial states 0-2, in the MJX scene
    (the goal predicates, as the env rewards) and in the real LIBERO (its own success)."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_goal", task_id, [0, 1, 2], settle=10, steps=300, out=io.StringIO())
    for rec in records:
        assert rec["mjx_success_step"] > 0 and rec["real_success_step"] > 0, rec


@pytest.mark.nightly
def test_bowl_set_aside_then_put_in_the_top_drawer_in_mjx_and_libero():
    """libero_goal 3 (open the top drawer, the bowl in it) from initial states 0-2: the bowl, standing
    where the drawer opens, is set aside on the table, the arm goes back to its first pose, the drawer
    is opened and the bowl put in; success in both simulators (measured over inits 0-9: real 10/10 at
    471-496 steps, MJX 10/10 at 471-538; before, MJX 0/5 and real 2/5: the opened drawer came down
    on the bowl; docs/libero_mjx.md, "The bowl under the top drawer")."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_goal", 3, [0, 1, 2], settle=10, steps=600, out=io.StringIO())
    for rec in records:
        assert rec["plans"][:2] == ["pick_place:akita_black_bowl_1", "home"], rec
        assert rec["mjx_success_step"] > 0 and rec["real_success_step"] > 0, rec


@pytest.mark.nightly
def test_pudding_set_down_clear_of_the_mug_in_mjx_and_libero():
    """libero_10 6 (the mug on the plate, the pudding to the plate's right) from initial states 0-2:
    success in the real LIBERO at all three and in MJX at two or more; the pudding is set down turned /
    shifted where the hand's box clears the mug (`place_choice`; measured over inits 0-4: real 5/5, MJX
    5/5, MJX 2/5 before)."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_10", 6, [0, 1, 2], settle=10, steps=400, out=io.StringIO())
    assert all(rec["real_success_step"] > 0 for rec in records), records
    # MJX's rate is 45/50 over inits 0-49, and which inits miss moves with the machine's float32
    # arithmetic (init 0: a success in session 22, a miss on session 23's machine at the same commit)
    assert sum(rec["mjx_success_step"] > 0 for rec in records) >= 2, records


@pytest.mark.nightly
def test_mug_into_the_microwave_and_door_shut_in_mjx_and_libero():
    """libero_10 9 (the mug into the microwave, then shut it) from initial states 0-2: the mug carried in
    through the open side by its handle (`PickPlaceGeometry.entry`), pushed in (nudge), the arm home,
    the door pushed shut; success in the real LIBERO at all three and in MJX at two or more (measured
    10/10 and 10/10 over inits 0-9; 0/10 and 0/5 with the top-down place)."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_10", 9, [0, 1, 2], settle=10, steps=520, out=io.StringIO())
    for rec in records:
        assert rec["plans"] == [
            "pick_place:white_yellow_mug_1",
            "nudge:white_yellow_mug_1",
            "home",
            "push:microwave_1_microdoorroot",
        ], rec
        assert rec["real_success_step"] > 0, rec
    # MJX 47/50 over inits 0-49; init 2 succeeded in session 22 and misses on session 23's machine at
    # the same commit (its descent stalls on the mug's fitted handle; docs/libero_mjx.md)
    assert sum(rec["mjx_success_step"] > 0 for rec in records) >= 2, records


@pytest.mark.nightly
@pytest.mark.parametrize(("suite", "task_id"), [("libero_10", 5), ("libero_goal", 6)])
def test_objects_put_in_containers_end_where_libero_puts_them(suite, task_id):
    """After the plan, every object within 2 cm of the real LIBERO's (the issue's (c) target) from
    initial state 0, success in both: libero_10 5's book lined up with the caddy's back compartment
    (`place_choice`'s container turns; 172-285 mm before, tipped over across the caddy) and libero_goal
    6's cream cheese in the bowl with LIBERO's own plates for it (`task_wall_growth`; 24.5 mm before,
    resting on the fit's floor). Over inits 0-49 (session 23): 50/50 in both, within 14.5 / 5.6 mm."""
    import io

    from pirl.envs.libero_check import compare_plan

    (rec,) = compare_plan(suite, task_id, [0], settle=10, steps=300, out=io.StringIO())
    assert rec["real_success_step"] > 0 and rec["mjx_success_step"] > 0, rec
    assert rec["max_object_err_mm"] <= 20.0, rec


@pytest.mark.nightly
def test_push_plan_moves_the_plate_in_mjx_and_libero():
    """libero_goal 5 (push the plate to the front of the stove) from initial states 0-2: success in
    both simulators at all three within 300 steps (LIBERO's episode length for libero_goal). Init 0 was
    an MJX miss until the push kept the grip within the arm's reach (`PushConfig.max_reach`: 50/50 in
    both over inits 0-49, first success by step 234 in MJX and 280 in the real LIBERO; docs/libero_mjx.md)."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_goal", 5, [0, 1, 2], settle=10, steps=300, out=io.StringIO())
    assert all(rec["real_success_step"] > 0 for rec in records), records
    assert all(rec["mjx_success_step"] > 0 for rec in records), records


@pytest.mark.nightly
def test_drawer_push_shuts_the_bowl_in_mjx_and_libero():
    """libero_10 3 (the bowl in the open bottom drawer, then shut it) from initial states 0 and 4, the
    drawer pushed shut by the leaning push: success in both simulators. MJX's scene keeps LIBERO's own
    plates for the bowl here (`SceneConfig.task_wall_growth`): with the 10-box fit, 13.6 cm across where
    LIBERO's bowl is 10.8, it wedged between the drawer's front wall and the handles and jammed the push
    (MJX 11/50 over inits 0-49, init 0's drawer stopping at q -0.089; with the plates 49/50, the real
    LIBERO 47/50, session 21). Init 4 failed in MJX from f7ff382 (the approach's transit over the cabinet
    left the grip tilted, and the descent slid onto the bowl's rim) until the approach waited for its turn
    after a transit (session 20)."""
    import io

    from pirl.envs.libero_check import compare_plan

    records = compare_plan("libero_10", 3, [0, 4], settle=10, steps=440, out=io.StringIO())
    for rec in records:
        assert rec["plans"] == ["pick_place:akita_black_bowl_1", "push:white_cabinet_1_cabinet_bottom"], rec
        assert rec["real_success_step"] > 0 and rec["real_q"][0] > 0.0, rec
        assert rec["mjx_success_step"] > 0 and rec["mjx_q"][0] > 0.0, rec

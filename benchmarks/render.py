"""Benchmark of the JAX ray-cast renderer (pirl.envs.render): frames/s per mode, batch and size.

Prints one JSON line per configuration. Scene: a ~40-geom tabletop built from primitives (arm,
table, bowls, plates, cubes, basket, drawer cabinet, stove knob, textured floor), two cameras;
with `--scene meshes` also two textured UV-sphere meshes ("fruit") of `--mesh-triangles` each,
decimated to `--mesh-budget` at build time. `--choice` instead times the three ways of finding
mesh triangles (tile binning, a BVH, brute force) on one mesh: the measurement behind
pirl.envs.render_mesh's design.

    .venv/bin/python benchmarks/render.py [--modes scan,dense] [--batches 1,16]
        [--sizes 128,224] [--shadows both|on|off] [--png /tmp/render_demo.png]
        [--scene primitives|meshes] [--mesh-triangles 5000] [--mesh-budget 2000] [--choice]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

from pirl.envs import render as rd
from pirl.envs import render_mesh as rm


def _arm_xml() -> str:
    """A Franka-like 7-joint arm of capsules/cylinders with a two-finger gripper and wrist camera."""
    return """
    <body name="link0" pos="-0.55 0 0.0">
      <geom type="cylinder" size="0.07 0.05" pos="0 0 0.05" rgba="0.95 0.95 0.95 1"/>
      <body name="link1" pos="0 0 0.1">
        <joint name="j1" axis="0 0 1"/>
        <geom type="capsule" size="0.06 0.1" pos="0 0 0.1" rgba="0.95 0.95 0.95 1"/>
        <body name="link2" pos="0 0 0.25" euler="0 0.5 0">
          <joint name="j2" axis="0 1 0"/>
          <geom type="cylinder" size="0.065 0.07" euler="1.5708 0 0" rgba="0.2 0.2 0.2 1"/>
          <geom type="capsule" size="0.055 0.14" pos="0 0 0.16" rgba="0.95 0.95 0.95 1"/>
          <body name="link3" pos="0 0 0.32" euler="0 1.2 0">
            <joint name="j3" axis="0 1 0"/>
            <geom type="cylinder" size="0.06 0.065" euler="1.5708 0 0" rgba="0.2 0.2 0.2 1"/>
            <geom type="capsule" size="0.05 0.13" pos="0 0 0.15" rgba="0.95 0.95 0.95 1"/>
            <body name="link4" pos="0 0 0.3" euler="0 0.9 0">
              <joint name="j4" axis="0 1 0"/>
              <geom type="cylinder" size="0.055 0.06" euler="1.5708 0 0" rgba="0.2 0.2 0.2 1"/>
              <geom type="capsule" size="0.045 0.06" pos="0 0 0.07" rgba="0.95 0.95 0.95 1"/>
              <body name="hand" pos="0 0 0.15">
                <joint name="j5" axis="0 0 1"/>
                <geom type="box" size="0.03 0.09 0.025" rgba="0.9 0.9 0.9 1"/>
                <camera name="eye_in_hand" pos="0.07 0 0.0" euler="0 3.1416 1.5708" fovy="75"/>
                <body name="finger_left" pos="0 0.03 0.06">
                  <joint name="fl" axis="0 1 0" type="slide" range="0 0.04"/>
                  <geom type="box" size="0.01 0.01 0.03" rgba="0.3 0.3 0.3 1"/>
                </body>
                <body name="finger_right" pos="0 -0.03 0.06">
                  <joint name="fr" axis="0 -1 0" type="slide" range="0 0.04"/>
                  <geom type="box" size="0.01 0.01 0.03" rgba="0.3 0.3 0.3 1"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def uv_sphere(radius: float, triangles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitude-longitude sphere with about `triangles` faces: (vertices, faces, per-vertex UVs)."""
    rings = max(2, round(math.sqrt(triangles / 4)))
    segments = 2 * rings
    lat = np.linspace(0, np.pi, rings + 1)
    lon = np.linspace(0, 2 * np.pi, segments + 1)  # the seam column is duplicated for its UVs
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    vert = radius * np.stack([np.sin(la) * np.cos(lo), np.sin(la) * np.sin(lo), np.cos(la)], -1).reshape(
        -1, 3
    )
    uv = np.stack([lo / (2 * np.pi), la / np.pi], -1).reshape(-1, 2)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1)[1:], np.stack([b, c, d], -1)[:-1]]).reshape(-1, 3)
    return vert, faces, uv


def _mesh_assets(triangles: int) -> tuple[str, str]:
    """(asset XML, body XML) of two textured UV-sphere meshes on the table."""
    vert, faces, uv = uv_sphere(0.045, triangles)

    def flat(a):
        return " ".join(f"{x:.5g}" for x in np.asarray(a).reshape(-1))

    assets = f"""
    <texture name="peel" type="2d" builtin="gradient" rgb1="0.9 0.5 0.1" rgb2="0.4 0.15 0.05"
             width="128" height="128"/>
    <material name="peel" texture="peel" specular="0.2"/>
    <mesh name="fruit" vertex="{flat(vert)}" face="{flat(faces)}" texcoord="{flat(uv)}"/>"""
    bodies = "".join(
        f'<body pos="{x} {y} 0.065"><freejoint/><geom type="mesh" mesh="fruit" material="peel"/></body>'
        for x, y in [(0.0, 0.12), (0.2, -0.3)]
    )
    return assets, bodies


def demo_scene_xml(mesh_triangles: int = 0) -> str:
    """MJCF of the benchmark scene (about 40 primitive geoms; plus two meshes if mesh_triangles)."""
    mesh_assets, mesh_bodies = _mesh_assets(mesh_triangles) if mesh_triangles else ("", "")
    objects = []
    colours = ["0.85 0.2 0.2 1", "0.2 0.7 0.3 1", "0.2 0.35 0.85 1", "0.9 0.8 0.2 1"]
    for i, (x, y) in enumerate([(0.05, -0.2), (0.15, 0.05), (-0.1, 0.22), (0.25, 0.25)]):
        objects.append(
            f'<body pos="{x} {y} 0.045"><freejoint/>'
            f'<geom type="box" size="0.025 0.025 0.025" rgba="{colours[i]}"/></body>'
        )
    for i, (x, y) in enumerate([(-0.05, -0.05), (0.3, -0.15)]):  # bowls: dark ring + inner base
        objects.append(
            f'<body pos="{x} {y} 0.05"><freejoint/>'
            '<geom type="cylinder" size="0.06 0.03" rgba="0.15 0.15 0.15 1"/>'
            f'<geom type="cylinder" size="0.05 0.005" pos="0 0 0.03" rgba="{0.3 + 0.2 * i} 0.3 0.3 1"/>'
            "</body>"
        )
    for x, y in [(0.1, 0.3), (-0.2, -0.25)]:  # plates
        objects.append(
            f'<body pos="{x} {y} 0.025"><geom type="cylinder" size="0.08 0.005" rgba="0.95 0.95 0.9 1"/></body>'
        )
    objects.append(  # ramekin-like ellipsoid and a ball
        '<body pos="0.35 0.05 0.05"><freejoint/><geom type="ellipsoid" size="0.04 0.03 0.03" '
        'rgba="0.8 0.5 0.2 1"/></body>'
        '<body pos="-0.25 0.05 0.06"><freejoint/><geom type="sphere" size="0.04" rgba="0.6 0.2 0.7 1"/></body>'
    )
    basket = ['<body name="basket" pos="0.45 -0.35 0.02">']  # floor + 4 walls
    basket.append('<geom type="box" size="0.1 0.08 0.005" rgba="0.6 0.45 0.25 1"/>')
    for px, py, sx, sy in [
        (0.1, 0, 0.005, 0.08),
        (-0.1, 0, 0.005, 0.08),
        (0, 0.08, 0.1, 0.005),
        (0, -0.08, 0.1, 0.005),
    ]:
        basket.append(f'<geom type="box" pos="{px} {py} 0.04" size="{sx} {sy} 0.04" rgba="0.6 0.45 0.25 1"/>')
    basket.append("</body>")
    cabinet = [  # body, drawer front, handle
        '<body name="cabinet" pos="0.55 0.35 0.12">',
        '<geom type="box" size="0.12 0.15 0.1" rgba="0.55 0.35 0.2 1"/>',
        '<body name="drawer" pos="-0.125 0 0.03"><joint type="slide" axis="1 0 0" range="-0.15 0"/>',
        '<geom type="box" size="0.008 0.13 0.045" rgba="0.65 0.45 0.3 1"/>',
        '<geom type="capsule" size="0.008 0.05" pos="-0.02 0 0" euler="1.5708 0 0" rgba="0.8 0.8 0.8 1"/>',
        "</body></body>",
    ]
    stove = [  # stove: plate + burner + knob
        '<body name="stove" pos="-0.3 0.35 0.02">',
        '<geom type="box" size="0.1 0.1 0.01" rgba="0.2 0.2 0.2 1"/>',
        '<geom type="cylinder" size="0.06 0.003" pos="0 0 0.012" rgba="0.5 0.1 0.1 1"/>',
        '<body name="knob" pos="0.11 0 0.02" euler="0 1.5708 0"><joint axis="0 0 1"/>',
        '<geom type="cylinder" size="0.02 0.01" rgba="0.85 0.85 0.85 1"/></body></body>',
    ]
    table_legs = "".join(
        f'<geom type="box" pos="{x} {y} -0.42" size="0.025 0.025 0.4" rgba="0.45 0.3 0.2 1"/>'
        for x in (-0.65, 0.65)
        for y in (-0.55, 0.55)
    )
    return f"""
<mujoco model="render_bench">
  <default><geom contype="0" conaffinity="0"/></default>  <!-- kinematics only: no collisions -->
  <visual><headlight ambient="0.25 0.25 0.25" diffuse="0.3 0.3 0.3" specular="0.1 0.1 0.1"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.35 0.4 0.45" rgb2="0.25 0.3 0.35"
             width="64" height="64"/>
    <material name="floor" texture="grid" texrepeat="2 2" texuniform="true"/>{mesh_assets}
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 3" dir="-0.3 0.2 -1" diffuse="0.6 0.6 0.6"
           castshadow="true"/>
    <geom name="floor" type="plane" size="0 0 0.05" pos="0 0 -0.82" material="floor"/>
    <geom name="table" type="box" size="0.7 0.6 0.02" pos="0 0 0" rgba="0.75 0.62 0.45 1"/>
    {table_legs}
    <camera name="agentview" pos="1.1 0 0.75" xyaxes="0 1 0 -0.55 0 0.83" fovy="55"/>
    {_arm_xml()}
    {"".join(objects)}
    {"".join(basket)}
    {"".join(cabinet)}
    {"".join(stove)}
    {mesh_bodies}
  </worldbody>
</mujoco>"""


def _bvh_build(tri: np.ndarray, leaf: int) -> tuple[np.ndarray, ...]:
    """Median-split BVH: (node lo, node hi, split axis, children, (first, count), triangle order)."""
    centre = tri.mean(1)
    order: list[int] = []
    nodes: list = []

    def build(ids):
        me = len(nodes)
        nodes.append(None)
        pts = tri[ids].reshape(-1, 3)
        lo, hi = pts.min(0), pts.max(0)
        if len(ids) <= leaf:
            nodes[me] = (lo, hi, 0, (-1, -1), (len(order), len(ids)))
            order.extend(ids)
            return me
        axis = int(np.argmax(hi - lo))
        ids = ids[np.argsort(centre[ids, axis])]
        left = build(ids[: len(ids) // 2])
        right = build(ids[len(ids) // 2 :])
        nodes[me] = (lo, hi, axis, (left, right), (0, 0))
        return me

    build(np.arange(len(tri)))
    cols = list(zip(*nodes, strict=True))
    return (*(np.asarray(c) for c in cols), np.asarray(order))


def _bvh_trace(bvh, tri, cam_pos, dirs, leaf: int, stack: int = 32):
    """Nearest hit per ray by stack traversal in a batched lax.while_loop (t, steps)."""
    lo, hi, axis, child, span, order = (jnp.asarray(x) for x in bvh)
    tri = jnp.concatenate([jnp.asarray(tri)[order], jnp.zeros((leaf, 3, 3))])
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]

    def one(d):
        inv = 1.0 / jnp.where(jnp.abs(d) < 1e-12, 1e-12, d)

        def body(state):
            st, sp, t_best, steps = state
            sp = sp - 1
            n = st[sp]
            t1, t2 = (lo[n] - cam_pos) * inv, (hi[n] - cam_pos) * inv
            t_in, t_out = jnp.minimum(t1, t2).max(), jnp.maximum(t1, t2).min()
            hit = (t_in <= t_out) & (t_out > 0) & (t_in < t_best)
            first, count = span[n, 0], span[n, 1]
            ids = first + jnp.arange(leaf)
            t, _, _ = rm.ray_triangle(
                tuple(cam_pos), tuple(d), tuple(v0[ids].T), tuple(e1[ids].T), tuple(e2[ids].T), 1e-4
            )
            t = jnp.where((jnp.arange(leaf) < count) & hit & (count > 0), t, jnp.inf)
            t_best = jnp.minimum(t_best, t.min())
            push = hit & (count == 0)
            near_left = d[axis[n]] > 0
            a = jnp.where(near_left, child[n, 1], child[n, 0])
            b = jnp.where(near_left, child[n, 0], child[n, 1])
            st = jnp.where(push, st.at[sp].set(a).at[sp + 1].set(b), st)
            return st, jnp.where(push, sp + 2, sp), t_best, steps + 1

        init = (jnp.zeros(stack, jnp.int32), jnp.int32(1), jnp.float32(jnp.inf), jnp.int32(0))
        _, _, t, steps = jax.lax.while_loop(lambda s: s[1] > 0, body, init)
        return t, steps

    return jax.vmap(one)(dirs)


def _brute_trace(tri, cam_pos, dirs):
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    d = (dirs[:, 0], dirs[:, 1], dirs[:, 2])

    def body(t_best, k):
        t, _, _ = rm.ray_triangle(tuple(cam_pos), d, tuple(v0[k]), tuple(e1[k]), tuple(e2[k]), 1e-4)
        return jnp.minimum(t_best, t), None

    return jax.lax.scan(body, jnp.full(dirs.shape[0], jnp.inf), jnp.arange(tri.shape[0]))[0]


def choice(triangles: int, size: int, repeats: int) -> None:
    """Tile binning vs BVH vs brute force on one noisy sphere mesh filling half the image."""
    vert, faces, _ = uv_sphere(0.5, triangles)
    rng = np.random.default_rng(0)
    vert = vert * (1 + 0.05 * rng.standard_normal((len(vert), 1)))
    tri = vert[faces].astype(np.float32)
    tri = tri[np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1) > 1e-9]
    cam_pos, cam_mat = np.array([0, 0, 1.5], np.float32), np.eye(3, dtype=np.float32)
    tan_half = math.tan(math.radians(45) / 2)
    v = (1 - 2 * (np.arange(size) + 0.5) / size) * tan_half
    u = (2 * (np.arange(size) + 0.5) / size - 1) * tan_half
    uu, vv = np.meshgrid(u, v)
    dirs = np.stack([uu, vv, -np.ones_like(uu)], -1).reshape(-1, 3)
    dirs = (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).astype(np.float32)
    bvh = _bvh_build(tri, leaf=4)
    methods = {
        "brute": jax.jit(lambda: _brute_trace(jnp.asarray(tri), jnp.asarray(cam_pos), jnp.asarray(dirs)))
    }
    methods["bvh_leaf4"] = jax.jit(
        lambda: _bvh_trace(bvh, tri, jnp.asarray(cam_pos), jnp.asarray(dirs), 4)[0]
    )
    for tile, cap in ((4, 64), (8, 128), (16, 256)):
        methods[f"tiles_{tile}_cap{cap}"] = jax.jit(
            lambda tile=tile, cap=cap: rm.raster_hits(
                tri, cam_pos, cam_mat, dirs, size, size, 45.0, 1e-4, tile, cap
            )
        )
    reference = None
    for name, fn in methods.items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        t = np.asarray(out[0] if isinstance(out, tuple) else out)
        reference = t if reference is None else reference
        row = {
            "bench": "render_mesh_choice",
            "method": name,
            "triangles": len(tri),
            "size": size,
            "compile_s": round(compile_s, 2),
            "ms": round(1e3 * min(times), 1),
            "hit_mismatch_px": int((np.isinf(t) != np.isinf(reference)).sum()),
        }
        if isinstance(out, tuple) and len(out) == 5:
            row["busiest_tile"] = int(out[4])
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="scan,dense")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--shadows", default="both", choices=["both", "on", "off"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png", default="", help="also save a demo image of both cameras here")
    parser.add_argument("--scene", default="primitives", choices=["primitives", "meshes"])
    parser.add_argument("--mesh-triangles", type=int, default=5000, help="faces per mesh (--scene meshes)")
    parser.add_argument("--mesh-budget", type=int, default=2000, help="RenderConfig.mesh_max_triangles")
    parser.add_argument("--choice", action="store_true", help="time tile binning vs BVH vs brute force")
    args = parser.parse_args()
    if args.choice:
        for size in (int(s) for s in args.sizes.split(",")):
            choice(args.mesh_triangles, size, args.repeats)
        return

    meshes = args.scene == "meshes"
    model = mujoco.MjModel.from_xml_string(demo_scene_xml(args.mesh_triangles if meshes else 0))
    mx = mjx.put_model(model)
    data = mjx.forward(mx, mjx.make_data(mx))
    cameras = ("agentview", "eye_in_hand")
    shadow_opts = {"both": (True, False), "on": (True,), "off": (False,)}[args.shadows]

    if args.png:
        from PIL import Image

        config = rd.RenderConfig(supersample=2, mesh_max_triangles=args.mesh_budget)
        scene = rd.prepare_scene(model, config=config)
        imgs = np.asarray(jax.jit(lambda d: rd.render(scene, d, cameras, 224, 224))(data))
        Image.fromarray(np.concatenate(list(imgs), axis=1)).save(args.png)

    for mode in args.modes.split(","):
        for shadows in shadow_opts:
            config = rd.RenderConfig(mode=mode, shadows=shadows, mesh_max_triangles=args.mesh_budget)
            scene = rd.prepare_scene(model, config=config)
            for size in (int(s) for s in args.sizes.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    batched = jax.tree.map(lambda x, b=batch: jnp.broadcast_to(x, (b, *x.shape)), data)
                    fn = jax.jit(jax.vmap(lambda d, s=size, sc=scene: rd.render(sc, d, cameras, s, s)))
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(batched))
                    compile_s = time.perf_counter() - t0
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn(batched))
                        times.append(time.perf_counter() - t0)
                    best = min(times)
                    print(
                        json.dumps(
                            {
                                "bench": "render",
                                "backend": jax.default_backend(),
                                "mode": mode,
                                "shadows": shadows,
                                "scene": args.scene,
                                "geoms": scene.num_geoms,
                                "mesh_triangles": scene.num_triangles,
                                "cameras": len(cameras),
                                "size": size,
                                "batch": batch,
                                "compile_s": round(compile_s, 2),
                                "ms_per_env_step": round(1e3 * best / batch, 2),
                                "env_steps_per_s": round(batch / best, 1),
                                "frames_per_s": round(batch * len(cameras) / best, 1),
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()

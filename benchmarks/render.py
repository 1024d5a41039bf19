"""Benchmark of the JAX ray-cast renderer (pirl.envs.render): frames/s per mode, batch and size.

Prints one JSON line per configuration. Scene: a ~40-geom tabletop built from primitives (arm,
table, bowls, plates, cubes, basket, drawer cabinet, stove knob, textured floor), two cameras.

    .venv/bin/python benchmarks/render.py [--modes scan,dense] [--batches 1,16]
        [--sizes 128,224] [--shadows both|on|off] [--png /tmp/render_demo.png]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

from pirl.envs import render as rd


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


def demo_scene_xml() -> str:
    """MJCF of the benchmark scene (about 40 primitive geoms)."""
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
    <material name="floor" texture="grid" texrepeat="2 2" texuniform="true"/>
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
  </worldbody>
</mujoco>"""


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
    args = parser.parse_args()

    model = mujoco.MjModel.from_xml_string(demo_scene_xml())
    mx = mjx.put_model(model)
    data = mjx.forward(mx, mjx.make_data(mx))
    cameras = ("agentview", "eye_in_hand")
    shadow_opts = {"both": (True, False), "on": (True,), "off": (False,)}[args.shadows]

    if args.png:
        from PIL import Image

        scene = rd.prepare_scene(model, config=rd.RenderConfig(supersample=2))
        imgs = np.asarray(jax.jit(lambda d: rd.render(scene, d, cameras, 224, 224))(data))
        Image.fromarray(np.concatenate(list(imgs), axis=1)).save(args.png)

    for mode in args.modes.split(","):
        for shadows in shadow_opts:
            scene = rd.prepare_scene(model, config=rd.RenderConfig(mode=mode, shadows=shadows))
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
                                "geoms": scene.num_geoms,
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

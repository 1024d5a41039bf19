"""Geometric checks of the JAX ray-cast renderer (pirl.envs.render) on a small primitive scene.

No OpenGL here, so instead of comparing with MuJoCo's renderer the tests check facts that follow
from MuJoCo's camera conventions (looks along -z, +y up, vertical fovy): on-axis objects land in
the image centre, +x of the camera frame is on the right, plane depth matches the analytic value,
nearer geoms occlude farther ones, lit faces are brighter, shadows fall where the light says.
"""

import math

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from mujoco import mjx

from pirl.envs import render as rd

SIZE = 32
CAMERAS = ("top", "side", "tilt")
LIGHT_DIR = np.array([-0.4, -0.4, -1.0])
TILT = math.radians(50.0)  # the tilt camera looks down at 50 degrees below the horizon

XML = f"""
<mujoco>
  <default><geom contype="0" conaffinity="0"/></default>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 4" dir="{LIGHT_DIR[0]} {LIGHT_DIR[1]} {LIGHT_DIR[2]}"
           diffuse="0.8 0.8 0.8" castshadow="true"/>
    <geom name="floor" type="plane" size="0 0 0.1" rgba="0.8 0.8 0.8 1"/>
    <body name="ball" pos="0 0 1">
      <freejoint/>
      <geom name="red_sphere" type="sphere" size="0.2" rgba="1 0 0 1"/>
    </body>
    <geom name="green_box" type="box" pos="0.8 0 0.3" size="0.15 0.15 0.15" rgba="0 1 0 1"/>
    <geom name="blue_capsule" type="capsule" pos="-0.8 0 0.3" size="0.1 0.15" rgba="0 0 1 1"/>
    <geom name="yellow_cylinder" type="cylinder" pos="0 0.8 0.3" size="0.15 0.1" rgba="1 1 0 1"/>
    <geom name="purple_ellipsoid" type="ellipsoid" pos="0 -0.8 0.3" size="0.2 0.1 0.1" rgba="0.6 0 0.8 1"/>
    <geom name="helper" type="box" pos="0 0 2.9" size="1 1 1" group="3" rgba="1 1 1 1"/>
    <geom name="hidden" type="box" pos="0 0 2.5" size="1 1 0.1" rgba="1 1 1 0"/>
    <camera name="top" pos="0 0 3"/>
    <camera name="side" pos="3 0 0.3" xyaxes="0 1 0 0 0 1"/>
    <camera name="tilt" pos="0 -2.5 2.5" xyaxes="1 0 0 0 {math.sin(TILT):.6f} {math.cos(TILT):.6f}" fovy="60"/>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(XML)


@pytest.fixture(scope="module")
def data(model):
    mx = mjx.put_model(model)
    return mjx.forward(mx, mjx.make_data(mx))


@pytest.fixture(scope="module")
def scene(model):
    return rd.prepare_scene(model)


@pytest.fixture(scope="module")
def render_all(scene):
    """jit(data -> (rgb, depth, segmentation)) for all test cameras: one compiled function."""

    def all_outputs(d):
        rgb, depth = rd.render_rgbd(scene, d, CAMERAS, SIZE, SIZE)
        return rgb, depth, rd.render_segmentation(scene, d, CAMERAS, SIZE, SIZE)

    return jax.jit(all_outputs)


@pytest.fixture(scope="module")
def rendered(render_all, data):
    return tuple(np.asarray(x) for x in render_all(data))


@pytest.fixture(scope="module")
def rgbd(rendered):
    return rendered[:2]


@pytest.fixture(scope="module")
def seg(rendered):
    return rendered[2]


def _gid(model, name):
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)


def _project_top(x, y, z_dist, fovy=45.0):
    """(row, col) of world (x, y) seen by the 'top' camera (identity frame) at depth z_dist."""
    tan_half = math.tan(math.radians(fovy) / 2)
    u, v = x / (z_dist * tan_half), y / (z_dist * tan_half)
    return round((1 - v) / 2 * SIZE - 0.5), round((u + 1) / 2 * SIZE - 0.5)


def test_prepare_scene_skips_invisible_geoms(model, scene):
    assert _gid(model, "helper") not in scene.geom_ids  # group 3
    assert _gid(model, "hidden") not in scene.geom_ids  # alpha 0
    assert len(scene.geom_ids) == 6
    assert scene.camera_names == ("top", "side", "tilt")
    assert np.isinf(np.asarray(scene.geom_size)[0, :2]).all()  # size-0 plane is infinite


def test_output_shapes_and_types(rgbd, seg):
    rgb, depth = rgbd
    assert rgb.shape == (3, SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert depth.shape == (3, SIZE, SIZE) and depth.dtype == np.float32
    assert seg.shape == (3, SIZE, SIZE) and seg.dtype == np.int32


def test_sphere_on_camera_axis_is_centred_and_red(model, rgbd, seg):
    rgb, depth = rgbd
    c = SIZE // 2
    red = _gid(model, "red_sphere")
    assert (seg[0, c - 1 : c + 1, c - 1 : c + 1] == red).all()
    r, g, b = rgb[0, c, c].astype(int)
    assert r > 100 and g < 30 and b < 30
    # Symmetric around the centre: the silhouette's mean pixel is the image centre.
    rows, cols = np.nonzero(seg[0] == red)
    assert abs(rows.mean() - (SIZE - 1) / 2) < 0.3 and abs(cols.mean() - (SIZE - 1) / 2) < 0.3
    # Depth of the sphere's top at the centre: 3 - 1 - 0.2 (up to the half-pixel ray offset).
    assert abs(depth[0, c, c] - 1.8) < 5e-3


def test_camera_x_is_right_and_y_is_up(model, seg):
    top = seg[0]
    rows, cols = np.nonzero(top == _gid(model, "green_box"))  # world +x = camera +x
    assert cols.min() > SIZE / 2
    rows, cols = np.nonzero(top == _gid(model, "blue_capsule"))  # world -x
    assert cols.max() < SIZE / 2
    rows, cols = np.nonzero(top == _gid(model, "yellow_cylinder"))  # world +y = camera +y = image up
    assert rows.max() < SIZE / 2
    rows, cols = np.nonzero(top == _gid(model, "purple_ellipsoid"))
    assert rows.min() > SIZE / 2
    # Expected pixel of the box's top face centre from the pinhole model.
    row, col = _project_top(0.8, 0.0, 3 - 0.45)
    assert top[row, col] == _gid(model, "green_box")


def test_nearer_geom_occludes(model, seg):
    # The side camera looks along -x at height 0.3: box (x=0.8) is in front of the capsule (x=-0.8).
    c = SIZE // 2
    assert seg[1, c, c] == _gid(model, "green_box")
    assert (seg[1] == _gid(model, "blue_capsule")).sum() == 0
    # From the top, the sphere hides the floor below it.
    assert seg[0, c, c] == _gid(model, "red_sphere")


def test_plane_depth_matches_analytic(model, rgbd, seg):
    _, depth = rgbd
    floor = _gid(model, "floor")
    # Top camera looks straight down: z-depth of the floor is the height everywhere.
    np.testing.assert_allclose(depth[0][seg[0] == floor], 3.0, rtol=1e-4)
    # Tilted camera: intersect each pixel's ray with z = 0 in numpy.
    fovy = math.radians(60)
    tan_half = math.tan(fovy / 2)
    v = (1 - 2 * (np.arange(SIZE) + 0.5) / SIZE) * tan_half
    u = (2 * (np.arange(SIZE) + 0.5) / SIZE - 1) * tan_half
    uu, vv = np.meshgrid(u, v)
    # Camera frame columns (x, y, z) in world coordinates, from xyaxes.
    x_ax = np.array([1.0, 0, 0])
    y_ax = np.array([0, math.sin(TILT), math.cos(TILT)])
    z_ax = np.cross(x_ax, y_ax)
    d_world = uu[..., None] * x_ax + vv[..., None] * y_ax - z_ax  # z-depth 1 per unit of this vector
    z_depth = -2.5 / d_world[..., 2]  # camera height 2.5 above the floor
    mask = (seg[2] == floor) & (d_world[..., 2] < 0)
    assert mask.sum() > SIZE * SIZE // 4
    np.testing.assert_allclose(depth[2][mask], z_depth[mask], rtol=1e-4)
    # Background (sky) pixels, above the horizon of the level side camera, report zfar.
    sky = seg[1] == -1
    assert sky[:2].all() and np.allclose(depth[1][sky], depth.max())
    assert depth.max() > 10.0


def test_lit_side_is_brighter(model, rgbd, seg):
    # Side view of the sphere, lit from above: its upper half is brighter than its lower half.
    rgb, _ = rgbd
    red = seg[1] == _gid(model, "red_sphere")
    rows, _ = np.nonzero(red)
    mid = rows.mean()
    red_channel = rgb[1, ..., 0].astype(float)
    upper = red_channel[red & (np.arange(SIZE)[:, None] < mid - 1)].mean()
    lower = red_channel[red & (np.arange(SIZE)[:, None] > mid + 1)].mean()
    assert upper > lower + 20
    # The box's top face (facing the light) is brighter than its side face, seen from the tilt camera.
    box = seg[2] == _gid(model, "green_box")
    green = rgb[2, ..., 1][box].astype(int)
    assert green.max() - green.min() > 30


def test_shadow_falls_along_light_direction(model, data, rgbd, seg):
    rgb, _ = rgbd
    no_shadow_scene = rd.prepare_scene(model, config=rd.RenderConfig(shadows=False))
    plain = np.asarray(jax.jit(lambda d: rd.render(no_shadow_scene, d, "top", SIZE, SIZE))(data))[0]
    # The sphere's centre (0, 0, 1) projects along the light to the floor at (-0.4, -0.4, 0).
    shadow_rc = _project_top(-0.4, -0.4, 3.0)
    lit_rc = _project_top(0.4, 0.4, 3.0)
    floor = _gid(model, "floor")
    assert seg[0][shadow_rc] == floor and seg[0][lit_rc] == floor
    assert int(rgb[0][shadow_rc].sum()) < int(plain[shadow_rc].sum()) - 60
    np.testing.assert_array_equal(rgb[0][lit_rc], plain[lit_rc])


def test_vmap_batch_matches_single(model, render_all, data):
    # Two environments: the ball at its start and moved to +x; jit(vmap) equals one at a time.
    mx = mjx.put_model(model)
    moved = mjx.forward(mx, data.replace(qpos=data.qpos.at[0].set(0.4)))
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), data, moved)
    batched = [np.asarray(x) for x in jax.jit(jax.vmap(render_all))(batch)]
    assert batched[0].shape == (2, len(CAMERAS), SIZE, SIZE, 3)
    for i, single_data in enumerate((data, moved)):
        for got, want in zip(batched, render_all(single_data), strict=True):
            if np.issubdtype(got.dtype, np.floating):  # depth: XLA may fuse the batch differently
                np.testing.assert_allclose(got[i], np.asarray(want), rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(got[i], np.asarray(want))
    rgb = batched[0]
    assert not np.array_equal(rgb[0], rgb[1])  # the ball moved right in the top image
    red_cols = [np.nonzero((b[0, ..., 0] > 100) & (b[0, ..., 1] < 30))[1].mean() for b in rgb]
    assert red_cols[1] > red_cols[0] + 3


def test_dense_mode_matches_scan(model, data, seg):
    dense = rd.prepare_scene(model, config=rd.RenderConfig(mode="dense"))
    seg_dense = np.asarray(jax.jit(lambda d: rd.render_segmentation(dense, d, CAMERAS, SIZE, SIZE))(data))
    np.testing.assert_array_equal(seg_dense, seg)


def test_bad_input_fails_early(model, scene, data):
    with pytest.raises(ValueError, match="Unknown camera"):
        rd.render(scene, data, ("nope",), 8, 8)
    with pytest.raises(ValueError, match="mode"):
        rd.prepare_scene(model, config=rd.RenderConfig(mode="raster"))  # type: ignore[arg-type]
    hfield_xml = """<mujoco><asset><hfield name="h" nrow="2" ncol="2" size="1 1 0.1 0.1"/></asset>
      <worldbody><geom type="hfield" hfield="h"/></worldbody></mujoco>"""
    with pytest.raises(ValueError, match="hfield"):
        rd.prepare_scene(mujoco.MjModel.from_xml_string(hfield_xml))

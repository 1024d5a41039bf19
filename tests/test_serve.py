"""The websocket policy server against openpi's real client, with a tiny random-weight π0."""

from __future__ import annotations

import concurrent.futures
import http.client
import time

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pirl.serving.policy import InvalidRequestError, Policy
from pirl.serving.server import PolicyServer, ServerConfig, packb, unpackb

MAX_MESSAGE_BYTES = 2**20


def libero_obs(seed: int = 0, size: int = 224) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "put the bowl on the stove",
    }


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def policy(tok_dir) -> Policy:
    return Policy.random_tiny("pi0_libero", tokenizer_dir=str(tok_dir))


@pytest.fixture(scope="module")
def server(policy):
    # Batch size 1: every model call has one shape, so the test compiles once.
    srv = PolicyServer(policy, ServerConfig(port=0, max_message_bytes=MAX_MESSAGE_BYTES, max_batch_size=1))
    srv.start_in_thread()
    yield srv
    srv.stop()


def raw_connect(server) -> websockets.sync.client.ClientConnection:
    conn = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None)
    msgpack_numpy.unpackb(conn.recv(timeout=30))  # metadata
    return conn


def test_policy_infer_shapes_delta_actions_and_validation(policy):
    out = policy.infer(libero_obs())
    assert out["actions"].shape == (policy.model_cfg.action_horizon, 7)
    assert out["actions"].dtype == np.float32 and np.all(np.isfinite(out["actions"]))
    assert set(out["policy_timing"]) >= {"infer_ms", "preprocess_ms", "postprocess_ms"}
    # pi0_libero's delta actions: the output transform adds the state back on the first 6 dims.
    obs = libero_obs()
    sample = policy.prepare(obs)
    zeros = np.zeros((policy.model_cfg.action_horizon, policy.model_cfg.action_dim), np.float32)
    absolute = policy._output_transform({"actions": zeros, "state": sample["state"]})["actions"]
    np.testing.assert_allclose(
        absolute[:, :6], np.broadcast_to(obs["observation/state"][:6], (10, 6)), atol=1e-5
    )
    np.testing.assert_allclose(absolute[:, 6], 0.0, atol=1e-6)
    with pytest.raises(InvalidRequestError, match="lacks keys"):
        policy.infer({"prompt": "x"})
    with pytest.raises(InvalidRequestError, match="state"):
        policy.infer({**obs, "observation/state": np.zeros(3, np.float32)})


def test_msgpack_roundtrip_matches_openpi_client():
    obs = libero_obs(size=8)
    ours = unpackb(msgpack_numpy.packb(obs))
    theirs = msgpack_numpy.unpackb(packb(obs))
    for key in obs:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(obs[key]))
        np.testing.assert_array_equal(np.asarray(theirs[key]), np.asarray(obs[key]))
    with pytest.raises(InvalidRequestError, match="not valid msgpack"):
        unpackb(b"\xc1\xff not msgpack")
    bad = {b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f4", b"shape": (2,)}
    with pytest.raises(InvalidRequestError, match="does not match"):
        unpackb(packb({"x": bad}))


def test_openpi_client_infers(server, policy):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == policy.model_cfg.action_horizon and meta["action_dim"] == 7
    first = client.infer(libero_obs())
    assert first["actions"].shape == (policy.model_cfg.action_horizon, 7)
    assert "infer_ms" in first["server_timing"] and "prev_total_ms" not in first["server_timing"]
    second = client.infer(libero_obs(1))
    assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"] * 0.5
    assert "infer_ms" in second["policy_timing"]


def test_malformed_requests_get_errors_and_server_keeps_serving(server, policy):
    conn = raw_connect(server)
    conn.send(b"\xc1 this is not msgpack")
    reply = conn.recv(timeout=30)
    assert isinstance(reply, str) and "not valid msgpack" in reply
    conn.send(msgpack_numpy.packb({"prompt": "no images"}))
    reply = conn.recv(timeout=30)
    assert isinstance(reply, str) and "lacks keys" in reply
    conn.send("a text frame")
    assert "binary" in conn.recv(timeout=30)
    # The same connection still works after errors, and so does a fresh openpi client.
    conn.send(msgpack_numpy.packb(libero_obs()))
    assert msgpack_numpy.unpackb(conn.recv(timeout=60))["actions"].shape[-1] == 7
    conn.close()
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    with pytest.raises(RuntimeError, match="lacks keys"):
        client.infer({"observation/state": np.zeros(8, np.float32)})
    assert client.infer(libero_obs())["actions"].shape == (policy.model_cfg.action_horizon, 7)


def test_oversized_message_closes_only_that_connection(server):
    conn = raw_connect(server)
    conn.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(websockets.ConnectionClosed) as info:
        conn.recv(timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert WebsocketClientPolicy("127.0.0.1", server.port).infer(libero_obs())["actions"].shape[-1] == 7


def test_client_disconnecting_mid_request_does_not_break_server(server):
    for _ in range(2):
        conn = raw_connect(server)
        conn.send(msgpack_numpy.packb(libero_obs()))
        conn.close()  # before the reply
    time.sleep(0.5)
    assert WebsocketClientPolicy("127.0.0.1", server.port).infer(libero_obs())["actions"].shape[-1] == 7


def test_four_concurrent_clients_all_answered(server, policy):
    clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(4)]

    def run(i):
        return [clients[i].infer(libero_obs(i + 10 * j))["actions"] for j in range(2)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    assert all(a.shape == (policy.model_cfg.action_horizon, 7) for r in results for a in r)


def test_healthz(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read().strip() == b"OK"


def test_from_checkpoint_detects_pirl_runs_and_openpi_checkpoints(policy, tok_dir, tmp_path):
    import dataclasses
    import json
    import shutil

    import jax

    from pirl.checkpoints import flatten_params, save_openpi_params
    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.data.normalize import save_norm_stats

    params = jax.device_get(policy.params)
    tokenizer_file = tok_dir / "tokenizer.model"

    # A pirl run: <run>/config.json, <run>/assets/{tokenizer.model,norm_stats.json}, <run>/checkpoints/<step>/.
    run = tmp_path / "run"
    (run / "assets").mkdir(parents=True)
    shutil.copy(tokenizer_file, run / "assets" / "tokenizer.model")
    save_norm_stats(run / "assets", policy.norm_stats)
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(policy.model_cfg)}))
    with TrainStateCheckpointer(run / "checkpoints", async_save=False) as ckpt:
        ckpt.save(3, {"params": {"model": params, "value_head": {"w": np.zeros(2, np.float32)}}}, force=True)
    loaded = Policy.from_checkpoint(run, "pi0_libero")
    assert loaded.model_cfg == policy.model_cfg and loaded.metadata["checkpoint"] == str(run.resolve())
    for key, value in flatten_params(params).items():
        np.testing.assert_array_equal(np.asarray(flatten_params(loaded.params)[key]), value, err_msg=key)

    # An openpi JAX checkpoint: <ckpt>/params (orbax) + <ckpt>/assets/<asset id>/norm_stats.json.
    ckpt_dir = tmp_path / "openpi_ckpt"
    save_openpi_params(params, ckpt_dir)
    save_norm_stats(ckpt_dir / "assets" / "physical-intelligence" / "libero", policy.norm_stats)
    loaded = Policy.from_checkpoint(
        ckpt_dir, "pi0_libero", model_cfg=policy.model_cfg, tokenizer_path=tokenizer_file
    )
    np.testing.assert_array_equal(
        np.asarray(loaded.params["action_in_proj"]["kernel"]), params["action_in_proj"]["kernel"]
    )

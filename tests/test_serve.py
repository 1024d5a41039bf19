"""The websocket policy server against openpi's real client, with a tiny random-weight π0."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import pathlib
import re
import shutil
import threading
import time

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pirl.errors import UserError
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


@pytest.fixture
def start_server(policy):
    """Starts extra servers (same compiled policy) with other limits; stops them after the test."""
    servers = []

    def start(policy_like=policy, **config) -> PolicyServer:
        srv = PolicyServer(policy_like, ServerConfig(port=0, max_batch_size=1, **config))
        srv.start_in_thread()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def raw_connect(server, metadata: bool = True) -> websockets.sync.client.ClientConnection:
    conn = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None)
    if metadata:
        msgpack_numpy.unpackb(conn.recv(timeout=30))
    return conn


def ask(conn, obs) -> str | bytes:
    conn.send(msgpack_numpy.packb(obs))
    return conn.recv(timeout=60)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_policy_infer_shapes_delta_actions_and_validation(policy):
    out = policy.infer(libero_obs())
    assert out["actions"].shape == (policy.model_cfg.action_horizon, 7)
    assert out["actions"].dtype == np.float32 and np.all(np.isfinite(out["actions"]))
    assert set(out["policy_timing"]) >= {"infer_ms", "preprocess_ms", "postprocess_ms"}
    # pi0_libero's delta actions: the output transform adds the state back on the first 6 dims.
    obs = libero_obs()
    sample = policy.prepare(obs)
    zeros = np.zeros((policy.model_cfg.action_horizon, policy.model_cfg.action_dim), np.float32)
    absolute = policy.output_transform({"actions": zeros, "state": sample["state"]})["actions"]
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


def test_from_checkpoint_detects_pirl_runs_and_openpi_checkpoints(policy, tok_dir, tmp_path, start_server):
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
    assert loaded.model_cfg == policy.model_cfg and loaded.metadata["checkpoint"] == "run"
    # Clients learn the checkpoint's name, not where it lives on the server.
    served = WebsocketClientPolicy("127.0.0.1", start_server(loaded).port).get_server_metadata()
    assert served["checkpoint"] == "run" and str(tmp_path) not in json.dumps(served)
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


ERROR_LINE = re.compile(r"error \[request ([0-9a-f]+-\d+\.\d+)\]: [^\n]{1,300}")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("observation/state", np.full(8, 1e300), "beyond float32's range"),  # finite float64, inf as f32
        ("observation/state", np.array([0, 1, np.nan, 3, 4, 5, 6, np.inf], np.float32), "indices \\[2, 7\\]"),
        ("observation/state", [[0.0, 1.0], [2.0]], "ragged"),
        ("observation/state", ["a"] * 8, "must be 8 numbers"),
        ("observation/state", np.zeros((2, 8), np.float32), "must be 8 numbers"),
        ("observation/image", np.zeros((16, 16, 3), np.int64), "uint8"),
        ("observation/image", np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        ("observation/wrist_image", np.zeros((16, 16), np.uint8), "image array"),
    ],
)
def test_bad_values_get_a_one_line_error_with_a_request_id(server, caplog, field, value, expected):
    conn = raw_connect(server)
    with caplog.at_level(logging.WARNING, logger="pirl.serving.server"):
        reply = ask(conn, {**libero_obs(size=8), field: value})
    assert isinstance(reply, str) and ERROR_LINE.fullmatch(reply), reply
    assert re.search(expected, reply) and "invalid request" in reply, reply
    assert "Traceback" not in reply and ".py" not in reply
    request_id = ERROR_LINE.fullmatch(reply).group(1)
    assert any(request_id in r.getMessage() for r in caplog.records)  # the log has the detail under the id
    assert isinstance(ask(conn, libero_obs(size=8)), bytes)  # the connection still serves
    conn.close()


def test_non_finite_actions_are_never_sent(server, caplog):
    # float32's largest value passes input validation but overflows inside the model: NaN actions.
    conn = raw_connect(server)
    with caplog.at_level(logging.ERROR, logger="pirl.serving.server"):
        reply = ask(conn, {**libero_obs(size=8), "observation/state": np.full(8, 3.4e38, np.float32)})
    assert isinstance(reply, str) and ERROR_LINE.fullmatch(reply), reply
    assert "non-finite actions" in reply
    request_id = ERROR_LINE.fullmatch(reply).group(1)
    assert any(request_id in r.getMessage() and "70 non-finite" in r.getMessage() for r in caplog.records)
    conn.close()


class _FailingPolicy:
    """The real policy, except that its model call raises (a server-side bug)."""

    def __init__(self, policy: Policy):
        self.metadata, self.prepare = policy.metadata, policy.prepare

    def infer_prepared(self, samples):
        raise RuntimeError("simulated failure in /secret/server/path.py")


def test_internal_errors_send_no_traceback(policy, start_server, caplog):
    srv = start_server(_FailingPolicy(policy))
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    with caplog.at_level(logging.ERROR, logger="pirl.serving.server"), pytest.raises(RuntimeError) as info:
        client.infer(libero_obs(size=8))
    text = str(info.value).removeprefix("Error in inference server:\n")
    assert ERROR_LINE.fullmatch(text) and "internal server error" in text, text
    assert "secret" not in text and "Traceback" not in text
    request_id = ERROR_LINE.fullmatch(text).group(1)
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback stays in the server log


def test_connection_cap(start_server):
    with pytest.raises(UserError, match="max_connections must be >= 1, got 0"):
        ServerConfig(max_connections=0)
    srv = start_server(max_connections=2)
    first, second = raw_connect(srv), raw_connect(srv)
    third = raw_connect(srv, metadata=False)
    with pytest.raises(websockets.ConnectionClosed) as info:
        third.recv(timeout=30)
    assert info.value.rcvd.code == 1013 and "2 connections" in info.value.rcvd.reason
    first.close()
    for _ in range(200):  # the server notices the close within milliseconds
        conn = raw_connect(srv, metadata=False)
        try:
            assert msgpack_numpy.unpackb(conn.recv(timeout=30))["action_dim"] == 7
            break
        except websockets.ConnectionClosed:
            time.sleep(0.01)
    else:
        pytest.fail("a slot did not free up after a client left")
    assert isinstance(ask(conn, libero_obs(size=8)), bytes)
    conn.close()
    second.close()


def test_idle_clients_are_closed(start_server):
    srv = start_server(idle_timeout_s=0.3)
    conn = raw_connect(srv)
    t0 = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as info:
        conn.recv(timeout=30)
    assert info.value.rcvd.code == 1000 and "idle" in info.value.rcvd.reason
    assert 0.25 < time.monotonic() - t0 < 10


class _GatedPolicy:
    """The real policy, with model calls held until `gate` is set (a busy server)."""

    def __init__(self, policy: Policy):
        self.metadata, self.prepare, self.policy = policy.metadata, policy.prepare, policy
        self.gate = threading.Event()

    def infer_prepared(self, samples):
        self.gate.wait(60)
        return self.policy.infer_prepared(samples)


def _kernel_tcp_buffer_bytes() -> int:
    """The most a loopback connection's kernel buffers can hold: receive max + send max (autotuned)."""
    proc = pathlib.Path("/proc/sys/net/ipv4")
    return sum(int((proc / name).read_text().split()[2]) for name in ("tcp_rmem", "tcp_wmem"))


def test_pipelined_large_requests_are_bounded(policy, start_server):
    """Two clients pipeline 10 x 8 MB requests at a busy server: it buffers one request per
    connection and TCP back-pressure stops the clients (without the bound it took all 10 each).

    A client's `send` returns once the kernel has its bytes, so what a client gets out is: the
    request the policy holds, the one the server has read, what the kernel's autotuned buffers hold
    (here up to 32 + 4 MB) and the one being sent."""
    gated = _GatedPolicy(policy)
    srv = start_server(gated, max_message_bytes=9 * 2**20)
    big = msgpack_numpy.packb(libero_obs(size=1200))
    assert 8 * 2**20 < len(big) < 9 * 2**20
    bound = 3 + -(-_kernel_tcp_buffer_bytes() // len(big))
    if bound >= 10:
        pytest.skip(f"this kernel's TCP buffers could hold the whole pipeline ({bound} requests)")
    warm = raw_connect(srv)
    gated.gate.set()
    assert isinstance(ask(warm, libero_obs(size=1200)), bytes)  # allocator warmed at this size
    warm.close()
    gated.gate.clear()
    base = rss_mb()
    sent = [0, 0]
    replies = [0, 0]

    def pipeline(i: int) -> None:
        conn = raw_connect(srv)
        for _ in range(10):
            conn.send(big)
            sent[i] += 1
        for _ in range(10):
            replies[i] += isinstance(conn.recv(timeout=120), bytes)
        conn.close()

    threads = [threading.Thread(target=pipeline, args=(i,), daemon=True) for i in range(2)]
    try:
        for t in threads:
            t.start()
        last, stable_since = None, time.monotonic()
        while min(sent) < 1 or time.monotonic() - stable_since < 0.5:  # until both clients stall
            if sent != last:
                last, stable_since = list(sent), time.monotonic()
            assert all(t.is_alive() for t in threads), "a client thread ended early"
            time.sleep(0.02)
        growth = rss_mb() - base
        assert max(sent) <= bound, (sent, bound)
        assert growth < 140, f"RSS grew {growth:.0f} MB with {sent} requests sent"
    finally:
        gated.gate.set()
    for t in threads:
        t.join(120)
    assert replies == [10, 10]


def test_mismatched_checkpoint_names_the_parameter(policy, tok_dir, tmp_path):
    import jax

    from pirl.checkpoints import save_openpi_params
    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.data.normalize import save_norm_stats

    params = jax.device_get(policy.params)
    wrong_cfg = dataclasses.replace(policy.model_cfg, action_dim=16)  # the saved run has action_dim 32
    expected = f"{policy.model_cfg.action_dim}, "

    run = tmp_path / "run"
    (run / "assets").mkdir(parents=True)
    shutil.copy(tok_dir / "tokenizer.model", run / "assets" / "tokenizer.model")
    save_norm_stats(run / "assets", policy.norm_stats)
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(wrong_cfg)}))
    with TrainStateCheckpointer(run / "checkpoints", async_save=False) as ckpt:
        ckpt.save(1, {"params": {"model": params}}, force=True)
    with pytest.raises(UserError) as info:
        Policy.from_checkpoint(run, "pi0_libero")
    message = str(info.value)
    assert "action_in_proj/kernel" in message and "config.json" in message, message
    assert "expected shape (16, " in message and f"found ({expected}" in message, message

    ckpt_dir = tmp_path / "openpi_ckpt"
    save_openpi_params(params, ckpt_dir)
    with pytest.raises(UserError, match=r"action_in_proj/kernel.*expected shape \(16, .*model_cfg argument"):
        Policy.from_checkpoint(
            ckpt_dir, "pi0_libero", model_cfg=wrong_cfg, tokenizer_path=tok_dir / "tokenizer.model"
        )

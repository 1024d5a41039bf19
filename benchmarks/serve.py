"""Policy-server benchmark: websocket round-trip latency and throughput with the tiny π0 on CPU.

    .venv/bin/python benchmarks/serve.py [--requests 40] [--concurrency 1,8] [--pipeline-mb 8]

Prints JSON lines: the bare jitted `sample_actions` call (batch 1), `Policy.infer` (host transforms
+ model), and for each client count the round-trip p50 / p99 latency (ms), requests/s, and the
server's overhead over the bare model call (p50 round trip minus p50 bare call, 1 client). Then
two raw clients each pipeline 10 requests of about `--pipeline-mb` MB (large images) without waiting
for replies: the peak RSS growth of this process (server, clients and the allocator's retained
free memory) and the requests/s. (When the server keeps up, little is queued either way; the bound
on what a *busy* server buffers is tested in tests/test_serve.py.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import threading
import time

import jax
import numpy as np
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pirl.serving.policy import Policy, batch_buckets, stack_samples
from pirl.serving.server import PolicyServer, ServerConfig


def libero_obs(seed: int, size: int = 224) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "pick up the black bowl next to the ramekin and place it on the plate",
    }


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def pipelined_memory(port: int, message_mb: float, requests: int = 10, clients: int = 2) -> dict:
    """`clients` raw connections each send `requests` large requests back to back, then read the
    replies; returns the peak RSS growth (sampled every 5 ms) and the throughput."""
    size = int((message_mb * 2**20 / 6) ** 0.5)  # two uint8 images of size x size x 3
    message = msgpack_numpy.packb(libero_obs(0, size))

    def connect() -> websockets.sync.client.ClientConnection:
        conn = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
        conn.recv(timeout=60)  # metadata
        return conn

    warm = connect()  # the allocator sees one request of this size first
    warm.send(message)
    warm.recv(timeout=120)
    warm.close()
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    def pipeline(_: int) -> int:
        conn = connect()
        for _ in range(requests):
            conn.send(message)
        ok = sum(isinstance(conn.recv(timeout=300), bytes) for _ in range(requests))
        conn.close()
        return ok

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(pipeline, range(clients)))
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    return {
        "bench": "pipelined_large_requests",
        "clients": clients,
        "requests_per_client": requests,
        "message_mb": len(message) / 2**20,
        "answered": answered,
        "peak_rss_growth_mb": peak[0] - base,
        "requests_per_s": clients * requests / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--max-batch-size", type=int, default=8, help="server batching limit")
    parser.add_argument(
        "--pipeline-mb", type=float, default=8.0, help="request size of the pipelining run (0 skips)"
    )
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]

    policy = Policy.random_tiny("pi0_libero")
    t0 = time.perf_counter()
    policy.warmup(batch_buckets(args.max_batch_size))  # every batch size the server can form
    compile_s = time.perf_counter() - t0
    device = jax.devices()[0].platform

    # The bare model call on an already-prepared batch of one.
    batch = stack_samples([policy.prepare(libero_obs(0))], policy.model_cfg.image_keys)
    batch = jax.device_put(batch)
    rng = jax.random.key(0)
    bare = []
    for _ in range(args.requests):
        t = time.perf_counter()
        jax.block_until_ready(policy.sample_model_actions(batch, rng))
        bare.append((time.perf_counter() - t) * 1000)
    print(
        json.dumps(
            {
                "bench": "sample_actions",
                "batch": 1,
                "device": device,
                **percentiles(bare),
                "compile_s": compile_s,
            }
        )
    )

    host = []
    for i in range(args.requests):
        obs = libero_obs(i)
        t = time.perf_counter()
        policy.infer(obs)
        host.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"bench": "policy_infer", "batch": 1, "device": device, **percentiles(host)}))

    max_message_bytes = max(ServerConfig.max_message_bytes, int(args.pipeline_mb * 2**20 * 1.1))
    server = PolicyServer(
        policy, ServerConfig(port=0, max_batch_size=args.max_batch_size, max_message_bytes=max_message_bytes)
    )
    port = server.start_in_thread()
    try:
        for clients_n in concurrency:
            clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(clients_n)]
            observations = [libero_obs(i) for i in range(8)]
            for c in clients:  # one warm-up round trip per connection
                c.infer(observations[0])

            def run(index: int, clients=clients, observations=observations) -> list[float]:
                latencies = []
                for j in range(args.requests):
                    t = time.perf_counter()
                    clients[index].infer(observations[(index + j) % len(observations)])
                    latencies.append((time.perf_counter() - t) * 1000)
                return latencies

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients_n) as pool:
                latencies = [ms for result in pool.map(run, range(clients_n)) for ms in result]
            wall = time.perf_counter() - t
            stats = percentiles(latencies)
            record = {
                "bench": "websocket_roundtrip",
                "clients": clients_n,
                "device": device,
                **stats,
                "requests_per_s": len(latencies) / wall,
                "server_overhead_p50_ms": stats["p50_ms"] - float(np.percentile(bare, 50)),
                "overhead_over_policy_infer_p50_ms": stats["p50_ms"] - float(np.percentile(host, 50)),
            }
            print(json.dumps(record))
        if args.pipeline_mb > 0:
            print(json.dumps({"device": device, **pipelined_memory(port, args.pipeline_mb)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()

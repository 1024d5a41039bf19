"""Policy server entry point: `python -m pirl.serve --checkpoint DIR --config-name pi0_libero --port 8000`.

Serves a checkpoint (openpi JAX orbax, openpi-PyTorch safetensors or a pirl run; auto-detected)
over openpi's websocket protocol; `openpi_client.websocket_client_policy.WebsocketClientPolicy`
connects unchanged. `--random-tiny` serves a tiny random-weight model (smoke tests, benchmarks).
User errors exit 2 in one or two lines (`--debug` for the traceback).
"""

from __future__ import annotations

import dataclasses
import logging

import tyro

import pirl
from pirl.errors import run_cli
from pirl.serving.policy import batch_buckets, policy_from_args
from pirl.serving.server import PolicyServer, ServerConfig


@dataclasses.dataclass(frozen=True)
class ServeArgs:
    """Command-line options of `python -m pirl.serve`."""

    checkpoint: str | None = None
    """Checkpoint directory (or .safetensors file); required unless --random-tiny."""
    config_name: str | None = None
    """Data config of the input/output transforms (pi0_libero, pi05_libero, ...); None = the
    checkpoint's own (a pirl run's assets/policy.json), else pi0_libero."""
    random_tiny: bool = False
    """Serve Pi0Config.tiny() with random weights instead of a checkpoint."""
    tokenizer_path: str | None = None
    """PaliGemma sentencepiece model; default: found in the checkpoint's assets."""
    norm_stats_path: str | None = None
    """Directory holding norm_stats.json; default: found in the checkpoint's assets."""
    num_steps: int | None = None
    """Flow-matching Euler steps per action chunk; None = the checkpoint's own (a pirl run's), else 10."""
    seed: int = 0
    """Seed of the sampling noise."""
    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 exposes the server to the network."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    max_message_bytes: int = ServerConfig.max_message_bytes
    """Largest accepted request; bigger ones close the connection with code 1009."""
    max_connections: int = ServerConfig.max_connections
    """Most simultaneous clients; further ones are closed with code 1013 (try again later)."""
    idle_timeout_s: float = ServerConfig.idle_timeout_s
    """Close a client that sends no request for this many seconds (0 disables)."""
    max_batch_size: int = 8
    """Most concurrent requests grouped into one model call."""
    warmup: bool = True
    """Compile the model call for every batch size the server can form before accepting connections."""


def main(args: ServeArgs) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(  # checked before the (slow) checkpoint load
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        max_batch_size=args.max_batch_size,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout_s,
    )
    pirl.create_backends()  # XLA's CPU pool as pirl sizes it (see pirl/__init__.py)
    policy = policy_from_args(args)
    if args.warmup:
        policy.warmup(batch_buckets(min(args.max_batch_size, policy.max_batch_size)))
    PolicyServer(policy, config).serve_forever()


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(ServeArgs)))

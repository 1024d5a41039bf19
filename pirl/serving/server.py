"""A websocket policy server speaking openpi's protocol (`openpi_client.WebsocketClientPolicy` works unchanged).

Protocol (openpi's `websocket_policy_server.py`): on connect the server sends msgpack(metadata);
each request is one binary frame holding a msgpack dict whose numpy arrays are encoded as
{"__ndarray__": True, "data", "dtype", "shape"}; the reply is msgpack(policy output) with
"server_timing" {"infer_ms"} plus "prev_total_ms" (the previous request's full server time, from
the second request of a connection on). `GET /healthz` answers 200 "OK".

Errors (pirl's choice, documented): a request that cannot be decoded or transformed (not msgpack,
not a dict, missing keys, bad shapes, a text frame) gets a *text* frame "error: ..." back -- the
openpi client raises it as RuntimeError -- and the connection stays open for the next request;
other clients are never affected. A frame larger than `max_message_bytes` makes the websockets
library close that connection with code 1009 (message too big). Model failures are sent the same
way. A client that disconnects while its request is being computed is dropped silently.

Concurrency: one asyncio event loop handles all connections; requests are validated and
transformed in a thread pool, then a batcher task groups whatever requests are pending (up to
`max_batch_size`) into one jitted model call run in a worker thread, so the loop keeps serving
while the model computes and concurrent clients share a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http
import logging
import threading
import time
import traceback
from typing import Any

import msgpack
import numpy as np
import websockets
import websockets.asyncio.server as ws_server
from openpi_client import msgpack_numpy

from pirl.serving.policy import InvalidRequestError, Policy

logger = logging.getLogger(__name__)

_ALLOWED_DTYPE_KINDS = "biuf"  # bool, int, uint, float: no objects, voids or complex


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Websocket server options."""

    host: str = "127.0.0.1"
    """Interface to bind (0.0.0.0 exposes the policy to the network)."""
    port: int = 8000
    """TCP port (0 picks a free one)."""
    max_message_bytes: int = 32 * 2**20
    """Largest accepted request frame; bigger frames close that connection with code 1009."""
    max_batch_size: int = 8
    """Most pending requests grouped into one model call."""
    preprocess_threads: int = 4
    """Threads that decode-validate-transform requests."""


# ----------------------------------------------------------------------------------------------
# msgpack-numpy: openpi_client's codec, with what its decoder trusts checked first.


def packb(obj: Any) -> bytes:
    """msgpack with numpy arrays in openpi_client's encoding (`msgpack_numpy.packb`)."""
    return msgpack_numpy.packb(obj)


def _decode_array(obj: dict) -> Any:
    """openpi_client's `unpack_array`, once the encoding is checked: a plain dtype (no objects,
    voids or complex) and data that fill the shape exactly."""
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            shape = tuple(int(d) for d in obj[b"shape"])
            data = obj[b"data"]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequestError(f"malformed ndarray encoding: {e}") from e
        if dtype.kind not in _ALLOWED_DTYPE_KINDS:
            raise InvalidRequestError(f"arrays of dtype {dtype} are not accepted")
        if (
            not isinstance(data, bytes)
            or any(d < 0 for d in shape)
            or len(data) != dtype.itemsize * int(np.prod(shape))
        ):
            raise InvalidRequestError(f"ndarray data does not match dtype {dtype} and shape {shape}")
    try:
        return msgpack_numpy.unpack_array(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidRequestError(f"malformed numpy encoding: {e}") from e


def unpackb(data: bytes) -> Any:
    """Decode a request; raises InvalidRequestError for anything that is not valid msgpack-numpy."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_array, strict_map_key=False)
    except InvalidRequestError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for corrupt input
        raise InvalidRequestError(f"request is not valid msgpack: {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------------------------
# The server.


@dataclasses.dataclass
class _Pending:
    sample: dict
    future: asyncio.Future


class PolicyServer:
    """Serves a `Policy` over websockets (see the module docstring)."""

    def __init__(self, policy: Policy, config: ServerConfig = ServerConfig()):
        if config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {config.max_batch_size}")
        self.policy = policy
        self.config = config
        self._metadata = packb(policy.metadata)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._prep_pool = concurrent.futures.ThreadPoolExecutor(config.preprocess_threads, "pirl-prep")
        self._model_pool = concurrent.futures.ThreadPoolExecutor(1, "pirl-model")
        self._server: ws_server.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run until cancelled (or `stop`)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batcher())
        try:
            async with ws_server.serve(
                self._handler,
                self.config.host,
                self.config.port,
                compression=None,
                max_size=self.config.max_message_bytes,
                process_request=_health_check,
            ) as server:
                self._server = server
                self.port = next(iter(server.sockets)).getsockname()[1]
                logger.info(
                    "serving %s on ws://%s:%d",
                    self.policy.metadata.get("config_name"),
                    self.config.host,
                    self.port,
                )
                self._started.set()
                await server.serve_forever()
        finally:
            batcher.cancel()
            self._started.set()

    def serve_forever(self) -> None:
        """Blocking: serve in this thread until interrupted."""
        try:
            asyncio.run(self.serve())
        finally:
            self._shutdown_pools()

    def start_in_thread(self, timeout: float = 60.0) -> int:
        """Serve in a daemon thread; returns the bound port once listening."""
        self._thread = threading.Thread(target=self.serve_forever, name="pirl-policy-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self.port is None:
            raise RuntimeError("policy server did not start listening")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with `start_in_thread`."""
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout)

    def _shutdown_pools(self) -> None:
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ connections

    async def _handler(self, websocket: ws_server.ServerConnection) -> None:
        peer = websocket.remote_address
        logger.info("connection from %s opened", peer)
        loop = asyncio.get_running_loop()
        prev_total_ms: float | None = None
        try:
            await websocket.send(self._metadata)
            while True:
                message = await websocket.recv()
                start = time.monotonic()
                try:
                    if isinstance(message, str):
                        raise InvalidRequestError("requests must be binary msgpack frames, got a text frame")
                    sample = await loop.run_in_executor(self._prep_pool, self._prepare, message)
                    future = loop.create_future()
                    await self._queue.put(_Pending(sample, future))
                    t_infer = time.monotonic()
                    output = await future
                    output["server_timing"] = {"infer_ms": (time.monotonic() - t_infer) * 1000}
                    if prev_total_ms is not None:
                        output["server_timing"]["prev_total_ms"] = prev_total_ms
                    reply = packb(output)
                except InvalidRequestError as e:
                    logger.warning("bad request from %s: %s", peer, e)
                    await websocket.send(f"error: invalid request: {e}")
                    continue
                except Exception:  # model failure: report it, keep the connection
                    logger.exception("inference failed for %s", peer)
                    await websocket.send("error: inference failed:\n" + traceback.format_exc())
                    continue
                await websocket.send(reply)
                prev_total_ms = (time.monotonic() - start) * 1000
        except websockets.ConnectionClosed as e:
            logger.info("connection from %s closed (%s)", peer, e)

    def _prepare(self, message: bytes) -> dict:
        return self.policy.prepare(unpackb(message))

    async def _batcher(self) -> None:
        """Group pending requests into model calls, one at a time, in the model thread."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.config.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(
                    self._model_pool, self.policy.infer_prepared, [p.sample for p in batch]
                )
            except Exception as e:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)


def _health_check(
    connection: ws_server.ServerConnection, request: ws_server.Request
) -> ws_server.Response | None:
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None

"""A websocket policy server speaking openpi's protocol (`openpi_client.WebsocketClientPolicy` works unchanged).

Protocol (openpi's `websocket_policy_server.py`): on connect the server sends msgpack(metadata);
each request is one binary frame holding a msgpack dict whose numpy arrays are encoded as
{"__ndarray__": True, "data", "dtype", "shape"}; the reply is msgpack(policy output) with
"server_timing" {"infer_ms"} plus "prev_total_ms" (the previous request's full server time, from
the second request of a connection on). `GET /healthz` answers 200 "OK".

Errors (pirl's choice, documented): a request that cannot be decoded or transformed (not msgpack,
not a dict, missing keys, ragged lists, bad shapes or dtypes, NaN / inf / float32-overflowing
values, a text frame) gets a one-line *text* frame "error [request <id>]: invalid request: ..." back
-- the openpi client raises it as RuntimeError -- and the connection stays open for the next
request; other clients are never affected. Replies are checked before sending: actions that are
not finite are never sent (the client gets an error instead). Any other failure (a model or server
bug) sends "error [request <id>]: internal server error ..." and logs the traceback under that
request id; clients never see tracebacks or server paths. A client that disconnects while its
request is being computed is dropped silently.

Resource limits (`ServerConfig`): at most `max_connections` clients at once (more are closed with
code 1013, try again later); a frame larger than `max_message_bytes` closes that connection with
code 1009 (message too big); each connection buffers at most one further request while one is
computed (the websockets receive queue holds one frame; TCP back-pressure holds the rest), so
request memory stays below about max_connections x 4 x max_message_bytes; a client that sends no
request for `idle_timeout_s` is closed (code 1000, reason "idle ..."). The metadata names the
checkpoint, not its path.

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
import itertools
import logging
import secrets
import threading
import time
from typing import Any

import msgpack
import numpy as np
import websockets
import websockets.asyncio.server as ws_server
from openpi_client import msgpack_numpy

from pirl.errors import UserError
from pirl.serving.policy import InvalidRequestError, Policy

logger = logging.getLogger(__name__)

_ALLOWED_DTYPE_KINDS = "biuf"  # bool, int, uint, float: no objects, voids or complex
_MAX_ERROR_CHARS = 300  # an error sent to a client is one line of at most this many characters


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Websocket server options."""

    host: str = "127.0.0.1"
    """Interface to bind (0.0.0.0 exposes the policy to the network)."""
    port: int = 8000
    """TCP port (0 picks a free one)."""
    max_message_bytes: int = 16 * 2**20
    """Largest accepted request frame; bigger frames close that connection with code 1009."""
    max_connections: int = 16
    """Most simultaneous client connections; further ones are closed with code 1013 (try again later)."""
    idle_timeout_s: float = 600.0
    """Close a connection that sends no request for this many seconds (0 disables)."""
    max_batch_size: int = 8
    """Most pending requests grouped into one model call."""
    preprocess_threads: int = 4
    """Threads that decode-validate-transform requests."""

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_connections", "max_message_bytes", "preprocess_threads"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.idle_timeout_s < 0:
            raise UserError(f"idle_timeout_s must be >= 0 (0 disables it), got {self.idle_timeout_s}")


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
        self._open_connections = 0  # only touched on the event loop
        self._connection_ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(2)  # tells this server's request ids from a previous run's
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
                max_queue=1,  # one request buffered per connection; TCP back-pressure beyond
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
        if self._open_connections >= self.config.max_connections:
            logger.warning("refusing %s: %d connections open (max_connections)", peer, self._open_connections)
            await websocket.close(
                1013, f"server busy: {self.config.max_connections} connections open; try again later"
            )
            return
        self._open_connections += 1
        conn_id = f"{self._id_prefix}-{next(self._connection_ids)}"
        logger.info("connection %s from %s opened", conn_id, peer)
        try:
            await websocket.send(self._metadata)
            prev_total_ms: float | None = None
            for n in itertools.count(1):
                try:
                    message = await asyncio.wait_for(websocket.recv(), self.config.idle_timeout_s or None)
                except TimeoutError:
                    logger.info("connection %s idle for %ss: closing it", conn_id, self.config.idle_timeout_s)
                    await websocket.close(
                        1000, f"idle for {self.config.idle_timeout_s:g} s without a request"
                    )
                    return
                start = time.monotonic()
                reply = await self._answer(message, f"{conn_id}.{n}", prev_total_ms)
                await websocket.send(reply)
                if isinstance(reply, bytes):
                    prev_total_ms = (time.monotonic() - start) * 1000
        except websockets.ConnectionClosed as e:
            logger.info("connection %s closed (%s)", conn_id, e)
        finally:
            self._open_connections -= 1

    async def _answer(
        self, message: str | bytes, request_id: str, prev_total_ms: float | None
    ) -> str | bytes:
        """The reply to one request: msgpack(output), or a one-line error text naming `request_id`
        (the server log holds the details under that id)."""
        loop = asyncio.get_running_loop()
        try:
            if isinstance(message, str):
                raise InvalidRequestError("requests must be binary msgpack frames, got a text frame")
            sample = await loop.run_in_executor(self._prep_pool, self._prepare, message)
            future = loop.create_future()
            await self._queue.put(_Pending(sample, future))
            t_infer = time.monotonic()
            output = await future
            _check_finite(output)
            output["server_timing"] = {"infer_ms": (time.monotonic() - t_infer) * 1000}
            if prev_total_ms is not None:
                output["server_timing"]["prev_total_ms"] = prev_total_ms
            reply = packb(output)
        except InvalidRequestError as e:
            logger.warning("request %s is invalid: %s", request_id, e)
            return _error_text(request_id, f"invalid request: {e}")
        except NonFiniteOutputError as e:
            logger.error("request %s: %s", request_id, e)
            return _error_text(
                request_id,
                "the policy produced non-finite actions; check that the observation is in the range "
                "the policy was trained on",
            )
        except Exception:  # a bug, not the client's fault: the details stay in the server log
            logger.exception("request %s failed", request_id)
            return _error_text(request_id, "internal server error; the server log has the details")
        return reply

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


class NonFiniteOutputError(RuntimeError):
    """The policy's output holds NaN or inf; it is never sent."""


def _check_finite(output: dict) -> None:
    for key, value in output.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise NonFiniteOutputError(f"output {key!r} has {bad} non-finite values of {value.size}")


def _error_text(request_id: str, message: str) -> str:
    """A client-facing error: one line, bounded length, naming the request id."""
    line = " ".join(str(message).split())
    if len(line) > _MAX_ERROR_CHARS:
        line = line[: _MAX_ERROR_CHARS - 3] + "..."
    return f"error [request {request_id}]: {line}"


def _health_check(
    connection: ws_server.ServerConnection, request: ws_server.Request
) -> ws_server.Response | None:
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None

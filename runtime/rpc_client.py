"""The client side of TVM's RPC: where a bundle runs instead of here, and sessions that cannot hang.

``connect`` and ``request_from_tracker`` run TVM's own connect in a worker thread with a timeout:
TVM's blocks forever on a socket that accepts and never answers its handshake (another service, or
a TVM server busy with another client: it serves one session at a time), and its tracker client
retries a refused tracker for 60 s.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from ..errors import OptionError, ToolError

RPC_TIMEOUT_S = 10  # connecting, and each remote call's session
PORTS = range(1, 65536)  # TCP ports a server or tracker listens on


class RpcConnectError(ToolError):
    """No TVM RPC server answered at an address."""


@dataclass(frozen=True)
class Remote:
    """Where a bundle runs instead of here: a TVM RPC server (``host:port``) or a tracker and key."""

    address: str  # "host:port" of the server, or of the tracker when ``key`` is set
    key: str | None = None
    timeout_s: float = RPC_TIMEOUT_S

    def __post_init__(self) -> None:
        parse_address(self.address)  # OptionError now, not a wrapped port at connect time

    def host_port(self) -> tuple[str, int]:
        return parse_address(self.address)

    def describe(self) -> str:
        return f"tracker {self.address}, key {self.key}" if self.key else f"RPC server {self.address}"


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port); OptionError, one line, unless the port is an integer in 1-65535."""
    host, _, port = str(text).rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise OptionError(f"expected HOST:PORT, got {text!r}")
    digits = port.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) not in PORTS:
        raise OptionError(f"port {port} in {text!r} is outside 1-65535")
    return host, int(digits)


def open_session(remote: Remote):
    """An RPC session with the server, or with a device the tracker hands out; RpcConnectError (a
    ToolError) within ``remote.timeout_s`` when none answers, never a hang."""
    host, port = remote.host_port()
    if remote.key:
        return request_from_tracker(host, port, remote.key, timeout=remote.timeout_s)
    return connect(host, port, timeout=remote.timeout_s)


def connect(host: str, port: int, key: str = "", *, session_timeout: float = 0, timeout: float = 30.0):
    """``tvm.rpc.connect`` that cannot hang: RpcConnectError unless a TVM RPC server answers in ``timeout`` s.

    A refused connection fails at once in TVM too (no retries), but a socket that accepts and never
    answers TVM's handshake (another service, or a TVM server busy with another client: it serves
    one session at a time) blocks ``tvm.rpc.connect`` forever. ``session_timeout`` is TVM's own:
    the server ends the session after that many seconds (0: never).
    """
    from tvm import rpc  # noqa: PLC0415

    return _within(
        lambda: rpc.connect(host, port, key, session_timeout=session_timeout), timeout,
        late=f"{host}:{port} accepted a connection but no TVM RPC handshake came back within {timeout:g} s: "
             "is it a TVM RPC server, and is another client holding its only session? (A remote module or "
             "VM still alive holds its session open; tvm's VirtualMachine.get_outputs leaves a reference "
             "cycle, so drop it and gc.collect().)",
        failed=f"no TVM RPC server at {host}:{port}",
        hint=f"start one with `python -m rwkv_edge.runtime.rpc_server --host {host} --port {port}`")


def request_from_tracker(host: str, port: int, key: str, *, timeout: float = 30.0):
    """A session with a device registered under ``key`` at the tracker; RpcConnectError when there is
    no tracker (TVM itself retries for 60 s) or no such device becomes free within ``timeout`` s."""
    from tvm import rpc  # noqa: PLC0415

    check_tracker((host, port))
    return _within(
        lambda: rpc.connect_tracker(host, port).request(key, session_timeout=0, max_retry=1), timeout,
        late=f"the tracker at {host}:{port} gave no free device with key {key!r} within {timeout:g} s",
        failed=f"the tracker at {host}:{port} could not hand out a device with key {key!r}",
        hint=f"start a server on the device with `python -m rwkv_edge.runtime.rpc_server --tracker "
             f"{host}:{port} --key {key}`")


def _within(open_session, timeout: float, late: str, failed: str, hint: str):
    """Run ``open_session()`` in a worker thread; RpcConnectError(late) after ``timeout`` s, or
    RpcConnectError(failed + TVM's last line + hint) when it raises."""
    attempt = _ConnectAttempt()
    worker = threading.Thread(target=attempt.run, args=(open_session,), name="rpc-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    with attempt.lock:
        if attempt.session is None and attempt.error is None:  # still in TVM's C++ handshake
            attempt.abandoned = True  # a session that comes later is closed by the worker itself
            raise RpcConnectError(late)
    if attempt.error is not None:
        lines = str(attempt.error).strip().splitlines()
        raise RpcConnectError(f"{failed} ({lines[-1] if lines else type(attempt.error).__name__}); {hint}") \
            from attempt.error
    return attempt.session


class _ConnectAttempt:
    """One session opened in a worker thread; a session that arrives after the caller gave up is dropped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.session = None
        self.error: Exception | None = None

    def run(self, open_session) -> None:
        session = error = None
        try:
            session = open_session()
        except Exception as err:  # noqa: BLE001 -- handed to the caller's thread
            error = err
        with self.lock:
            if not self.abandoned:
                self.session, self.error = session, error
        # else: `session` dies with this frame, which closes it and frees the server for others


def check_tracker(tracker: tuple[str, int]) -> None:
    try:
        socket.create_connection(tracker, timeout=5).close()
    except OSError as err:
        raise RpcConnectError(
            f"no TVM RPC tracker at {tracker[0]}:{tracker[1]} ({err}); start one with "
            f"`python -m tvm.exec.rpc_tracker --host {tracker[0]} --port {tracker[1]}`"
        ) from err

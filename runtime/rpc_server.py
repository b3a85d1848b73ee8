"""Start TVM RPC servers (native, or aarch64 under qemu-user) and connect to them without hanging.

TVM's RPC server is how rwkv-edge runs compiled code on another machine: a board on the network,
or an emulated aarch64 Linux on this x86-64 one. The emulated server is TVM's own server running in
an arm64 CPython 3.11 under ``qemu-aarch64-static -cpu CPU -L SYSROOT``, with the aarch64 TVM
runtime wheels on its path; ``scripts/install-arm-tools.sh`` installs all of it.

    python -m rwkv_edge.runtime.rpc_server --port 9090                       # native
    python -m rwkv_edge.runtime.rpc_server --port 9090 --emulate-aarch64 --cpu cortex-a53
    python -m rwkv_edge.runtime.rpc_server --tracker 127.0.0.1:9190 --key rpi5

From Python (tests)::

    with rpc_server(emulate="cortex-a53") as (host, port):
        remote = connect(host, port)

Both servers load only TVM's runtime library (``TVM_USE_RUNTIME_LIB=1``), as a device would: they
load and run compiled modules, they do not compile. A TVM RPC server executes whatever a client
sends: bind it to 127.0.0.1 unless the network is trusted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OptionError, RwkvEdgeError, ToolError
from ..platforms import Emulation, emulation, host_arch
from .rpc_client import PORTS, check_tracker, parse_address
from .rpc_process import READY

SERVE_SCRIPT = Path(__file__).with_name("rpc_process.py")
DEFAULT_CPU = "cortex-a53"  # ARMv8.0-A + NEON: the oldest 64-bit core boards still ship
NATIVE_START_TIMEOUT = 60.0  # measured: 1-5 s on 2 cores
EMULATED_START_TIMEOUT = 180.0  # measured: 4-5 s on 2 cores; CI may be busier


class RpcServerError(ToolError):
    """An RPC server or tracker did not start, or stopped early; the message carries its log."""


class EmulationUnavailableError(ToolError):
    """Something needed to emulate aarch64 is missing; the message says what installs it."""


# --- the aarch64 emulator -------------------------------------------------------------------------
def find_aarch64_emulator() -> Emulation:
    """The installed aarch64 emulation, or EmulationUnavailableError saying what is missing and what installs it."""
    why = emulation_unavailable_reason()
    if why is not None:
        raise EmulationUnavailableError(why)
    return emulation("aarch64")


def emulation_unavailable_reason() -> str | None:
    """None when aarch64 Python code can run here under qemu, else why not (for test skips)."""
    emulator = emulation("aarch64")
    if emulator is None:
        return f"aarch64 emulation runs on x86-64 hosts; this one is {host_arch()}"
    return emulator.python_unavailable()


# --- starting servers -----------------------------------------------------------------------------
def serve_command(
    role: str,
    host: str,
    port: int,
    *,
    emulate: str | None = None,
    tracker: str | None = None,
    key: str = "",
    silent: bool = False,
    base_env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a process running TVM's RPC ``role`` ("server" or "tracker") on host:port.

    ``emulate`` is a qemu CPU model (``cortex-a53``, ``cortex-a72``, ``neoverse-n1``, ``max``...):
    the server then runs as aarch64 under qemu. None runs it in this Python.
    """
    if role not in ("server", "tracker"):
        raise OptionError(f"role must be 'server' or 'tracker', not {role!r}")
    if port not in PORTS:
        raise OptionError(f"port {port} is outside 1-65535")
    if tracker is not None:
        parse_address(tracker)
    if tracker is not None and not key:
        raise RpcServerError("a server that registers with a tracker needs a --key naming its kind of device")
    args = [role, "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    if tracker is not None:
        args += ["--tracker", tracker, "--key", key]
    if silent:
        args.append("--silent")
    # -s: no user site-packages; -P: the script's folder (runtime/) stays off sys.path, where a
    # module could shadow one of the standard library's.
    python_args = ["-s", "-P", str(SERVE_SCRIPT), *args]
    env = dict(os.environ if base_env is None else base_env)
    env["TVM_USE_RUNTIME_LIB"] = "1"  # a device runs modules; it does not compile them
    if emulate is None:
        return [sys.executable, *python_args], env
    emulator = find_aarch64_emulator()
    return emulator.python_command(emulate, *python_args), emulator.python_environ(env)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def _serving(role: str, host: str, emulate: str | None, timeout: float, **kwargs) -> Iterator[tuple[str, int]]:
    """Start ``rpc_process.py role`` on a free port, wait for its ready line, kill it (and its sessions) on exit."""
    port = free_port(host)
    argv, env = serve_command(role, host, port, emulate=emulate, **kwargs)
    workdir = Path(tempfile.mkdtemp(prefix=f"rwkv-edge-rpc-{role}-"))
    log_path = workdir / "log.txt"
    env["TMPDIR"] = str(workdir)  # sessions' upload folders land here and go with it
    what = f"TVM RPC {role} ({'aarch64 ' + emulate + ' under qemu' if emulate else 'native'}) on {host}:{port}"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: sessions die with it
        try:
            _wait_ready(proc, log_path, what, timeout)
            yield host, port
        finally:
            _kill_group(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if READY in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RpcServerError(f"{what} exited with status {proc.returncode} before it listened:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RpcServerError(f"{what} did not listen within {timeout:g} s (argv: {' '.join(proc.args)}):\n"
                                 f"{_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL it if still there after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@contextmanager
def rpc_server(
    emulate: str | None = None,
    *,
    host: str = "127.0.0.1",
    tracker: tuple[str, int] | None = None,
    key: str = "",
    timeout: float | None = None,
) -> Iterator[tuple[str, int]]:
    """Run a TVM RPC server for the ``with`` block; yields (host, port).

    ``emulate``: None runs the server natively; a qemu CPU model name (``"cortex-a53"``) runs it
    as aarch64 under qemu-user (EmulationUnavailableError if that is not installed).
    ``tracker``: (host, port) of a TVM RPC tracker to register with under ``key``; the block then
    starts once the tracker lists the server. ``timeout``: seconds to wait for the start
    (RpcServerError, with the server's log, when it passes).
    """
    if timeout is None:
        timeout = EMULATED_START_TIMEOUT if emulate else NATIVE_START_TIMEOUT
    tracker_arg = None
    if tracker is not None:
        check_tracker(tracker)  # TVM would retry a refused tracker for 60 s, in the server and here
        tracker_arg = f"{tracker[0]}:{tracker[1]}"
    start = time.monotonic()
    with _serving("server", host, emulate, timeout, tracker=tracker_arg, key=key) as address:
        if tracker is not None:
            _wait_registered(tracker, key, address[1], timeout - (time.monotonic() - start))
        yield address


@contextmanager
def rpc_tracker(host: str = "127.0.0.1", timeout: float = NATIVE_START_TIMEOUT) -> Iterator[tuple[str, int]]:
    """Run a TVM RPC tracker (needs ``tornado``) for the ``with`` block; yields (host, port)."""
    with _serving("tracker", host, None, timeout) as address:
        yield address


def _wait_registered(tracker: tuple[str, int], key: str, port: int, timeout: float) -> None:
    """Wait until the tracker lists a server with ``key`` on ``port``."""
    from tvm import rpc  # noqa: PLC0415 -- heavy; only when a tracker is used

    session = rpc.connect_tracker(*tracker)
    deadline = time.monotonic() + max(timeout, 0.0)
    try:
        while True:
            servers = session.summary()["server_info"]
            if any(s.get("key") == f"server:{key}" and s["addr"][1] == port for s in servers):
                return
            if time.monotonic() > deadline:
                raise RpcServerError(f"the RPC server on port {port} did not register with the tracker at "
                                     f"{tracker[0]}:{tracker[1]} as {key!r} in time; it lists {servers}")
            time.sleep(0.1)
    finally:
        session.close()


# --- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rwkv_edge.runtime.rpc_server",
        description="Run TVM's RPC server natively or as aarch64 under qemu-user (runtime library only).",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; the server runs any code a client sends)")
    parser.add_argument("--port", type=_port, default=9090, help="TCP port, 1-65535 (default 9090)")
    parser.add_argument("--emulate-aarch64", action="store_true",
                        help="run the server as aarch64 under qemu-aarch64-static (scripts/install-arm-tools.sh)")
    parser.add_argument("--cpu", default=None,
                        help=f"qemu CPU model with --emulate-aarch64 (default {DEFAULT_CPU}; e.g. cortex-a72, "
                             "neoverse-n1, max): code using instructions it lacks dies with 'Illegal instruction'")
    parser.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker (needs --key)")
    parser.add_argument("--key", default="", help="device key the tracker hands out this server under")
    parser.add_argument("--silent", action="store_true", help="log errors only")
    return parser


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if port not in PORTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {port}")
    return port


def _is_address(text: str) -> bool:
    """Whether ``text`` is HOST:PORT with a port in 1-65535."""
    try:
        parse_address(text)
    except OptionError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tracker and not args.key:
        parser.error("--tracker needs --key (the kind of device clients request, e.g. rpi5)")
    if args.tracker and not _is_address(args.tracker):
        parser.error(f"--tracker wants HOST:PORT with a port in 1-65535, got {args.tracker!r}")
    if args.cpu and not args.emulate_aarch64:
        parser.error("--cpu picks the emulated core: it needs --emulate-aarch64")
    emulate = (args.cpu or DEFAULT_CPU) if args.emulate_aarch64 else None
    try:
        argv_, env = serve_command("server", args.host, args.port, emulate=emulate, tracker=args.tracker,
                                   key=args.key, silent=args.silent)
    except RwkvEdgeError as err:
        parser.exit(2, f"error: {err}\n")
    print(" ".join(argv_), flush=True)
    os.execve(argv_[0], argv_, env)  # the server replaces this process: signals reach it directly


if __name__ == "__main__":
    main()

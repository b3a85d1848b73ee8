"""TVM's RPC server (or tracker), run in this very process: the program the RPC launcher starts.

Run by path (``python -s -P rpc_process.py server --host ... --port ...``), not as ``-m
rwkv_edge...``: it must work inside an emulated aarch64 CPython whose only packages are TVM's
runtime wheels, so it imports nothing but the standard library and ``tvm`` (rpc_server.py imports
``READY`` from it).

Why not ``python -m tvm.exec.rpc_server``: that wraps the server in a ``PopenWorker``, which
re-executes ``sys.executable`` (and needs ``cloudpickle``). Under ``qemu-aarch64-static -L
SYSROOT`` that executable is an aarch64 ELF the host kernel runs only where binfmt_misc is
registered. The function the worker would run, ``tvm.rpc.server._popen_start_rpc_server``, is
called here directly instead; TVM still forks one process per client session (``multiprocessing``
with the fork start method), which qemu-user handles. The tracker is started the same way
(``tvm.rpc.tracker._popen_start_tracker_server``; it needs ``tornado``).
"""

from __future__ import annotations

import argparse
import sys

READY = "rwkv-edge rpc ready on"  # the launcher waits for this line: "<READY> HOST:PORT"


def serve(host: str, port: int, port_end: int, tracker: str | None, key: str, silent: bool) -> None:
    """Bind an RPC server, print the ready line, and serve (one session at a time) until killed."""
    from tvm.rpc import server  # noqa: PLC0415 -- 1-10 s; import after the arguments are checked

    tracker_addr = None
    if tracker:
        tracker_host, tracker_port = tracker.rsplit(":", 1)
        tracker_addr = (tracker_host, int(tracker_port))
    bound = server._popen_start_rpc_server(  # noqa: SLF001 -- see the module docstring
        host, port, port_end, tracker_addr=tracker_addr, key=key, silent=silent
    )
    print(f"{READY} {host}:{bound}", flush=True)
    server.PopenRPCServerState.current.thread.join()


def track(host: str, port: int, port_end: int, silent: bool) -> None:
    """Bind an RPC tracker, print the ready line, and run until killed."""
    from tvm.rpc import tracker  # noqa: PLC0415

    bound, _stop_key = tracker._popen_start_tracker_server(host, port, port_end, silent)  # noqa: SLF001
    print(f"{READY} {host}:{bound}", flush=True)
    tracker.PopenTrackerServerState.current.thread.join()


def _bounded(low: int, high: int):
    """An argparse type: an integer in [low, high] (ports; rpc_client.PORTS, which this file cannot import)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _address(text: str) -> str:
    """An argparse type: HOST:PORT, the port in 1-65535."""
    host, _, port = text.rpartition(":")
    digits = port.lstrip("0")
    if not host or not (port.isascii() and port.isdigit()) or len(digits) > 5 or not 1 <= int(digits or "0") <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1-65535, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["server", "tracker"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_bounded(1, 65535), required=True)
    parser.add_argument("--port-end", type=_bounded(2, 65536), default=None,
                        help="first port not to try (default: port + 1)")
    parser.add_argument("--tracker", type=_address, default=None,
                        help="server: HOST:PORT of a TVM RPC tracker to register with")
    parser.add_argument("--key", default="", help="server: device key announced to the tracker")
    parser.add_argument("--silent", action="store_true", help="log errors only")
    args = parser.parse_args(argv)
    port_end = args.port + 1 if args.port_end is None else args.port_end
    if args.role == "tracker":
        track(args.host, args.port, port_end, args.silent)
    else:
        serve(args.host, args.port, port_end, args.tracker, args.key, args.silent)


if __name__ == "__main__":
    sys.exit(main())

"""TVM RPC end to end: a Relax module built here runs over RPC on a native and an emulated aarch64
server (TVM's own server, runtime library only) and matches the local VM and numpy."""

from __future__ import annotations

import gc
import platform
import shutil
import socket
import time

import numpy as np
import pytest
import tvm
from tvm import relax

from rwkv_edge.errors import OptionError
from rwkv_edge.runtime import rpc_client
from rwkv_edge.runtime.rpc_client import Remote, RpcConnectError, connect
from rwkv_edge.runtime.rpc_server import (
    EmulationUnavailableError,
    RpcServerError,
    build_parser,
    emulation_unavailable_reason,
    find_aarch64_emulator,
    main,
    rpc_server,
    rpc_tracker,
    serve_command,
)

CPU = "cortex-a53"  # the emulated core: ARMv8.0-A + NEON, what the aarch64 build below asks for
EMULATION = emulation_unavailable_reason()
needs_emulation = pytest.mark.skipif(EMULATION is not None, reason=f"no aarch64 emulation: {EMULATION}")
SHAPES = {"x": (1, 8), "w1": (8, 16), "w2": (16, 4)}


def mlp() -> tvm.IRModule:
    """main(x, w1, w2) -> (relu(x @ w1) @ w2, relu(x @ w1)): a tuple, the awkward case over RPC."""
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in SHAPES.items()]
    x, w1, w2 = params
    with bb.function("main", params):
        with bb.dataflow():
            hidden = bb.emit(relax.op.nn.relu(relax.op.matmul(x, w1)))  # (1, 16)
            y = bb.emit(relax.op.matmul(hidden, w2))  # (1, 4)
            out = bb.emit_output(relax.Tuple([y, hidden]))
        bb.emit_func_output(out)
    return bb.get()


def build(target: tvm.target.Target):
    with target:
        mod = relax.get_pipeline("zero")(mlp())
    return tvm.compile(mod, target)


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES.values()]


@pytest.fixture(scope="module")
def expected(inputs) -> tuple[np.ndarray, np.ndarray]:
    x, w1, w2 = inputs
    hidden = np.maximum(x @ w1, 0)
    return hidden @ w2, hidden


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    """(library path, executable) for this machine."""
    ex = build(tvm.target.Target({"kind": "llvm"}))
    path = tmp_path_factory.mktemp("rpc") / f"mlp_{platform.machine()}.so"
    ex.export_library(str(path))
    return path, ex


@pytest.fixture(scope="module")
def aarch64_library(tmp_path_factory):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is missing (Debian gcc-aarch64-linux-gnu; scripts/install-arm-tools.sh)")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2})
    path = tmp_path_factory.mktemp("rpc") / "mlp_aarch64.so"
    build(target).export_library(str(path), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc"))
    assert path.read_bytes()[18] == 183  # e_machine EM_AARCH64
    return path


def run_vm(vm, device, inputs) -> list[np.ndarray]:
    # Over RPC a tuple returned by vm["main"](...) is an RPCObjectRef that cannot be indexed.
    vm.set_input("main", *[tvm.runtime.tensor(a, device) for a in inputs])
    vm.invoke_stateful("main")
    return [out.numpy() for out in vm.get_outputs("main")]


def run_remote(remote, library, inputs) -> list[np.ndarray]:
    """Upload ``library`` and run main through the Relax VM on the remote CPU."""
    remote.upload(str(library))
    vm = relax.VirtualMachine(remote.load_module(library.name), remote.cpu())
    outputs = run_vm(vm, remote.cpu(), inputs)
    # VirtualMachine.get_outputs leaves a reference cycle (a self-recursive closure) that keeps the
    # VM, its remote module and so the RPC session alive until the collector runs; TVM's server
    # serves one session at a time, so the next client would wait for it.
    del vm
    gc.collect()
    return outputs


def assert_outputs(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def native_server():
    with rpc_server() as address:
        yield address


@pytest.fixture(scope="module")
def emulated_server():
    if EMULATION is not None:
        pytest.skip(f"no aarch64 emulation: {EMULATION}")
    with rpc_server(emulate=CPU) as address:
        yield address


def test_native_server_runs_relax_vm_like_local(native_server, host_build, inputs, expected):
    path, ex = host_build
    local = run_vm(relax.VirtualMachine(ex, tvm.cpu()), tvm.cpu(), inputs)
    remote = run_remote(connect(*native_server, session_timeout=120), path, inputs)
    assert_outputs(local, expected)
    for got, want in zip(remote, local, strict=True):  # same code on the same machine: bit for bit
        np.testing.assert_array_equal(got, want)


@needs_emulation
def test_emulated_aarch64_server_runs_cross_compiled_module(emulated_server, aarch64_library, inputs, expected):
    remote = run_remote(connect(*emulated_server, session_timeout=120), aarch64_library, inputs)
    assert_outputs(remote, expected)


@needs_emulation
@pytest.mark.skipif(platform.machine() != "x86_64", reason="needs a host whose own libraries are not aarch64")
def test_emulated_server_is_really_aarch64(emulated_server, host_build):
    """The x86-64 library does not load there: the server is no native process in disguise."""
    remote = connect(*emulated_server, session_timeout=120)
    remote.upload(str(host_build[0]))
    with pytest.raises(tvm.error.RPCError, match="Failed to load dynamic shared library"):
        remote.load_module(host_build[0].name)


@needs_emulation
def test_emulator_paths_are_the_installed_layout():
    emulator = find_aarch64_emulator()
    assert emulator.python.is_file()
    assert (emulator.site / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert (emulator.site / "tvm_ffi" / "lib" / "libtvm_ffi.so").is_file()
    argv = emulator.python_command(CPU, "-c", "pass")
    assert argv[0].endswith(emulator.qemu) and argv[1:3] == ["-cpu", CPU] and argv[-2:] == ["-c", "pass"]


@needs_emulation
def test_unknown_emulated_cpu_is_reported_with_qemus_words():
    with pytest.raises(RpcServerError, match="(?s)exited with status.*no-such-cpu"):
        with rpc_server(emulate="no-such-cpu"):
            pass


def test_missing_arm_root_says_what_installs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_EDGE_ARM_ROOT", str(tmp_path / "nothing-here"))
    reason = emulation_unavailable_reason()
    assert reason is not None and "install-arm-tools.sh" in reason
    with pytest.raises(EmulationUnavailableError, match="install-arm-tools.sh"):
        with rpc_server(emulate=CPU):
            pass


def test_tracker_hands_out_a_server_by_key(host_build, inputs, expected):
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
    with rpc_tracker() as tracker, rpc_server(tracker=tracker, key="rwkv-edge-test"):
        session = tvm.rpc.connect_tracker(*tracker)
        try:
            assert "server:rwkv-edge-test" in session.text_summary()
            remote = session.request("rwkv-edge-test", session_timeout=120, max_retry=1)
            assert_outputs(run_remote(remote, host_build[0], inputs), expected)
        finally:
            session.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_to_closed_port_fails_fast_and_says_so():
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(RpcConnectError, match=f"no TVM RPC server at 127.0.0.1:{port}"):
        connect("127.0.0.1", port, timeout=10)
    assert time.monotonic() - start < 2  # TVM does not retry a refused connection


def test_server_for_a_missing_tracker_fails_fast():
    """tvm.rpc.connect_tracker would retry a refused tracker for 60 s."""
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(RpcConnectError, match=f"no TVM RPC tracker at 127.0.0.1:{port}"):
        with rpc_server(tracker=("127.0.0.1", port), key="nobody"):
            pass
    assert time.monotonic() - start < 2


def test_connect_to_silent_listener_times_out():
    """tvm.rpc.connect alone would wait forever for the handshake here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        start = time.monotonic()
        with pytest.raises(RpcConnectError, match="no TVM RPC handshake"):
            connect("127.0.0.1", sock.getsockname()[1], timeout=0.5)
        assert time.monotonic() - start < 2


def test_server_that_cannot_start_in_time_is_reported_and_stopped():
    with pytest.raises(RpcServerError, match=r"did not listen within 0\.01 s"):
        with rpc_server(timeout=0.01):
            pass


@pytest.mark.parametrize(("argv", "message"), [
    (["--tracker", "127.0.0.1:9190"], "--tracker needs --key"),
    (["--tracker", "9190", "--key", "rpi5"], "--tracker wants HOST:PORT"),
    (["--cpu", "cortex-a72"], "--cpu picks the emulated core: it needs --emulate-aarch64"),
])
def test_command_line_refuses_incomplete_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "argument --port: must be between 1 and 65535, got 70000"),
    (["--port", "0"], "argument --port: must be between 1 and 65535, got 0"),
    (["--port", "-1"], "argument --port: must be between 1 and 65535, got -1"),
    (["--tracker", "127.0.0.1:70000", "--key", "rpi5"], "--tracker wants HOST:PORT with a port in 1-65535, got"),
    (["--tracker", "127.0.0.1:", "--key", "rpi5"], "--tracker wants HOST:PORT"),
])
def test_command_line_refuses_ports_outside_the_range_with_its_usage(argv, message, capsys, monkeypatch):
    """`--port 70000` once reached TVM and ended in an OverflowError traceback."""
    monkeypatch.setattr("os.execve", lambda *args: pytest.fail(f"started a server for {argv}"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" in err and message in err, err


@pytest.mark.parametrize("argv", [["server", "--port", "70000"], ["server", "--port", "9090", "--port-end", "70000"],
                                  ["server", "--port", "9090", "--tracker", "127.0.0.1:99999", "--key", "k"]])
def test_the_server_process_refuses_ports_outside_the_range(argv, capsys, monkeypatch):
    from rwkv_edge.runtime import rpc_process

    monkeypatch.setattr(rpc_process, "serve", lambda *args: pytest.fail(f"served {argv}"))
    with pytest.raises(SystemExit) as exit_:
        rpc_process.main(argv)
    assert exit_.value.code == 2 and "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("address,message", [
    ("127.0.0.1:99999", "port 99999 in '127.0.0.1:99999' is outside 1-65535"), ("host:0", "port 0 in"),
    ("host:65536", "port 65536 in"), ("host:-1", "expected HOST:PORT"), ("9090", "expected HOST:PORT"),
    (":9090", "expected HOST:PORT"), ("host:" + "9" * 5000, "is outside 1-65535"),
])
def test_library_addresses_outside_the_port_range_are_option_errors(address, message):
    """``Remote("127.0.0.1:99999")`` once connected to port 34463 (TVM wrapped it)."""
    with pytest.raises(OptionError, match=message):
        Remote(address)
    with pytest.raises(OptionError, match=message):
        rpc_client.parse_address(address)
    with pytest.raises(OptionError, match="outside 1-65535"):
        serve_command("server", "127.0.0.1", 70000)
    with pytest.raises(OptionError, match=message):
        serve_command("server", "127.0.0.1", 9090, tracker=address, key="k")
    assert rpc_client.parse_address("127.0.0.1:65535") == ("127.0.0.1", 65535)
    assert Remote("host:1").host_port() == ("host", 1)


def test_command_line_binds_to_loopback_by_default():
    assert build_parser().parse_args([]).host == "127.0.0.1"

"""The native runtime (``runtime/cpp``): build it for x86-64 or aarch64, run a bundle with its programs.

``build_native(arch)`` configures and builds ``librwkv_edge.so`` / ``librwkv_edge.a`` (the C
interface of ``runtime/cpp/include/rwkv_edge.h``), ``rwkv-edge-run`` and ``rwkv-edge-runner`` with
CMake against the TVM runtime libraries of that architecture (the installed apache-tvm / apache-tvm-ffi wheels for the
host; for aarch64 on an x86-64 host, the aarch64 wheels that ``scripts/install-arm-tools.sh``
unpacks into ``$RWKV_EDGE_ARM_ROOT/site``); ``build_runner(arch)`` is its runner. ``run_program``
runs one of the programs on a bundle, natively or under qemu. ``run_bundle`` checks a TVM bundle against its manifest,
runs its tokens through the runner, natively or under ``qemu-aarch64-static -cpu <core>``, and reads
back the logits, the final state and the step times. The runner checks the bundle again itself (the
same rules, ``runtime/cpp/bundle_reader.h``), pinned to the manifest checked here. Nothing here
imports TVM.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, OptionError, PlatformError, ToolError
from ..platforms import EMULATIONS, INSTALL_SCRIPT, arm_root, emulation, host_arch
from ..artifact import open_artifact
from ..artifact.files import LIBRARY
from .backend import NamedState, check_named_state, check_token_ids

SOURCES = Path(__file__).parent / "cpp"
INCLUDE = SOURCES / "include"  # rwkv_edge.h
RUNNER = "rwkv-edge-runner"
RUN = "rwkv-edge-run"
LIBRARY_NAME = "librwkv_edge"
STAMP = "sources.sha256"  # written last into a finished build directory
ARCHES = ("x86_64", "aarch64")  # target-triple spelling


@dataclass(frozen=True)
class NativeBuild:
    """The files of one build of the native runtime."""

    arch: str
    shared_library: Path  # librwkv_edge.so: the C interface, nothing else exported
    static_library: Path  # librwkv_edge.a
    run: Path  # rwkv-edge-run
    runner: Path  # rwkv-edge-runner
    include: Path  # the folder holding rwkv_edge.h
    library_dirs: tuple[Path, ...]  # the TVM runtime libraries it links (libtvm_runtime.so, libtvm_ffi.so)


@dataclass(frozen=True)
class RunnerResult:
    """What one run of the native runner produced."""

    logits: np.ndarray  # (T, V) float32, after each token; with ``prefill``: (1, V), after the last
    state: dict[str, np.ndarray]  # manifest output names ("state_out.0.wkv") -> final state, no batch axis
    step_ms: np.ndarray  # (calls,) wall time of each call (T steps, or the prefill calls then the steps); the first includes warm-up
    decode_ms: np.ndarray  # (repeat,) wall time of each extra greedy decode step
    command: list[str]  # the command that ran (qemu and its -cpu included)
    stdout: str  # the runner's per-step lines and summary


def runner_unavailable(arch: str) -> str | None:
    """Why a runner for ``arch`` cannot be built and run on this machine, or None when it can.

    Names the missing tool and what installs it; the test suite uses it as its skip reason.
    """
    _check_arch(arch)
    host = host_arch()
    native, emulated = arch == host, emulation(arch)
    if not native and emulated is None:
        return f"{arch} code runs neither natively nor under emulation on this {host} machine"
    problems = []
    if shutil.which("cmake") is None:
        problems.append("cmake is not installed (apt-get install cmake)")
    hint = f" (or run {INSTALL_SCRIPT})"
    if native and shutil.which("g++") is None and shutil.which("c++") is None:
        problems.append("no C++ compiler (apt-get install g++)")
    if emulated is not None:
        e = emulated
        if shutil.which(e.compiler) is None:
            problems.append(f"{e.compiler} is not installed (apt-get install {e.compiler_package}){hint}")
        if shutil.which(e.qemu) is None:
            problems.append(f"{e.qemu} is not installed (apt-get install {e.qemu_package}){hint}")
    try:
        _tvm_dirs(arch)
    except ToolError as e:
        problems.append(str(e))
    return "; ".join(problems) or None


def build_native(arch: str | None = None, build_dir: str | Path | None = None,
                 log: Callable[[str], None] = print) -> NativeBuild:
    """Build the native runtime for ``arch`` (default: this machine's): the libraries and both programs.

    The build lives in ``build_dir`` (default ``~/.cache/rwkv-edge/native-{arch}``) and is reused
    while the sources, the toolchain and the TVM libraries it was built against hash the same.
    """
    arch = arch or host_arch()
    reason = runner_unavailable(arch)
    if reason:
        raise ToolError(f"cannot build the native runtime ({LIBRARY_NAME}, {RUN}, {RUNNER}) for {arch}: {reason}")
    build_dir = Path(build_dir) if build_dir else _cache_root() / f"native-{arch}"
    includes, libs = _tvm_dirs(arch)
    build = NativeBuild(arch=arch, shared_library=build_dir / f"{LIBRARY_NAME}.so",
                        static_library=build_dir / f"{LIBRARY_NAME}.a", run=build_dir / RUN, runner=build_dir / RUNNER,
                        include=INCLUDE, library_dirs=tuple(libs))
    cross = emulation(arch)
    options = [f"-DTVM_INCLUDE_DIRS={includes}", f"-DTVM_LIB_DIRS={';'.join(map(str, libs))}"]
    if cross:
        options.append(f"-DCMAKE_TOOLCHAIN_FILE={SOURCES / cross.toolchain_file}")
    key = _build_key(options, libs)
    stamp = build_dir / STAMP
    outputs = (build.shared_library, build.static_library, build.run, build.runner)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f".{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rwkv-edge process building the same folder: wait for it
        if all(p.is_file() for p in outputs) and stamp.is_file() and stamp.read_text().strip() == key:
            return build
        log(f"building the native runtime for {arch}{' (cross-compiled)' if cross else ''} in {build_dir}")
        log(f"  TVM headers {includes}; libraries {', '.join(map(str, libs))}")
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run_tool(["cmake", "-S", str(SOURCES), "-B", str(build_dir), *generator, *options], "cmake configure")
        _run_tool(["cmake", "--build", str(build_dir), "--parallel", "2"], "cmake build")
        stamp.write_text(key + "\n")
    log(f"  built {', '.join(p.name for p in outputs)}")
    return build


def build_runner(arch: str | None = None, build_dir: str | Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """``rwkv-edge-runner`` of ``build_native(arch, build_dir)``: the binary's path."""
    return build_native(arch, build_dir, log).runner


def run_program(bundle_dir: str | Path, args: list[str], arch: str | None = None, program: str = RUN,
                emulate_cpu: str | None = None, stdin: str | None = None, build: NativeBuild | None = None,
                log: Callable[[str], None] = print) -> subprocess.CompletedProcess:
    """Run ``program`` (``rwkv-edge-run`` or ``rwkv-edge-runner``) of the native build for ``arch``
    (default: this machine's) on ``bundle_dir`` with ``args``: natively, or under qemu with ``-cpu``
    ``emulate_cpu`` (default cortex-a53). ``stdin`` is its standard input. Returns the finished process
    (its output decoded as UTF-8, undecodable bytes as surrogates; its exit status is not checked). Nothing is checked here: the programs check the bundle.
    """
    arch = arch or host_arch()
    _check_arch(arch)
    build = build or build_native(arch, log=log)
    binary = {RUN: build.run, RUNNER: build.runner}.get(program)
    if binary is None:
        raise OptionError(f"unknown program {program!r}; expected {RUN} or {RUNNER}")
    prefix: list[str] = []
    if arch != host_arch():
        emulated = emulation(arch)
        if emulated is None:
            raise PlatformError(f"{arch} programs run neither natively nor under emulation on this {host_arch()} machine")
        prefix = emulated.program(emulate_cpu or "cortex-a53")
    elif emulate_cpu:
        raise OptionError(f"{arch} programs run natively on this machine; emulate_cpu applies under qemu only")
    return subprocess.run([*prefix, str(binary), str(bundle_dir), *args], capture_output=True, encoding="utf-8",
                          errors="surrogateescape", input=stdin, env=_runner_env(arch))


def run_bundle(bundle_dir: str | Path, tokens: list[int], emulate_cpu: str | None = None, repeat: int = 0,
               state: NamedState | None = None, runner: str | Path | None = None, prefill: bool = False,
               expect_sha256: str | None = None, log: Callable[[str], None] = print) -> RunnerResult:
    """Run ``tokens`` through the TVM bundle in ``bundle_dir`` with the native runner.

    The bundle's files must hash as its manifest says, and the manifest as ``expect_sha256`` says where
    given; the runner, which checks the bundle again itself, is pinned (``--expect-sha256``) to the
    manifest checked here, so a manifest swapped between the two checks fails before any code loads.
    An aarch64 bundle on an x86-64 host runs under qemu with ``-cpu`` = ``emulate_cpu`` or the target's
    ``qemu_cpu``. ``state`` (contract input names) replaces the bundle's initial state; ``repeat`` times
    that many extra decode steps.
    ``prefill``: the tokens are a prompt, run as ``TvmBackend.prefill`` runs it (whole chunks through the
    bundle's prefill function, the rest by steps); the logits are then those after the last token only.
    ``runner`` is a prebuilt binary for the bundle's architecture (default: ``build_runner``).
    """
    bundle_dir = Path(bundle_dir)
    artifact = open_artifact(bundle_dir, kind="tvm", expect_sha256=expect_sha256)
    manifest = artifact.manifest
    if not tokens:
        raise OptionError("the runner needs at least one token")
    if repeat < 0:
        raise OptionError(f"repeat must be >= 0, got {repeat}")
    check_token_ids(list(tokens), manifest.vocab_size)  # the runner checks them against the library's range too
    arch, prefix = _launcher(bundle_dir, manifest.target, emulate_cpu)
    if LIBRARY not in manifest.files:
        raise ArtifactError(f"{bundle_dir}: holds no linked {LIBRARY} (files: {', '.join(manifest.files)}); "
                            "link it for the target first")
    binary = Path(runner) if runner else build_runner(arch, log=log)
    with tempfile.TemporaryDirectory(prefix="rwkv-edge-runner-") as tmp:
        out = Path(tmp) / "out"
        command = [*prefix, str(binary), str(bundle_dir), "--tokens", ",".join(map(str, tokens)), "--out", str(out),
                   "--expect-sha256", artifact.manifest_sha256]
        if repeat:
            command += ["--repeat", str(repeat)]
        if prefill:
            command.append("--prefill")
        if state is not None:
            check_named_state(state, manifest.state)
            state_dir = Path(tmp) / "state-in"
            state_dir.mkdir()
            for i, t in enumerate(manifest.state):
                np.save(state_dir / f"state_{i}.npy", np.ascontiguousarray(state[t.input_name], dtype=np.float32))
            command += ["--state-in", str(state_dir)]
        done = subprocess.run(command, capture_output=True, text=True, env=_runner_env(arch))
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise ToolError(f"{RUNNER} failed (exit {done.returncode}) on {bundle_dir}: {lines[-1]}")
        times = np.load(out / "step_ms.npy")
        chunk = manifest.graphs["prefill"].chunk if prefill and "prefill" in manifest.graphs else 0
        calls = len(tokens) // chunk + len(tokens) % chunk if chunk else len(tokens)
        return RunnerResult(
            logits=np.load(out / "logits.npy"),
            state={t.output_name: np.load(out / f"state_{i}.npy").reshape(t.shape)
                   for i, t in enumerate(manifest.state)},
            step_ms=times[:calls],
            decode_ms=times[calls:],
            command=command,
            stdout=done.stdout,
        )


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise OptionError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}")


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rwkv-edge"


def _tvm_dirs(arch: str) -> tuple[Path, list[Path]]:
    """(tvm-ffi include folder, [folder of libtvm_runtime.so, folder of libtvm_ffi.so]) for ``arch``."""
    if arch == host_arch():
        specs = {name: importlib.util.find_spec(name) for name in ("tvm", "tvm_ffi")}  # finds, does not import
        missing = [name for name, spec in specs.items() if spec is None or not spec.submodule_search_locations]
        if missing:
            raise ToolError(f"the TVM runtime is not installed ({', '.join(missing)} missing): "
                            "pip install -c constraints.txt apache-tvm apache-tvm-ffi")
        tvm, ffi = (Path(specs[name].submodule_search_locations[0]) for name in ("tvm", "tvm_ffi"))
        hint = "reinstall apache-tvm and apache-tvm-ffi"
    else:
        site = arm_root() / "site"
        tvm, ffi = site / "tvm", site / "tvm_ffi"
        hint = f"run {INSTALL_SCRIPT} (aarch64 wheels of apache-tvm and apache-tvm-ffi, unpacked into {site})"
    needed = [ffi / "include" / "tvm" / "ffi" / "extra" / "module.h", tvm / "lib" / "libtvm_runtime.so",
              ffi / "lib" / "libtvm_ffi.so"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ToolError(f"{arch} TVM runtime files are missing ({', '.join(missing)}): {hint}")
    return ffi / "include", [tvm / "lib", ffi / "lib"]


def _build_key(options: list[str], libs: list[Path]) -> str:
    """sha256 over the sources (runtime/cpp and its include/), the CMake options and the libraries it links."""
    h = hashlib.sha256()
    for path in sorted([*SOURCES.iterdir(), *INCLUDE.iterdir()]):
        if path.is_file() and path.suffix in (".cc", ".h", ".txt", ".cmake"):
            h.update(str(path.relative_to(SOURCES)).encode() + b"\0" + path.read_bytes())
    h.update("\0".join(options).encode())
    for lib in (libs[0] / "libtvm_runtime.so", libs[1] / "libtvm_ffi.so"):
        st = lib.stat()
        h.update(f"{lib}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _run_tool(command: list[str], what: str) -> None:
    """Run a build step; its output is shown only when it fails."""
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        tail = "\n".join((e.stdout + e.stderr).strip().splitlines()[-20:])
        raise ToolError(f"{what} of the native runtime failed (exit {e.returncode}): {' '.join(command)}\n{tail}") from None


def _launcher(bundle_dir: Path, target: dict, emulate_cpu: str | None) -> tuple[str, list[str]]:
    """(the bundle's architecture, the command prefix that runs its code here: [] or qemu ...)."""
    triple = target.triple
    arch, host = triple.split("-")[0], host_arch()
    linux_gnu = triple == f"{arch}-linux-gnu"  # the runner is a glibc program (Android would need the NDK)
    if linux_gnu and arch == host:
        if emulate_cpu:
            raise OptionError(f"{bundle_dir} runs natively on this {host} machine; emulate_cpu applies under qemu only")
        return arch, []
    emulated = emulation(arch) if linux_gnu else None
    if emulated is None:
        runs = [f"{host}-linux-gnu natively"] + [f"{b}-linux-gnu under qemu" for h, b in EMULATIONS if h == host]
        raise PlatformError(f"{bundle_dir}: compiled for {triple}; this {host} machine runs bundles for "
                            f"{' and '.join(runs)}")
    return arch, emulated.program(emulate_cpu or target.qemu_cpu)


def _runner_env(arch: str) -> dict[str, str]:
    """The environment of the runner: its TVM libraries first on the library path (the rpath has them too)."""
    env = dict(os.environ)
    libs = os.pathsep.join(str(p) for p in _tvm_dirs(arch)[1])
    env["LD_LIBRARY_PATH"] = libs + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env

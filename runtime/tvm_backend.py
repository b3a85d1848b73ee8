"""A TVM bundle behind the step contract, or an image bundle's runner: on this machine (CPU or GPU), or on a
board through TVM's RPC server. Both load the library through ``LoadedLibrary``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..artifact import Artifact, Manifest, open_artifact
from ..artifact.files import CUDA_SOURCE, FATBIN, LIBRARY
from ..artifact.interface import GraphInterface, check_interface, parse_interface
from ..artifact.params import map_params
from ..errors import ArtifactError, PlatformError, StateError, ToolError, one_line
from ..platforms import gpu_unavailable, host_triple
from ..contract import IMAGE_GRAPH, StateTensor
from .backend import NamedState, check_named_state, check_token_ids, no_prefill_graph, prefill_in_chunks
from .rpc_client import Remote, open_session

_PREBUILT_CUDA: dict[str, bytes] = {}  # sha256 of a CUDA bundle's kernels.cu -> its fatbin, for TVM's compile callback


class DeviceTensor:
    """A state tensor that stays on the GPU between steps; numpy on demand (``np.asarray``), batch axis hidden."""

    dtype = np.dtype(np.float32)

    def __init__(self, tensor) -> None:
        self.tensor = tensor  # (1, ...) on the device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.tensor.numpy()[0]
        return array if dtype is None else array.astype(dtype)


class TvmBackend:
    """``model.so`` of a bundle made by ``rwkv-edge compile --target <cpu|gpu>``, run by the Relax VM.

    The weights (params.safetensors) are mapped, not read: on this machine's CPU the library runs on
    views of the mapping; a GPU or a remote device gets one copy, uploaded at load. On a GPU the
    state stays there between steps (``DeviceTensor`` values); ``sync()`` waits for the GPU."""

    name = "tvm"

    def __init__(self, artifact: Artifact | str | Path, remote: Remote | None = None) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, kind="tvm")
        self.directory = self.artifact.directory
        self.manifest: Manifest = self.artifact.manifest
        self.device_kind = self.manifest.target.device
        self.spec: list[StateTensor] = self.manifest.state
        self.remote = remote
        self.library = self._library()
        self.where = self._where()
        import tvm

        self.runs_on = f"TVM {tvm.__version__} Relax VM on {self.where}"
        self.loaded = LoadedLibrary(self.artifact, self.library, "step", self.device_kind, remote)
        self.vocab_size = self.loaded.interface.vocab_size  # the token range, from the library (its embedding's rows)
        if self.vocab_size is None:
            raise ArtifactError(f"{self.library}: its interface() gives no token range: not a step library")
        self._initial = self._initial_state()
        prefill = self.manifest.graphs.get("prefill")
        self.chunk = prefill.chunk if prefill is not None else 0  # 0: prompts run one step per token

    def state_spec(self) -> list[StateTensor]:
        return self.spec

    def init_state(self) -> NamedState:
        return {k: v.copy() for k, v in self._initial.items()}

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids([token], self.vocab_size)  # compiled gathers read out of bounds otherwise
        check_named_state(state, self.spec)
        logits, *new_state = self.loaded.call("main", self._arguments(token, state))
        if self.device_kind != "cpu" and self.remote is None:
            return _numpy(logits)[0], {t.input_name: DeviceTensor(s) for t, s in zip(self.spec, new_state)}
        return self._array(logits)[0], {t.input_name: self._array(s)[0] for t, s in zip(self.spec, new_state)}

    def sync(self) -> None:
        """Wait until the device has finished what was launched (GPU kernels run asynchronously)."""
        self.loaded.device.sync()

    def time_decode(self, repeat: int = 20, number: int = 5) -> list[float]:
        """Milliseconds per decode step, measured where the library runs (on the device, over RPC)
        by TVM's time_evaluator: ``repeat`` figures, each the mean of ``number`` calls after a warm-up."""
        vm = self.loaded.vm
        vm.set_input("main", *self._arguments(1, self.init_state()))
        timer = vm.time_evaluator("invoke_stateful", self.loaded.device, number=number, repeat=repeat)
        return [float(seconds) * 1e3 for seconds in timer("main").results]

    def _arguments(self, token: int | list[int], state: NamedState) -> list:
        """``main``'s inputs: token (1,) int64 (``prefill``'s: tokens (1, T)), every state tensor with its
        batch axis in manifest order, then the weights."""
        tokens = np.array([token], dtype=np.int64)
        args = [self._tensor(tokens)]
        for t in self.spec:
            value = state[t.input_name]
            resident = isinstance(value, DeviceTensor) and value.tensor.device == self.loaded.device
            args.append(value.tensor if resident else self._tensor(np.asarray(value, dtype=np.float32)[None]))
        return args + self.loaded.params

    def _tensor(self, array: np.ndarray):
        """numpy -> TVM; on this machine without a copy where the array allows it (a state this
        backend returned: TVM's own 64-byte-aligned memory), which halves a small model's step."""
        import tvm

        if self.device_kind == "cpu" and self.remote is None and array.flags.c_contiguous and array.ctypes.data % 64 == 0:
            return tvm.runtime.from_dlpack(array)
        return tvm.runtime.tensor(np.ascontiguousarray(array), self.loaded.device)

    def _array(self, value) -> np.ndarray:
        """TVM -> numpy: a view of the VM's fresh output here, a copy from a remote device."""
        return np.from_dlpack(value) if self.remote is None else _numpy(value)

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Whole chunks through ``prefill`` where the bundle has it, the rest one step at a time."""
        return prefill_in_chunks(self, tokens, state)

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """One call of the library's ``prefill``: exactly ``chunk`` tokens; logits (V,) or (T, V), and the state."""
        if not self.chunk:
            raise no_prefill_graph(self)
        if isinstance(tokens, (str, bytes)) or len(tokens) != self.chunk:
            raise StateError(f"this bundle's prefill function takes exactly {self.chunk} tokens")
        check_token_ids(tokens, self.vocab_size)
        check_named_state(state, self.spec)
        logits, *new_state = self.loaded.call("prefill", self._arguments(list(tokens), state))
        return self._array(logits)[0], {t.input_name: self._array(s)[0] for t, s in zip(self.spec, new_state)}

    def _initial_state(self) -> NamedState:
        """``initial_state()`` of the library, checked against the manifest's state spec."""
        values = [_numpy(v) for v in self.loaded.call("initial_state", [])]
        shapes = [tuple(v.shape) for v in values]
        if shapes != [(1, *t.shape) for t in self.spec]:
            raise ArtifactError(f"{self.library}: its state ({len(values)} tensors) is not the one the manifest lists "
                                f"({len(self.spec)}): the library belongs to another model")
        return {t.input_name: v[0] for t, v in zip(self.spec, values)}

    def _where(self) -> str:
        triple = self.manifest.target.triple
        if self.remote is not None:
            return f"{self.remote.describe()} ({triple})"
        if self.device_kind != "cpu":
            arch = self.manifest.target.arch
            why = gpu_unavailable(self.device_kind, arch, triple)
            if why is not None:
                raise PlatformError(f"{self.directory} ({self.manifest.target.name} bundle, "
                                    f"{self.device_kind}{' ' + arch if arch else ''}): {why}")
            return f"this machine's {self.device_kind} GPU ({triple} host)"
        here = host_triple()
        if here != triple:
            raise PlatformError(f"{self.directory} was built for {triple} ({self.manifest.target.name}); this "
                                f"machine is {here}: run it on a {triple} device with `rwkv-edge verify "
                                f"{self.directory} --rpc HOST:PORT` (start the server there with `python -m "
                                f"rwkv_edge.runtime.rpc_server --host 0.0.0.0 --port 9090`; emulated here: add "
                                f"--emulate-aarch64, docs/tvm.md)")
        return f"this machine ({triple})"

    def _library(self) -> Path:
        """model.so; for Apple bundles the one linked on the Mac from model.tar (docs/tvm-gpu.md)."""
        name = self.manifest.graphs["step"].file
        if self.manifest.target.linked:
            return self.artifact.path(name)
        linked = self.directory / LIBRARY  # linked on the Mac beside the bundle: not covered by the manifest
        if self.device_kind == "metal" and (linked.is_file() or platform.system() != "Darwin"):
            return linked  # off a Mac, _where says where it runs
        raise PlatformError(f"{self.directory}: holds unlinked objects ({name}); "
                            f"{self.manifest.target.name} bundles need their final link first"
                            + (" (on the Mac: link model.tar into model.so, docs/tvm-gpu.md)"
                               if self.device_kind == "metal" else ""))

    def close(self) -> None:
        """Release the library (and the RPC session: a TVM server serves one session at a time)."""
        self.loaded.close()


class LoadedLibrary:
    """A bundle's library loaded where it runs: on this machine's ``device_kind`` (CPU or GPU), or on
    the device behind ``remote``; its ``interface()`` checked against the manifest, and the weights
    ``role``'s functions take after their inputs, from the mapped params file: views of the mapping
    on this machine's CPU (no copy; TVM's from_dlpack checks the 64-byte alignment), one copy on a
    GPU or a remote device. What the step backend and the image runner share."""

    def __init__(self, artifact: Artifact, library: Path, role: str, device_kind: str, remote: Remote | None) -> None:
        import tvm

        self.remote, self.session = remote, None
        data = library_bytes(artifact, library)
        if remote is None:
            if device_kind == "cuda":
                _register_fatbin(artifact)
            self.device = tvm.device(device_kind)
            self.vm = load_library(data, library, self.device)
        else:
            self.session = open_session(remote)  # kept alive as long as the VM
            self.device = self.session.device(device_kind)
            self.vm = upload_library(self.session, data, library, remote, self.device)
        self.interface = library_interface(self.call, library, artifact.manifest)
        mapped = map_params(artifact.path(artifact.manifest.graphs[role].params), self.interface.weights)
        here = device_kind == "cpu" and remote is None
        self.params = [tvm.runtime.from_dlpack(v) if here else tvm.runtime.tensor(v, self.device) for v in mapped]

    def call(self, function: str, args: list):
        """One function of the library; over RPC a tuple return cannot be indexed: set inputs, invoke,
        fetch each output."""
        if self.remote is None:
            return self.vm[function](*args)
        self.vm.set_input(function, *args)
        self.vm.invoke_stateful(function)
        outputs = self.vm.get_outputs(function)
        return [outputs[i] for i in range(len(outputs))] if hasattr(outputs, "__len__") else outputs

    def close(self) -> None:
        """Release the VM, the weights and the RPC session (a TVM server serves one session at a time)."""
        import gc

        self.vm = self.session = self.device = None
        self.params = []
        gc.collect()  # the VM's get_outputs closure is a reference cycle that holds the session


class TvmImage:
    """An image bundle's model.so: ``main(images (1, 3, H, W), weights...)`` on the Relax VM, weights
    from params.safetensors; on this machine's CPU, or on the device behind ``remote``."""

    def __init__(self, artifact: Artifact, remote: Remote | None = None) -> None:
        import tvm

        m = artifact.manifest
        library = artifact.graph(IMAGE_GRAPH)
        if m.target.device != "cpu":
            raise PlatformError(f"{artifact.directory}: a {m.target.device} image bundle is built and checked "
                                f"(`rwkv-edge verify`), not yet run: the image runtime runs CPU bundles")
        if remote is None and host_triple() != m.target.triple:
            raise PlatformError(f"{artifact.directory} was built for {m.target.triple} ({m.target.name}); this "
                                f"machine is {host_triple()}: run it on a {m.target.triple} device with --rpc")
        self.loaded = LoadedLibrary(artifact, library, IMAGE_GRAPH, "cpu", remote)
        where = "this machine" if remote is None else remote.describe()
        self.runs_on = f"TVM {tvm.__version__} Relax VM on {where} ({m.target.triple})"

    def run(self, images: np.ndarray) -> np.ndarray:
        import tvm

        return _numpy(self.loaded.call("main", [tvm.runtime.tensor(images, self.loaded.device), *self.loaded.params]))

    def close(self) -> None:
        self.loaded.close()


def _register_fatbin(artifact: Artifact) -> None:
    """A CUDA bundle's kernels come precompiled (kernels.fatbin): TVM asks its compile callback for
    them when the library loads, and gets the fatbin made from exactly this source."""
    import tvm_ffi

    _PREBUILT_CUDA[artifact.manifest.files[CUDA_SOURCE]["sha256"]] = artifact.path(FATBIN).read_bytes()
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _prebuilt_fatbin, override=True)


def library_bytes(artifact: Artifact, library: Path) -> bytes:
    """The bytes of ``library``, read once and held to the manifest's sha256: what is loaded is what was
    hashed, whatever happens to the file afterwards. (A Metal bundle's model.so, linked on the Mac, is
    not listed: nothing to hold it to.)"""
    listed = artifact.manifest.files.get(library.name)
    try:
        fd = os.open(library, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"{library}: cannot be read ({e.strerror})") from None
    if listed is not None and hashlib.sha256(data).hexdigest() != listed["sha256"]:
        raise ArtifactError(f"{library}: sha256 differs from the manifest (modified since the artifact was checked); "
                            "nothing was loaded")
    return data


def load_library(data: bytes, library: Path, device):
    """The Relax VM on ``device`` over a library's ``data``, staged for the loader in a folder this
    process creates for it alone (``_private_copy``). The loader hands back an already loaded library
    of the same path, so each load gets a path of its own: a bundle rebuilt in place runs its new code."""
    import tvm
    from tvm import relax

    try:
        with _private_copy(data, library.suffix) as path:
            module = tvm.runtime.load_module(str(path))
        return relax.VirtualMachine(module, device)
    except ArtifactError:
        raise
    except Exception as e:  # a library that does not load is a broken artifact
        raise ArtifactError(f"{library}: TVM cannot load it: {one_line(e, last=True)}") from None


def upload_library(session, data: bytes, library: Path, remote: Remote, device):
    """The Relax VM on the device behind an RPC ``session`` over a library's ``data`` (as hashed)."""
    from tvm import relax

    try:
        session.upload(bytearray(data), library.name)
        return relax.VirtualMachine(session.load_module(library.name), device)
    except Exception as e:
        raise ToolError(f"{remote.describe()}: cannot load {library.name} there: {one_line(e, last=True)}") from None


@contextlib.contextmanager
def _private_copy(data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` in a new file of a new folder: made by this process (mkdtemp: mode 0700, a fresh random
    name, so nobody could have planted it or a symlink there), checked to be this user's and closed to
    others, removed when the block ends (a loaded library stays mapped)."""
    folder = Path(tempfile.mkdtemp(prefix="rwkv-edge-library-"))
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise ArtifactError(f"{folder}: not a private folder of this user's; set TMPDIR to one")
        path = folder / f"model{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o500)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def library_interface(call: Callable, library: Path, manifest: Manifest) -> GraphInterface:
    """The loaded library's ``interface()`` (``call(function, args)`` runs one of its functions), checked
    against ``manifest``: ArtifactError naming the first field that disagrees, before anything else runs."""
    try:
        data = _numpy(call("interface", []))
    except (AttributeError, RuntimeError) as e:  # no such function: AttributeError here, an RPCError over RPC
        if "interface" not in str(e):
            raise
        raise ArtifactError(f"{library}: built by an older rwkv-edge (no interface() function): recompile it") from None
    interface = parse_interface(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), library)
    check_interface(manifest, interface, library)
    return interface


def _prebuilt_fatbin(code: str, *_target) -> bytes:
    """TVM's CUDA compile callback: the fatbin a loaded bundle brought for this source, never a compiler."""
    import hashlib

    binary = _PREBUILT_CUDA.get(hashlib.sha256(code.encode()).hexdigest())
    if binary is None:
        raise ArtifactError("a CUDA library asked for kernels no loaded bundle's kernels.fatbin was compiled from")
    return binary


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

"""The GPU half of ``compile_tvm``: weights out of the library, GPU schedules, device code kept beside it.

- CUDA: TVM 0.27 stores the kernels' CUDA C source in model.so and compiles it when the library
  loads (through a ``tvm_callback_cuda_compile`` function). The bundle compiles it ahead of time
  instead: nvcc makes ``kernels.fatbin`` (cubin for the target's arch plus its PTX, which newer
  GPUs JIT), and the backend (``runtime/tvm_backend.py``) answers TVM's callback with it for
  exactly the source it was made from (sha256 of ``kernels.cu``). ``kernels.ptx`` is kept too.
- Metal: no Metal compiler exists for Linux, so the library keeps the Metal Shading Language
  source, which the Mac compiles when it loads the library; the source is written to the bundle
  (``kernels.metal``) and the host objects go into model.tar (no Mach-O linker here).
- Weights: ``params.safetensors`` (``w0``, ``w1``, ... in ``main``'s parameter order), lifted by
  ``compile/tvm/params.py`` as for CPU bundles: fp32 or fp16 GEMV weights (N, K), or for int8 / int4
  bundles each quantized projection's integers (int8 (N, K), or int4 (N, K / 2) uint8) and fp16
  scales (N, K / group), taken from the export's MatMulNBits initializers
  (``compile/tvm/gpu_schedules.py``); every sum is fp32.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...artifact.files import CUDA_SOURCE, FATBIN, MSL, PTX
from ...errors import ToolError
from ...targets.gpu import GpuTarget
from ...weights import weight_format

if TYPE_CHECKING:
    from .params import WeightTable

# --weights -> the dtype of the dense GEMV weights (int8/int4: the matrices that are not quantized, e.g. LoRA)


def build_gpu(mod, target: GpuTarget, weights: str, bundle: Path, log: Callable[[str], None], image: bool = False,
              group: int = 0, vocab_size: int | None = None, table: WeightTable | None = None):
    """Relax module -> (executable, kernel counts, weights: ``np.asarray`` computes each); writes the
    device code's source (and PTX) into ``bundle``. ``table``: the weights ``import_graph`` bound (None:
    a module with constant weights). ``image``: an image model's whole-image graph, unfused
    (compile/tvm/image.py says why) and its projections scheduled as GEMMs (dlight's Matmul).
    ``group``: int8/int4 weights' group size (the export's); ``vocab_size``: the embedding's rows, for
    ``interface()`` (compile/tvm/interface.py)."""
    import tvm
    from tvm import relax

    from ...artifact.builder import stage
    from .gpu_schedules import ApplyGpuSchedules, gpu_weights
    from .interface import add_interface

    tvm_target = tvm.target.Target(target.tvm_target())
    fusion = [] if image else [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with tvm_target, stage(log, f"optimise: row GEMVs ({weights} weights), lift weights, "
                                f"{'no fusion' if image else 'fuse'}, GPU schedules"):
        mod, values, gemvs = gpu_weights(mod, table, weight_format(weights).float_dtype, weight_format(weights).bits, group)
        mod = tvm.ir.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), *fusion,
            relax.transform.DeadCodeElimination(),
        ])(mod)
        schedule = ApplyGpuSchedules(tvm_target, matmul=image)
        mod = schedule(mod)
    counts = {**gemvs, **{f"{rule} kernels": n for rule, n in schedule.counts.items()},
              **{f"dequantizing {rule} kernels": n for rule, n in schedule.dequantizing.items()}}
    log("  " + ", ".join(f"{k}: {v}" for k, v in counts.items())
        + f"; {len(values)} weight tensors, {sum(v.nbytes for v in values) / 1e6:.1f} MB")
    with stage(log, f"build for {target.device} {target.arch or ''} (host {target.triple})".replace("  ", " ")):
        executable = tvm.compile(add_interface(mod, vocab_size), tvm_target)
    source = _device_source(executable.mod, target.device)
    if target.device == "metal":
        (bundle / MSL).write_text(source)
    else:
        with stage(log, f"nvcc: {CUDA_SOURCE} -> {FATBIN} ({target.arch} cubin + PTX), {PTX}"):
            nvcc_fatbin(source, target.arch, bundle)
    return executable, counts, values


def device_files(target: GpuTarget) -> list[str]:
    """The device-code files a bundle for ``target`` carries beside the library."""
    return [CUDA_SOURCE, PTX, FATBIN] if target.device == "cuda" else [MSL]


def nvcc_fatbin(code: str, arch: str, bundle: Path) -> None:
    """CUDA C -> ``kernels.fatbin`` (cubin for ``arch`` + its PTX) and ``kernels.ptx``, beside ``kernels.cu``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ToolError("nvcc not found: CUDA targets compile their kernels with the CUDA toolkit's nvcc "
                        "(CUDA 13: put /usr/local/cuda/bin on PATH)")
    number = arch.removeprefix("sm_")
    source = bundle / CUDA_SOURCE
    source.write_text(code)
    for flags, out in ((["--ptx", f"-arch=compute_{number}"], PTX),
                       (["--fatbin", "-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"], FATBIN)):
        proc = subprocess.run([nvcc, *flags, "-O3", "-o", str(bundle / out), str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise ToolError(f"nvcc failed for {arch}: {lines[-1] if lines else f'exit {proc.returncode}'}")


def _device_source(module, kind: str) -> str:
    """The source of the first imported module of ``kind`` (the Metal library) under ``module``."""
    stack = [module]
    while stack:
        current = stack.pop()
        if current.kind == kind:
            return current.inspect_source()
        stack.extend(current.imports)
    raise ToolError(f"the build produced no {kind} module")

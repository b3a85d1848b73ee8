"""The memory-bandwidth bound of a decode step: the weight bytes it reads, the machine that reads them.

A decode step of an RWKV model reads every weight once (the embedding: one row) and does about two
flops per weight read, so on a CPU its speed is set by how fast memory delivers the weights. The
bound is ``weight bytes per token / read bandwidth``, both measured in the same run. The bandwidth is
read the way a decode step reads its weights (bench/workers.py ``bandwidth``): each thread streams
its own contiguous part of a buffer no cache holds, block by block, as a GEMV thread streams its
tiles of K x tile weights.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from ..model import LANGUAGE_ARCHITECTURES, detect_version
from ..model.checkpoint import StateDict
from ..weights import weight_format

BYTES_PER_VALUE = 4  # every backend computes in fp32 on the CPU
MEMINFO = Path("/proc/meminfo")
BANDWIDTH_BUFFER_MAX = 1 << 30  # the read-bandwidth buffer's largest default size


def weight_bytes_per_token(tensors: StateDict, bytes_per_value: int = BYTES_PER_VALUE,
                           gemv_bytes_per_value: int | None = None) -> int:
    """Bytes of weights one decode step reads: every tensor the model uses once, except the
    embedding, of which one row (the token's). ``gemv_bytes_per_value``: the matrices the step
    multiplies a row by (``gemv_weight_names``) take that many bytes each, the rest ``bytes_per_value``
    (a GPU bundle's fp16 weights: 2, with everything else fp32)."""
    unused = set(LANGUAGE_ARCHITECTURES[detect_version(tensors)].model_class().unused_keys)
    gemv = gemv_weight_names(tensors) if gemv_bytes_per_value is not None else set()
    total = 0
    for name, t in tensors.items():
        if name in unused:
            continue
        values = t.shape[-1] if name == "emb.weight" else t.numel()
        total += values * (gemv_bytes_per_value if name in gemv else bytes_per_value)
    return total


def gemv_weight_names(tensors: StateDict) -> set[str]:
    """The 2-D weights a decode step multiplies a row by (linear layers, LoRA matrices, the head):
    what the exported graph holds as constant MatMul operands and a GPU bundle stores in its
    ``--weights`` dtype. Found by running the model once on the meta device (no memory, no compute)
    and recording every 2-D parameter that reaches a matmul; the embedding is a gather, per-head
    parameters such as ``r_k`` are elementwise."""
    import torch
    from torch.overrides import TorchFunctionMode

    model_class = LANGUAGE_ARCHITECTURES[detect_version(tensors)].model_class()
    model = model_class.from_state_dict({k: torch.empty(t.shape, dtype=torch.float32, device="meta")
                                         for k, t in tensors.items()})
    names = {id(p): name for name, p in model.named_parameters()}
    found: set[str] = set()
    matmuls = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm}

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls:
                found.update(names[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in names and a.dim() == 2)
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), Record(), torch.inference_mode():
        x = torch.zeros(1, model.config.n_embd)  # (T=1, C): one token past the embedding
        x, _ = model.run_blocks(x, model.init_state())
        model.head(model.ln_out(x))
    return found


def quantized_weight_bytes_per_token(tensors: StateDict, bits: int, group: int) -> int:
    """``weight_bytes_per_token`` of an int8/int4 artifact: the linear layers' matrices (the projections
    and the head, which ``quantize_weights`` quantizes) take ``bits / 8`` bytes a weight plus one fp16
    scale per ``group``, and so does the embedding row the token reads (its scales stored as fp32); the
    rest (LoRA matrices, vectors) stays fp32."""
    import torch

    model_class = LANGUAGE_ARCHITECTURES[detect_version(tensors)].model_class()
    model = model_class.from_state_dict({k: torch.empty(t.shape, dtype=torch.float32, device="meta")
                                         for k, t in tensors.items()})
    linear = [m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    row = model.config.n_embd  # the embedding row, counted at fp32 by weight_bytes_per_token
    quantized = sum(n * bits // 8 + n // group * 2 for n in linear) + row * bits // 8 + row // group * 4
    return weight_bytes_per_token(tensors) - (sum(linear) + row) * BYTES_PER_VALUE + quantized


def bound_ms(bytes_per_token: int, gb_s: float) -> float:
    """Milliseconds per token at which reading the weights alone takes all the bandwidth (GB = 1e9 bytes)."""
    return bytes_per_token / (gb_s * 1e9) * 1e3


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0, from sysfs (0 where unknown)."""
    largest = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            largest = max(largest, _size_bytes((index / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    return largest


def available_memory_bytes() -> int | None:
    """MemAvailable of MEMINFO: what the machine can give without swapping (None where unknown)."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key == "MemAvailable" and value.split()[1:] == ["kB"]:
            return int(value.split()[0]) << 10
    return None


def bandwidth_buffer_bytes() -> int:
    """Large enough that no cache holds it, no larger: max(256 MiB, 8 x the last-level cache), at most
    1 GiB and a quarter of the available memory (a virtual machine may report a huge cache)."""
    cap = BANDWIDTH_BUFFER_MAX
    available = available_memory_bytes()
    if available is not None:
        cap = min(cap, available // 4)
    return min(max(256 << 20, 8 * last_level_cache_bytes()), cap)


def _size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


# -- the machine ----------------------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores and threads; the load average says how busy the machine was."""
    cpu, physical, core = "", set(), {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() + [""]
    except OSError:
        cpuinfo = []
    for line in cpuinfo:  # one paragraph per logical CPU
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not cpu:
            cpu = value
        elif key in ("physical id", "core id"):
            core[key] = value
        elif not key and core:
            physical.add((core.get("physical id"), core.get("core id")))
            core = {}
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "last_level_cache_mib": last_level_cache_bytes() / (1 << 20),
        "threads": threads,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def row_weight_bytes(tensors: StateDict, weights: str, every_weight: bool = False) -> int:
    """Bytes of weights a row's decode step reads with its weights in ``weights``: fp16 is every weight
    where the row's format applies to ``every_weight`` (PyTorch's dtype), else the GEMV weights alone (a
    GPU bundle's ``--weights fp16``); int8/int4 the quantizer's default groups of 32."""
    fmt = weight_format(weights)
    if fmt.full_precision:
        return weight_bytes_per_token(tensors)
    if fmt.quantized:
        return quantized_weight_bytes_per_token(tensors, fmt.bits, fmt.group_size)
    if every_weight:
        return weight_bytes_per_token(tensors, bytes_per_value=fmt.bits // 8)
    return weight_bytes_per_token(tensors, gemv_bytes_per_value=fmt.bits // 8)

"""int8-compute TVM bundles (compile/intdot.py): int8/int4 weights times activations rounded to int8 per
group, summed by the dot instructions (x86 AVX-512 VNNI vpdpbusd on the host, ARM sdot under qemu)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from rwkv_edge.artifact import read_manifest
from rwkv_edge.artifact.files import LIBRARY
from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.errors import OptionError
from rwkv_edge.model import ARCHITECTURES
from rwkv_edge.runtime.tvm_backend import TvmBackend
from rwkv_edge.targets import get_target
from rwkv_edge.verify import verify_artifact

HOST_VNNI = get_target("x86_64-host").dot_product() == "vnni"
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="this CPU has no AVX-512 VNNI (avx512vnni): no int8 compute on the host")


def quiet(_: str) -> None:
    pass


@needs_vnni
@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("version", list(ARCHITECTURES))
def test_int8_compute_bundles_match_the_activation_rounding_model(version, weights, tvm_bundle):
    """Default on a VNNI host: every quantized projection rounds its input and sums integer products;
    held to the int8-compute limits against the PyTorch model that rounds the same way."""
    bundle = tvm_bundle(version, weights=weights, prefill=8)
    manifest = read_manifest(bundle)
    assert manifest.compute == "int8" and manifest.weights == weights
    kernels = manifest.target.kernels
    assert kernels[f"int{weights[-1]} gemv (vnni)"] > 0 and kernels["int8 dot kernels"] > 0, kernels
    report = verify_artifact(bundle, steps=32, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    assert report.tolerance.name == f"{weights} weights, int8 compute"

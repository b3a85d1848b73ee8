"""The files an artifact directory may hold, by name, and how their arrays are read and written.

Builders write them, backends and checks read them; nobody else spells a file name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEP_ONNX, PREFILL_ONNX = "model.onnx", "prefill.onnx"  # ONNX exports
LIBRARY, OBJECTS = "model.so", "model.tar"  # TVM bundles: the linked step, or objects still to link
PARAMS = "params.safetensors"  # TVM bundles: the weights the functions take after their inputs (artifact/params.py)
CUDA_SOURCE, PTX, FATBIN, MSL = "kernels.cu", "kernels.ptx", "kernels.fatbin", "kernels.metal"  # device code
PACKAGE = "model.mlpackage"  # Core ML
INITIAL_STATE = "initial_state.npz"  # the state before the first token, where it is not the fills
REFERENCE = "reference.npz"  # the PyTorch model's rollout at build time (artifact/reference.py)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read without pickle, each header held to its bytes before anything is
    allocated (arrays.py); ArtifactError for anything else."""
    from ..arrays import read_npz as read
    from ..errors import ArtifactError

    return read(path, ArtifactError)

"""The CUDA GPU this process can use, as TVM's CUDA runtime sees it."""

from __future__ import annotations


def cuda_device_arch(index: int = 0) -> str | None:
    """``"sm_90"`` for an H100 and so on; None when no CUDA GPU (or no CUDA runtime library) is usable."""
    try:
        import tvm

        device = tvm.cuda(index)
        if not device.exist:
            return None
        return "sm_" + str(device.compute_version).replace(".", "")
    except Exception:  # TVM's CUDA runtime needs libcudart.so.13 and the driver's libcuda.so.1
        return None

"""Core ML targets: Apple platform, deployment targets per form, compute units, precision."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import OptionError

EXECUTORS = ("predict", "mil")  # what runs a package: Core ML's predict (macOS), or coremltools' MIL interpreter

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
# Deployment targets coremltools can emit an ML program for, oldest first. iOS 18 / macOS 15 add
# Core ML states, multifunction packages and per-block int4 weights.
DEPLOYMENTS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
STATEFUL_MINIMUM = {"iOS": "iOS18", "macOS": "macOS15"}


@dataclass(frozen=True)
class CoreMLTarget:
    """An Apple platform for ``rwkv-edge compile --target``; Core ML converts from the PyTorch step."""

    name: str
    platform: str  # "iOS" or "macOS"
    explicit_deployment: str  # default minimum deployment target of the explicit-state form
    stateful_deployment: str  # ... and of the stateful form (Core ML states need iOS 18 / macOS 15)
    compute_units: str = "ALL"
    weight_formats: tuple[str, ...] = ("fp16", "fp32", "int8", "int4")  # the first is the default
    kind: str = "coreml"  # the compiler family (compile.COMPILERS)

    def settings(self) -> dict[str, str]:
        return {"backend": "Core ML (coremltools, from the PyTorch step)", "platform": self.platform,
                "deployment": f"{self.explicit_deployment} explicit state, {self.stateful_deployment} stateful",
                "compute units": self.compute_units,
                "weights": " or ".join(self.weight_formats) + " (fp16 compute, fp32 with fp32 weights; state I/O fp32)"}

    def deployment(self, stateful: bool, requested: str | None = None) -> str:
        """The minimum deployment target for a form; OptionError for one that cannot hold it."""
        if requested is None:
            return self.stateful_deployment if stateful else self.explicit_deployment
        if requested not in DEPLOYMENTS or not requested.startswith(self.platform):
            valid = [d for d in DEPLOYMENTS if d.startswith(self.platform)]
            raise OptionError(f"deployment target {requested!r} is not one of {', '.join(valid)} for {self.name}")
        minimum = STATEFUL_MINIMUM[self.platform]
        if stateful and deployment_order(requested) < deployment_order(minimum):
            raise OptionError(f"--stateful needs Core ML states, available from {minimum}; "
                              f"{requested} is too old (raise the deployment target or drop --stateful)")
        return requested


def deployment_order(deployment: str) -> int:
    return int("".join(c for c in deployment if c.isdigit()))


def check_compute_units(name: str) -> str:
    if name not in COMPUTE_UNITS:
        raise OptionError(f"unknown compute units {name!r}; choose one of {', '.join(COMPUTE_UNITS)}")
    return name


COREML_TARGETS = {
    "ios-coreml": CoreMLTarget("ios-coreml", "iOS", "iOS17", "iOS18"),
    "macos-coreml": CoreMLTarget("macos-coreml", "macOS", "macOS14", "macOS15"),
}


def coreml_name(contract_name: str) -> str:
    """The Core ML feature name of a contract tensor: ``state.3.wkv`` -> ``state_3_wkv`` (MIL names
    are identifiers, and coremltools rewrites any other name)."""
    return contract_name.replace(".", "_")


def import_coremltools():
    """coremltools, with its import-time chatter (untested torch version, no Core ML runtime on
    this OS) silenced; ImportError as an OptionError saying what to install."""
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError:
        raise OptionError("Core ML targets need coremltools: pip install -c constraints.txt coremltools") from None
    return coremltools


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """No per-op progress bars or converter warnings on stderr: rwkv-edge logs its own stages."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield

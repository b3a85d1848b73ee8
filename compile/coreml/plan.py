"""What a Core ML package is asked for (``CoreMLOptions``) and what will be built (``CoreMLPlan``): the
options checked against the target, the deployment, the weights and the compute precision."""

from __future__ import annotations

from dataclasses import dataclass

from ...artifact import CoreMLBuild
from ...errors import OptionError
from ...targets import CoreMLTarget, get_target
from ...targets.coreml import check_compute_units, deployment_order, import_coremltools
from ...weights import COMPUTES, check_weights, weight_format

# the oldest iOS a package runs on: float weights iOS 16; quantized ones, blockwise constants, iOS 18
OLDEST_FLOAT, OLDEST_QUANTIZED = "iOS16", "iOS18"
MULTIFUNCTION_IOS = 18  # multifunction packages (and states) need iOS 18 / macOS 15


@dataclass(frozen=True)
class CoreMLOptions:
    target: str = "ios-coreml"
    stateful: bool = False  # Core ML states (fp16) instead of explicit fp32 state I/O
    weights: str | None = None  # the weight format; default: the target's
    compute_units: str | None = None  # ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE; default: the target's
    deployment: str | None = None  # minimum deployment target, e.g. "iOS18"; default: per form
    prefill_chunk: int = 16  # tokens per prefill call (multifunction packages only); 0: decode only
    group_size: int | None = None  # int8/int4: weights per scale (default: the format's)

    def resolve(self) -> "CoreMLPlan":
        """Check every option against the target; OptionError naming the first that does not fit."""
        target = get_target(self.target)
        if not isinstance(target, CoreMLTarget):
            raise OptionError(f"target {self.target!r} is not a Core ML target")
        fmt = check_weights(self.weights or target.weight_formats[0], target.weight_formats, "a Core ML package")
        deployment = target.deployment(self.stateful, self.deployment)
        if fmt.quantized and self.deployment is None:
            deployment = target.stateful_deployment  # iOS 18 / macOS 15: the first with blockwise weights
        weights, group = fmt.name, fmt.check_group(self.group_size)
        if self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        ios = _ios_equivalent(deployment)
        # fp16 and quantized weights compute in fp16 (the recurrence and the norms in fp32, precision.Fp16Selector)
        compute = COMPUTES["fp16"].name if fmt.quantized else fmt.compute.name
        oldest = OLDEST_QUANTIZED if fmt.quantized else OLDEST_FLOAT
        if ios < deployment_order(oldest):
            raise OptionError(f"{weights} weights need iOS 18 / macOS 15; {deployment} is too old")
        multifunction = ios >= MULTIFUNCTION_IOS and self.prefill_chunk > 0
        return CoreMLPlan(target, deployment, weights, compute,
                          check_compute_units(self.compute_units or target.compute_units), self.stateful,
                          self.prefill_chunk if multifunction else 0, group)


@dataclass(frozen=True)
class CoreMLPlan:
    """Resolved options: what will be built."""

    target: CoreMLTarget
    deployment: str
    weights: str
    compute: str  # "fp16" or "fp32"
    compute_units: str
    stateful: bool
    prefill_chunk: int  # 0: a single-function package holding the decode step as "main"
    group_size: int  # int8/int4: weights per scale; 0 for float weights

    @property
    def functions(self) -> dict[str, int | None]:
        """Function name -> tokens per call (None: the single-token step)."""
        if not self.prefill_chunk:
            return {"main": None}
        return {"decode": None, "prefill": self.prefill_chunk}

    def build(self) -> CoreMLBuild:
        """The manifest's record of what is built."""
        return CoreMLBuild(self.target.name, self.target.platform, self.deployment, self.compute_units,
                           "stateful" if self.stateful else "explicit", "fp16" if self.stateful else "fp32", "int32",
                           list(self.functions))

    @property
    def compressed(self) -> bool:
        return weight_format(self.weights).quantized


def ct_target(deployment: str):
    ct = import_coremltools()

    return getattr(ct.target, deployment)


def _ios_equivalent(deployment: str) -> int:
    """Core ML feature level of a deployment target, as an iOS version (macOS 15 ~ iOS 18)."""
    n = deployment_order(deployment)
    return n + 3 if deployment.startswith("macOS") else n

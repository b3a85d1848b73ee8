"""What ``verify`` does for an artifact of one kind beyond the rollout: the hooks a runtime.registry
entry names (``verify``). ``KindChecks`` is the rollout alone; a kind's subclass may judge an artifact
that cannot run here without running it, and adds its own lines to the parity report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..artifact import Artifact
from ..platforms import gpu_unavailable
from .build_check import BuildReport, check_gpu_build
from .report import ParityReport


class KindChecks:
    """The rollout alone: nothing before it, nothing added to its report."""

    def unrunnable(self, artifact: Artifact, remote) -> BuildReport | None:
        """The verdict on an artifact that cannot run here (None: it runs)."""
        return None

    def add(self, report: ParityReport, candidate, log: Callable[[str], None]) -> None:
        """Lines of the kind's own added to a rollout's ``report`` (``candidate``: the backend that ran it)."""


class TvmChecks(KindChecks):
    """A GPU bundle away from its GPU is checked as built, not executed; the decode step is timed where
    a bundle ran."""

    def unrunnable(self, artifact: Artifact, remote) -> BuildReport | None:
        target = artifact.manifest.target
        if remote is not None or target.device == "cpu":
            return None
        why = gpu_unavailable(target.device, target.arch, target.triple)
        return check_gpu_build(artifact, why) if why else None

    def add(self, report: ParityReport, candidate, log: Callable[[str], None]) -> None:
        """The decode step's latency (a figure from an emulator says nothing about the hardware)."""
        log("timing the decode step ...")
        times = candidate.time_decode()
        median = float(np.median(times))
        report.details["decode_ms"] = {"median": median, "min": min(times), "max": max(times), "samples": times,
                                       "where": candidate.where, "method": "TVM time_evaluator, 20 x mean of 5 calls"}
        caveat = "; if that device is emulated, this is not its hardware's speed" if candidate.remote else ""
        report.what_ran.append(f"decode step timed on {candidate.where}: median {median:.3f} ms "
                               f"(TVM time_evaluator, 20 x 5 calls{caveat})")
        log(report.what_ran[-1])


class CoreMLChecks(KindChecks):
    """A Core ML package's interface and ops against the contract (runs on any OS)."""

    def add(self, report: ParityReport, candidate, log: Callable[[str], None]) -> None:
        from ..runtime.coreml_mil import MilProgram
        from .coreml_spec import check_spec

        program = MilProgram(candidate.package)
        spec_check = check_spec(candidate.manifest, program.spec, program.program)
        log(spec_check.summary())
        report.what_ran.insert(1, spec_check.summary())
        report.failures[:0] = [f"spec: {problem}" for problem in spec_check.problems]
        report.details["ops"] = spec_check.ops

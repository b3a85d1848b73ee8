"""Proving that an artifact computes what the PyTorch model computes: the parity report, the limits
per weight format, and ``verify_artifact``."""

from .report import ParityReport, compare_rollouts, compare_to_reference, greedy_identity
from .tolerances import TOLERANCES, Tolerance, tolerance_for
from .verifier import verify_artifact

__all__ = ["TOLERANCES", "ParityReport", "Tolerance", "compare_rollouts", "compare_to_reference", "greedy_identity",
           "tolerance_for", "verify_artifact"]

"""Checkpoint -> ONNX artifact: ``export_onnx`` runs the exporter of the checkpoint's family (docs/onnx-contract.md)."""

from .onnx import EXPORTERS, export_onnx
from .options import OnnxOptions

__all__ = ["EXPORTERS", "OnnxOptions", "export_onnx"]

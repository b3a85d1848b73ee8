"""ONNX export of the single-step RNN graph (see docs/onnx-contract.md once it exists)."""

"""``rwkv-edge compile DIR/model.onnx|CKPT --target CPU|GPU``: the ONNX step -> a TVM bundle.

Stages: (export the checkpoint to ONNX first, when given one), import the step graph into Relax,
pack the GEMV weights, fuse, apply the project's CPU schedules (``schedules.py``) with the
target's tuned parameters, build for the target, and link ``model.so`` (with the target's
cross-compiler). Every bundle keeps its weights out of the library; GPU targets (``gpu.py``)
also keep the device code's source beside it. The modules: ``pipeline.py`` (``compile_tvm``: the
export step, then the family's build), ``language.py`` (the step bundle below) and ``image.py`` (an
image model's whole-image bundle), the shared pieces (``options.py``, ``source.py``, ``importer.py``,
``cpu.py``, ``gpu.py``, ``link.py``, ``record.py``, ``params.py``, ``interface.py``, ``slices.py``) and
the kernels (``packing.py`` and ``schedules.py`` choose among ``gemv.py``, ``quantized.py``,
``intdot.py``, ``elementwise.py``; ``gemm.py``; ``gpu_schedules.py``; ``tir.py``, ``layout.py``).
The language model's bundle:

- ``model.so``: a Relax VM executable, code only. Functions: ``main(token int64 (1,), state...,
  weights...) -> (logits (1, V), state_out...)`` with the state in manifest order;
  ``prefill(tokens int64 (1, T), state..., weights...) -> (logits (1, V), state_out...)``, T tokens in
  one call (CPU targets, from the export's prefill graph; its projections are GEMMs, ``gemm.py``);
  ``initial_state() -> (state...)``, the state before the first token; ``interface()``, what the
  functions take and return and the embedding's rows (``interface.py``), which runtimes hold
  the manifest and the weights file to before they call anything;
- ``params.safetensors``: the weights ``main`` and ``prefill`` take after the state, one list shared
  by both (``params.py`` lifts them out of the module; ``artifact/params.py`` writes them
  64-byte aligned, for mapping);
- ``manifest.json``: kind ``tvm``, the resolved target, TVM version, contract version, checkpoint
  sha256, the state spec and the sha256 of every file;
- the tokenizer's vocabulary file where the model uses one (World, 20B), ``initial_state.npz``
  where the model ships a trained initial state;
- GPU targets: the device code (``kernels.cu`` + ``kernels.ptx``, or ``kernels.metal``); Apple hosts
  get ``model.tar``.
"""

from .options import PREFILL_CHUNK, TvmOptions
from .pipeline import compile_target, compile_tvm

__all__ = ["PREFILL_CHUNK", "TvmOptions", "compile_target", "compile_tvm"]

"""An exported ONNX graph in Relax, its weights bound as parameters or kept as constants."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...artifact.builder import stage

if TYPE_CHECKING:
    import onnx

    from .params import WeightTable


def import_graph(path: Path, log: Callable[[str], None], slices: bool = True, table: WeightTable | None = None,
                 rewrite: Callable[[onnx.ModelProto], None] | None = None):
    """An exported graph in Relax. With a ``table`` (language builds), its weights become parameters
    bound to the export's initializers (``compile/tvm/params.py``: TVM never holds their bytes; a
    MatMulNBits stands for its integers and scales); without, constants (image builds: fp32 graphs,
    no MatMulNBits). Gathers of one constant position become slices (``compile/tvm/slices.py``;
    ``slices`` False: not, for ``scripts/profile_kernels.py --gathers``). ``rewrite``: applied to the
    loaded graph, in place, before the import (image builds: ``bi_wkv_graph.cut_bi_wkvs``)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from .params import bind_initializers
    from .slices import gathers_as_slices

    with stage(log, f"import {path.name} into Relax"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer renames dotted names ("state.0.wkv" -> "state_0_wkv")
        proto = onnx.load(str(path), load_external_data=table is None)
        if table is not None:
            bind_initializers(proto, path.parent, table)
        if slices:
            gathers_as_slices(proto)
        if rewrite is not None:
            rewrite(proto)
        return from_onnx(proto, keep_params_in_input=False)

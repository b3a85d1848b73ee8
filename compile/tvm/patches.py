"""The patch embedding of a CPU image build as a matrix product (Relax, before the packing rewrite).

An image model's first op is a convolution whose stride is its kernel size (non-overlapping p x p
patches, no padding): TVM's default lowering of that conv2d took as long as all 84 projections of
VRWKV-T together (29.7 ms of 115 ms, one thread; docs/vision.md). It is the same arithmetic as
``patches (N, H/p * W/p, Cin * p * p) @ W^T``, which the packing rewrite (``gemm.py``) turns into the
project's GEMM: the images are cut into patches by reshapes and one transpose, and the product is put
back in the conv's (N, Cout, H/p, W/p) layout.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator


def patches_as_matmul(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with every patch convolution (NCHW, constant OIHW weight, stride = kernel, no padding,
    dilation 1, one group, static shapes) a matmul over the patches; returns the module and how many."""
    rewriter = _Patches(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get(), rewriter.count


@mutator
class _Patches(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0
        self.conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != self.conv2d or not _is_patch_conv(call):
            return call
        x, weight = call.args
        n, c_in, h, w = (int(d) for d in x.ty.shape)
        kernel = weight.value.numpy()  # (Cout, Cin, p, q)
        c_out, _, p, q = kernel.shape
        grid = (h // p, w // q)
        patches = relax.op.reshape(x, (n, c_in, grid[0], p, grid[1], q))
        patches = relax.op.permute_dims(patches, [0, 2, 4, 1, 3, 5])  # (N, H/p, W/q, Cin, p, q)
        patches = relax.op.reshape(patches, (n, grid[0] * grid[1], c_in * p * q))
        matrix = relax.const(np.ascontiguousarray(kernel.reshape(c_out, -1).T))  # (Cin p q, Cout)
        out = relax.op.reshape(relax.op.matmul(self.builder_.emit(patches), matrix), (n, grid[0], grid[1], c_out))
        self.count += 1
        return relax.op.permute_dims(self.builder_.emit(out), [0, 3, 1, 2])


def _is_patch_conv(call) -> bool:
    x, weight = call.args
    a = call.attrs
    if not isinstance(weight, tvm.ir.expr.Constant) or x.ty.shape is None or len(x.ty.shape) != 4 \
            or any(not isinstance(d, tirx.IntImm) for d in x.ty.shape):
        return False
    _, _, p, q = weight.value.shape
    _, _, h, w = (int(d) for d in x.ty.shape)
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW" and a.groups == 1
            and [int(s) for s in a.strides] == [p, q] and all(int(d) == 1 for d in a.dilation)
            and all(int(d) == 0 for d in a.padding) and h % p == 0 and w % q == 0
            and str(x.ty.dtype) == str(weight.value.dtype) == "float32" and str(a.out_dtype) in ("None", "", "void", "float32"))

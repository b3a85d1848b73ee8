"""What every RWKV version shares: the model face (init_state, step, forward) and loading."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, OptionError, TokenError
from ..quantize import Quantized
from .checkpoint import Checkpoint, StateDict, check_tensors
from .state import State, StateTensor, check_state, zero_state


def token_shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Each position's predecessor: ``prev`` first, then x[:-1].  (..., T, C), (..., C) -> (..., T, C)"""
    prev = prev.to(x.dtype).unsqueeze(-2)
    if x.shape[-2] == 1:
        return prev
    return torch.cat([prev, x[..., :-1, :]], dim=-2)


def to_heads(t: torch.Tensor, n_head: int, head_size: int) -> torch.Tensor:
    """Split channels into heads, in fp32.  (..., T, C) -> (..., T, H, N)"""
    return t.float().unflatten(-1, (n_head, head_size))


def group_norm_heads(y: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per head over the last axis, in fp32 (the variance of WKV outputs
    overflows fp16).  (..., C) -> (..., C) fp32"""
    flat = y.reshape(-1, y.shape[-1]).float()  # (B*T, C)
    return F.group_norm(flat, norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).reshape(y.shape)


def token_ids(tokens: Any) -> torch.Tensor:
    """Token ids as a long tensor: ints, numpy integers, (nested) lists of them, or integer tensors and
    arrays. Anything else (floats, even 1.0; bools; strings) raises TokenError before any conversion."""
    if isinstance(tokens, (list, tuple)):
        for t in _flatten(tokens):
            if not _is_int(t):
                raise _not_an_id(t)
        return torch.as_tensor(tokens, dtype=torch.long)
    if _is_int(tokens):
        return torch.as_tensor(tokens, dtype=torch.long)
    if not (isinstance(tokens, torch.Tensor) or hasattr(tokens, "__array__")) or isinstance(tokens, (str, bytes)):
        raise _not_an_id(tokens)
    try:
        ids = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):  # e.g. a numpy array of objects
        raise _not_an_id(tokens) from None
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise _not_an_id(ids.flatten()[0].item() if ids.numel() else ids, ids.dtype)
    return ids.long()


def _flatten(items: list | tuple):
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item


def _is_int(value: Any) -> bool:
    """An integer id: int or numpy integer (not bool), or a 0-d integer tensor."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.dtype == torch.bool or value.is_floating_point() or value.is_complex())
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _not_an_id(value: Any, dtype: Any = None) -> TokenError:
    kind = dtype if dtype is not None else type(value).__name__
    return TokenError(f"token id {value!r} ({kind}) is not an integer; pass integer ids (e.g. from the tokenizer)")


def round_activations(x: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) -> (..., K): every group of ``group`` along K on int8 levels, ``xq * dx`` with
    ``dx = amax|x_g| / 127`` and ``xq = round(x / dx)`` (half to even; zero where ``dx = 0``): what an
    int8-compute bundle multiplies its integer weights with."""
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)  # (..., K / group, group)
    dx = g.abs().amax(-1, keepdim=True) / 127  # (..., K / group, 1)
    xq = torch.where(dx > 0, torch.round(g / torch.where(dx > 0, dx, 1)), 0)
    return (xq * dx).reshape(x.shape)


@contextmanager
def nudged_inputs(model: nn.Module, seed: int) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` of ``model`` moves each input value by one fp32 ulp, up or
    down at random (seeded), before its other hooks (``round_activations``) see it."""
    generator = torch.Generator().manual_seed(seed)

    def nudge(_module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        up = torch.rand(x.shape, generator=generator) < 0.5
        return (torch.nextafter(x, torch.where(up, torch.inf, -torch.inf)), *args[1:])

    handles = [m.register_forward_pre_hook(nudge, prepend=True) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def quantize_linears(model: nn.Module, bits: int, group: int, activations: bool = False, in_place: bool = False) -> int:
    """Replace the weight of every ``nn.Linear`` in ``model`` with its ``bits``-bit quantization
    (``quantize.py``), dequantized: the numbers every quantized artifact of the model computes with.
    ``activations``: each of those ``nn.Linear`` also rounds its input per group of ``group`` along
    K to int8 levels (``round_activations``), as int8-compute bundles do (``compile/tvm/intdot.py``).
    ``in_place``: as for ``quantized_linears``. Returns the number of matrices; OptionError (before
    any change) if ``group`` does not divide an input dimension."""
    count = sum(1 for _ in quantized_linears(model, bits, group, in_place))
    if activations:
        round_linear_inputs(model, group)
    return count


def quantized_linears(model: nn.Module, bits: int, group: int,
                      in_place: bool = False) -> Iterator[tuple[nn.Linear, Quantized]]:
    """Quantize every ``nn.Linear`` of ``model`` as ``quantize_linears`` does, one at a time, yielding
    each with its quantization once its weight is replaced (a caller that stores the integers keeps
    them; the others hold one matrix's at a time). ``in_place``: fp32 weights are overwritten in their
    own memory, whatever else shares it (a caller that owns the checkpoint's copy saves the model's
    size). OptionError (before any change) if ``group`` does not divide an input dimension."""
    from ..quantize import quantize

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        if m.in_features % group:
            raise OptionError(f"a group size of {group} does not divide the input dimension {m.in_features} "
                              f"of the {m.out_features} x {m.in_features} matrices")
    for m in linears:
        weight = m.weight.detach()
        quantized = quantize(weight.float().numpy(), bits, group)
        if in_place and weight.dtype == torch.float32 and weight.is_contiguous():
            quantized.dequantize(out=weight.numpy())
        else:
            m.weight.data = torch.from_numpy(quantized.dequantize()).to(m.weight.dtype)
        yield m, quantized


def round_linear_inputs(model: nn.Module, group: int) -> None:
    """Every ``nn.Linear`` of ``model`` rounds its input per group of ``group`` along K to int8 levels
    (``round_activations``) from now on, as int8-compute bundles do (``compile/tvm/intdot.py``)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(lambda _module, args: (round_activations(args[0], group),))


class QuantizedEmbedding(nn.Module):
    """An embedding held as ``quantize.py``'s integers and scales, each row looked up dequantized: exactly
    ``Quantized.dequantize()``'s row (small integers times fp16 scales are exact in fp32), so a bundle
    stores and reads the embedding at the format's bytes, as llama.cpp does.

    values: (V, C * bits / 8) uint8, the zero point 2^(bits-1) added, int4 two to a byte (the even
    column in the low nibble: ``Quantized.packed``); scales: (V, C / group) fp32 (fp16 values).
    """

    def __init__(self, found: Quantized) -> None:
        super().__init__()
        self.bits, self.group = found.bits, found.group
        self.register_buffer("values", torch.from_numpy(found.packed()))
        self.register_buffer("scales", torch.from_numpy(found.scales.astype(np.float32)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # (..., C * bits / 8) as int32 (ONNX Gather, then integer arithmetic every runtime has)
        rows = F.embedding(tokens, self.values).to(torch.int32)
        if self.bits == 4:
            high = torch.div(rows, 16, rounding_mode="trunc")
            rows = torch.stack([rows - 16 * high, high], dim=-1).flatten(-2)  # (..., C), even columns low
        q = rows.to(torch.float32) - (1 << (self.bits - 1))  # (..., C) integers
        return (q.unflatten(-1, (-1, self.group)) * F.embedding(tokens, self.scales).unsqueeze(-1)).flatten(-2)


class RWKVModel(nn.Module):
    """Base of the per-version models.

    Subclasses set ``version``, ``config_class`` and ``unused_keys``, build their parameters with the
    official checkpoint names, and implement ``state_spec`` and ``run_blocks``.
    """

    version: ClassVar[str]
    config_class: ClassVar[type]
    unused_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # _weight skips the random init, which on the meta device imports torch._dynamo (1.2 s)
        self.emb = nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint",
                        constants: Mapping[str, Any] | None = None) -> "RWKVModel":
        """Build the model whose shapes the tensors imply, checking every key and shape; ``constants``
        (``Checkpoint.constants``) override config fields the tensors do not imply."""
        config = cls.config_class.from_state_dict(tensors, source)
        if constants:
            unknown = sorted(set(constants) - {f.name for f in dataclasses.fields(config)})
            if unknown:
                raise CheckpointError(f"{source}: sets {', '.join(unknown)}, which {cls.__name__} does not have")
            config = dataclasses.replace(config, **constants)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        tensors = {k: v for k, v in tensors.items() if k not in cls.unused_keys}
        matched = check_tensors(tensors, expected, source)
        model.load_state_dict({k: v.to(dtype) for k, v in matched.items()}, assign=True)
        return model.eval().requires_grad_(False)

    def quantize_weights(self, bits: int, group: int, activations: bool = False, embedding: bool = True,
                         in_place: bool = False) -> int:
        """``quantize_linears`` on this model (the projections and the head) and, with ``embedding``, the
        embedding as a ``QuantizedEmbedding`` (its rows are looked up, never multiplied: ``activations``
        does not apply); LoRA matrices, norms and mixing vectors stay as they are. Returns the number of
        linear layers quantized."""
        from ..quantize import quantize

        count = quantize_linears(self, bits, group, activations, in_place)
        if embedding:
            self.emb = QuantizedEmbedding(quantize(self.emb.weight.detach().float().numpy(), bits, group))
        return count

    def describe(self) -> dict[str, Any]:
        """The version and full config, for ``rwkv-edge info``."""
        return {"version": self.version, **dataclasses.asdict(self.config)}

    # -- the step contract ----------------------------------------------------------------------
    def state_spec(self) -> list[StateTensor]:
        raise NotImplementedError

    def init_state(self, batch: tuple[int, ...] = ()) -> State:
        """The state before the first token."""
        return zero_state(self.state_spec(), batch)

    def run_blocks(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step(self, token: int | torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token in RNN form: (token, state) -> (logits (V,), new state). Pure: ``state`` is unchanged."""
        tokens = token_ids(token).reshape(1)
        return self.forward(tokens, state, last_only=True)

    def forward(self, tokens: torch.Tensor | list[int], state: State | None = None,
                last_only: bool = False) -> tuple[torch.Tensor, State]:
        """Sequence form: tokens (..., T) -> (logits (..., T, V) fp32, state after the last token).
        ``last_only``: the logits (..., V) of the last position only (the head runs on that row alone)."""
        tokens = token_ids(tokens)
        if tokens.dim() == 0 or tokens.shape[-1] == 0:
            raise TokenError("forward needs at least one token")
        batch = tuple(tokens.shape[:-1])
        if state is None:
            state = self.init_state(batch)
        if not torch.compiler.is_compiling():
            self.check_tokens(tokens)
            check_state(state, self.state_spec(), batch)
        x = self.blocks[0].ln0(self.emb(tokens))  # (..., T, C)
        x, state = self.run_blocks(x, state)
        if last_only:  # (..., 1, C): a 3-D product stays a MatMul in ONNX (a 2-D one would be a Gemm)
            return self.head(self.ln_out(x[..., -1:, :])).float()[..., 0, :], state
        return self.head(self.ln_out(x)).float(), state

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise TokenError for ids outside [0, vocab_size)."""
        vocab = self.config.vocab_size
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if bad.numel():
            raise TokenError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab})")

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                        source: str = "checkpoint") -> "RWKVModel":
        """``from_state_dict`` of an opened checkpoint's tensors and constants."""
        return cls.from_state_dict(checkpoint.tensors, dtype, source, checkpoint.constants)

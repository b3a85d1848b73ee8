"""The step and prefill graphs: the model's forward with the state flattened to named tensors; the
whole-image graph of an image model."""

from __future__ import annotations

import torch
from torch import nn

from ..contract import IMAGE_INPUT, IMAGE_OUTPUTS
from ..errors import OptionError
from ..model import RWKVModel, VisionRWKV, state_from_named, state_to_named


class ContractGraph(nn.Module):
    """(token(s), *state) -> (logits, *state_out), every tensor with a leading batch axis.

    step:    token (B,) int64          -> logits (B, V)
    prefill: tokens (B, T) int64       -> logits (B, V) of the last position, or (B, T, V) with all_logits
    State tensors are fp32 (B, *shape) on both sides, in ``model.state_spec()`` order.
    """

    def __init__(self, model: RWKVModel, chunk: int | None = None, all_logits: bool = False) -> None:
        super().__init__()
        self.model, self.chunk, self.all_logits = model, chunk, all_logits
        self.spec = model.state_spec()

    def forward(self, tokens: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.chunk is None:
            tokens = tokens.unsqueeze(-1)  # (B,) -> (B, 1)
        state = state_from_named({t.input_name: s for t, s in zip(self.spec, states)}, self.spec)
        # (B, T, V), or (B, V): the head on the last position only
        logits, new_state = self.model(tokens, state, last_only=not self.all_logits)
        return (logits, *state_to_named(new_state).values())

    def input_names(self) -> list[str]:
        return ["token" if self.chunk is None else "tokens"] + [t.input_name for t in self.spec]

    def output_names(self) -> list[str]:
        return ["logits"] + [t.output_name for t in self.spec]

    def dynamic_shapes(self, batch: torch.export.Dim) -> tuple:
        """torch.export's batch axis of every input: the token(s), then the state (one varargs tuple)."""
        return {0: batch}, tuple({0: batch} for _ in self.spec)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        shape = (batch,) if self.chunk is None else (batch, self.chunk)
        tokens = torch.zeros(shape, dtype=torch.long)
        return (tokens, *state_to_named(self.model.init_state((batch,))).values())


class ImageGraph(nn.Module):
    """images (B, 3, H, W) float32 -> logits (B, classes) float32, or features (B, C, H / p, W / p) for a
    backbone, at the one resolution ``image_size`` (the model's pos_embed already resized to it)."""

    def __init__(self, model: VisionRWKV, image_size: int) -> None:
        super().__init__()
        if model.config.wkv != "paper":
            raise OptionError(f"the {model.config.wkv}-mode Bi-WKV runs in PyTorch only (its chunk loops have no "
                              "export); export the model with wkv='paper'")
        self.model, self.image_size = model, image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float()

    def input_names(self) -> list[str]:
        return [IMAGE_INPUT]

    def output_names(self) -> list[str]:
        return [IMAGE_OUTPUTS[0 if self.model.config.num_classes else 1]]

    def dynamic_shapes(self, batch: torch.export.Dim) -> tuple:
        return ({0: batch},)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch, self.model.config.in_channels, self.image_size, self.image_size),)

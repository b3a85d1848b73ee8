"""PyTorch definitions of RWKV v4-v7 in single-step RNN form, loaders and tokenizers."""

from .base import RWKVModel
from .registry import (
    ARCHITECTURES, DEMO_CHECKPOINT, Architecture, detect_version, load_checkpoint, load_model, model_from_state_dict,
)
from .state import LayerState, State, StateTensor, state_from_named, state_to_named

__all__ = [
    "ARCHITECTURES", "Architecture", "DEMO_CHECKPOINT", "LayerState", "RWKVModel", "State", "StateTensor",
    "detect_version", "load_checkpoint", "load_model", "model_from_state_dict", "state_from_named", "state_to_named",
]

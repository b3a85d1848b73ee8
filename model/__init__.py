"""PyTorch definitions of RWKV v4-v7 in single-step RNN form, Vision-RWKV, loaders and tokenizers."""

from ..bundled import DEMO_CHECKPOINT, VISION_DEMO_CHECKPOINT
from .base import RWKVModel
from .registry import (
    LANGUAGE_ARCHITECTURES, detect_version, load_any_model, load_checkpoint, load_model, model_from_checkpoint,
    model_from_state_dict, open_any_model,
)
from .state import LayerState, State, StateTensor, state_from_named, state_to_named
from .vision import VisionConfig, VisionRWKV, load_vision_checkpoint, vision_model_from_state_dict

__all__ = [
    "DEMO_CHECKPOINT", "LANGUAGE_ARCHITECTURES", "LayerState", "RWKVModel", "State", "StateTensor",
    "VISION_DEMO_CHECKPOINT", "VisionConfig", "VisionRWKV", "detect_version", "load_any_model", "load_checkpoint", "load_model",
    "load_vision_checkpoint", "model_from_checkpoint", "model_from_state_dict", "open_any_model", "state_from_named", "state_to_named",
    "vision_model_from_state_dict",
]

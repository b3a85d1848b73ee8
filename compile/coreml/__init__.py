"""Core ML packages from a checkpoint: the shared core (``plan.py`` options and plan, ``precision.py``
the fp16 op selector, ``compression.py`` int8/int4 weights), the language model's step package
(``language.py``) and the image model's package (``image.py``); ``pipeline.py`` picks the build by
the checkpoint's family."""

from .image import compile_vision_coreml
from .language import compile_coreml
from .pipeline import compile_target
from .plan import CoreMLOptions, CoreMLPlan

__all__ = ["CoreMLOptions", "CoreMLPlan", "compile_coreml", "compile_target", "compile_vision_coreml"]

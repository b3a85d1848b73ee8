"""The bundled demo models (the RWKV-7 language model, the Vision-RWKV shape classifier) and their training scripts."""

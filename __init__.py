"""rwkv-edge: export RWKV models to edge devices and prove the artifacts match PyTorch."""

__version__ = "0.1.0"

"""The bundled RWKV-7 demo model and the script that trained it."""

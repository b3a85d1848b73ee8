"""The ``rwkv-edge`` command line: parsing only; the library does the work."""

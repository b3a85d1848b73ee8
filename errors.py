"""Typed errors for everything a user can get wrong; each message says what to fix."""


class RwkvEdgeError(Exception):
    """Base class of every error rwkv-edge raises on bad input."""


class CheckpointError(RwkvEdgeError):
    """A checkpoint file is missing, truncated, unsafe or not an RWKV checkpoint."""


class UnknownArchitectureError(RwkvEdgeError):
    """The tensors match no supported RWKV architecture."""


class ShapeError(RwkvEdgeError):
    """Tensors are missing, unexpected or have the wrong shape."""


class TokenError(RwkvEdgeError):
    """A token id lies outside the model's vocabulary."""


class StateError(RwkvEdgeError):
    """A recurrent state does not match the model's state spec."""


class TokenizerError(RwkvEdgeError):
    """A tokenizer cannot be found or given ids it does not know."""


class UnknownTokenizerError(TokenizerError):
    """No tokenizer has the requested name."""


class OptionError(RwkvEdgeError):
    """An option has a value outside its valid range."""


class ArtifactError(RwkvEdgeError):
    """An output file cannot be written where it was asked for."""


class UnknownTargetError(RwkvEdgeError):
    """No deployment target has the requested name."""


class ToolError(RwkvEdgeError):
    """A program or library rwkv-edge needs (compiler, emulator, TVM runtime) is missing or failed."""


class PlatformError(RwkvEdgeError):
    """An artifact was built for a machine this one can run neither natively nor under emulation."""

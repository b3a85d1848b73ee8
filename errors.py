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


class ImageError(RwkvEdgeError):
    """An image or a batch of images has the wrong type, shape or size for the model."""


def one_line(error: BaseException, last: bool = False) -> str:
    """The first (or last) non-empty line of another library's error message, for a one-line error
    of ours; the exception's type name when it says nothing."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]).strip() if lines else type(error).__name__

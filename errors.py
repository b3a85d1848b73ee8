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


# C0 controls, DEL and C1 controls (what a terminal acts on: newlines, ANSI escapes, CSI) and the Unicode line
# and paragraph separators, written as Python escapes; every other character, letters of any script included,
# stays as it is.
_ESCAPES = {c: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(chr(c), f"\\x{c:02x}")
            for c in (*range(0x20), *range(0x7F, 0xA0))} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable(text: object) -> str:
    """``text`` (str() of it) safe to print on one line of a terminal: control characters escaped, e.g. a newline
    as ``\\n`` and ESC as ``\\x1b``. For text read from a file (a checkpoint's class names, a manifest's strings)."""
    return str(text).translate(_ESCAPES)

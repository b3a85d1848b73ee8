"""The C++ TextStream (runtime/cpp/text_stream.cc): what generation releases as token bytes arrive. A UTF-8
character split across tokens is held until whole; a stop sequence split across tokens is found and
dropped with everything after it; a held prefix of a stop sequence that turns out not to match is
released. On this host and on aarch64 under qemu."""

from __future__ import annotations

import struct

import pytest


def stream(text_check, tmp_path, tokens: list[bytes], stops: list[bytes] = ()) -> tuple[list[tuple[bytes, bool]], bytes]:
    """([(released, stopped) per token], what Flush released)."""
    (tmp_path / "tokens").write_bytes(b"".join(struct.pack("<I", len(t)) + t for t in tokens))
    text_check.run("stream", tmp_path / "tokens", tmp_path / "out", *(s.hex() for s in stops))
    data = (tmp_path / "out").read_bytes()
    pushes, k = [], 0
    for _ in tokens:
        (n,) = struct.unpack_from("<I", data, k)
        pushes.append((data[k + 4:k + 4 + n], bool(data[k + 4 + n])))
        k += 5 + n
    (n,) = struct.unpack_from("<I", data, k)
    assert k + 4 + n == len(data)
    return pushes, data[k + 4:]


def test_plain_text_is_released_at_once(text_check, tmp_path):
    assert stream(text_check, tmp_path, [b"Hello", b", ", b"world"]) == (
        [(b"Hello", False), (b", ", False), (b"world", False)], b"")


def test_a_character_split_across_tokens_is_held_until_whole(text_check, tmp_path):
    smile, e = "\U0001F600".encode(), "é".encode()  # 4 bytes, 2 bytes
    pushes, rest = stream(text_check, tmp_path, [b"a" + smile[:1], smile[1:2], smile[2:3], smile[3:] + e[:1], e[1:]])
    assert pushes == [(b"a", False), (b"", False), (b"", False), (smile, False), (e, False)]
    assert rest == b""


def test_bytes_that_cannot_begin_a_character_are_released_as_they_are(text_check, tmp_path):
    # a stray continuation byte, an overlong lead (C0), a lead byte past U+10FFFF (F5), E0 then a
    # byte it may not take (80: overlong), ED then A0 (a surrogate)
    tokens = [b"x\x80", b"\xc0", b"\xf5", b"\xe0\x80", b"\xed\xa0"]
    pushes, rest = stream(text_check, tmp_path, tokens)
    assert pushes == [(t, False) for t in tokens] and rest == b""


def test_an_unfinished_character_at_the_end_comes_out_of_flush(text_check, tmp_path):
    assert stream(text_check, tmp_path, [b"ab\xe4\xb8"]) == ([(b"ab", False)], b"\xe4\xb8")


def test_a_stop_sequence_split_across_tokens_is_dropped_with_what_follows(text_check, tmp_path):
    pushes, rest = stream(text_check, tmp_path, [b"Answer: 42\n\nUs", b"er: next", b"ignored"], [b"\n\nUser:"])
    assert pushes == [(b"Answer: 42", False), (b"", True), (b"", True)]
    assert rest == b""


def test_a_stop_prefix_that_does_not_match_is_released(text_check, tmp_path):
    pushes, rest = stream(text_check, tmp_path, [b"a\n", b"\nU", b"se", b"d it", b"\n"], [b"\n\nUser:"])
    assert pushes == [(b"a", False), (b"", False), (b"", False), (b"\n\nUsed it", False), (b"", False)]
    assert rest == b"\n"  # may still begin the stop sequence: held to the end


def test_the_earliest_of_several_stop_sequences_wins(text_check, tmp_path):
    pushes, rest = stream(text_check, tmp_path, [b"one END two STOP"], [b"STOP", b"END"])
    assert pushes == [(b"one ", True)] and rest == b""
    pushes, rest = stream(text_check, tmp_path, [b"x<", b"|e", b"nd|> tail"], [b"<|end|>", b"|e"])
    assert pushes == [(b"x", False), (b"<", True), (b"", True)] and rest == b""


def test_a_stop_sequence_inside_a_multibyte_character_split(text_check, tmp_path):
    stop = "。\n".encode()
    pushes, rest = stream(text_check, tmp_path, [b"ok\xe3", b"\x80", b"\x82", b"\n!"], [stop])
    assert pushes == [(b"ok", False), (b"", False), (b"", False), (b"", True)] and rest == b""


def test_an_empty_stop_sequence_is_refused(text_check, tmp_path):
    (tmp_path / "tokens").write_bytes(b"")
    result = text_check.run("stream", tmp_path / "tokens", tmp_path / "out", "61", "", check=False)
    assert (result.returncode, result.stderr) == (1, "text_check: error: a stop sequence must not be empty\n")


@pytest.mark.parametrize("cut", range(1, 12))
def test_any_split_releases_the_same_text(text_check, tmp_path, cut):
    text = "日本語 text STOP more".encode()
    pushes, rest = stream(text_check, tmp_path, [text[:cut], text[cut:]], [b"STOP"])
    assert b"".join(p for p, _ in pushes) + rest == "日本語 text ".encode() and pushes[-1][1]
    for released, _ in pushes:
        released.decode("utf-8")  # never a partial character

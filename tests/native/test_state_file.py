"""State files ("rwkv-edge.state/1"): a round trip, a file written by hand from the format's byte layout,
and every refusal of the reader, each a StateError naming the file and the problem."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from rwkv_edge.contract import StateTensor, matrix_state_spec
from rwkv_edge.errors import ArtifactError, StateError
from rwkv_edge.state_file import FORMAT, load_state, save_state

SPEC = matrix_state_spec(n_layer=2, n_embd=8, n_head=2, head_size=4)
SHA = "ab" * 32
VOCAB = 16


def random_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.input_name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC}


def load(path, spec=SPEC, architecture="rwkv7", sha=SHA, vocab=VOCAB):
    return load_state(path, spec, architecture, sha, vocab)


def hand_written(path, header: dict, data: bytes, pad: bool = True) -> None:
    """A state file from the format's byte layout: u64 N, N bytes of JSON, the data."""
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def layout(state: dict[str, np.ndarray], logits: np.ndarray | None = None, order=None) -> tuple[dict, bytes]:
    """The header and data of ``state`` (and logits) as the format lays them out, in ``order`` (default the spec's)."""
    names = order or [t.input_name for t in SPEC] + (["logits"] if logits is not None else [])
    arrays = {**state, **({"logits": logits} if logits is not None else {})}
    header = {"__metadata__": {"format": FORMAT, "architecture": "rwkv7", "source_sha256": SHA}}
    data, offset = b"", 0
    for name in names:
        raw = arrays[name].astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arrays[name].shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    return header, data


def test_round_trip_with_and_without_logits(tmp_path):
    state = random_state()
    logits = np.arange(VOCAB, dtype=np.float32) - 3.5
    save_state(tmp_path / "a.state", state, SPEC, "rwkv7", SHA, logits)
    got, got_logits = load(tmp_path / "a.state")
    assert list(got) == [t.input_name for t in SPEC]
    for name, value in state.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], value)
    assert np.array_equal(got_logits, logits)
    save_state(tmp_path / "b.state", state, SPEC, "rwkv7", SHA)
    assert load(tmp_path / "b.state")[1] is None


def test_the_writer_writes_the_exact_layout(tmp_path):
    state = random_state(1)
    logits = np.ones(VOCAB, np.float32)
    path = save_state(tmp_path / "s.state", state, SPEC, "rwkv7", SHA, logits)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert list(header) == ["__metadata__", *(t.input_name for t in SPEC), "logits"]  # keys in the format's order
    assert header["__metadata__"] == {"format": FORMAT, "architecture": "rwkv7", "source_sha256": SHA}
    expected_header, expected_data = layout(state, logits)
    assert header == expected_header
    assert raw[8 + n:] == expected_data
    assert not list(tmp_path.glob("*.partial*"))  # written beside it, renamed into place


def test_a_hand_written_file_in_any_key_order_reads_back(tmp_path):
    state = random_state(2)
    logits = np.linspace(-1, 1, VOCAB, dtype=np.float32)
    header, data = layout(state, logits)
    reordered = {k: header[k] for k in reversed(list(header))}  # readers do not care about key order
    hand_written(tmp_path / "h.state", reordered, data)
    got, got_logits = load(tmp_path / "h.state")
    assert all(np.array_equal(got[k], v) for k, v in state.items()) and np.array_equal(got_logits, logits)
    # data laid out in another order than the spec's, offsets saying so: read by offsets
    order = [t.input_name for t in reversed(SPEC)]
    header, data = layout(state, order=order)
    hand_written(tmp_path / "r.state", header, data, pad=False)  # no padding: still readable
    got, _ = load(tmp_path / "r.state")
    assert all(np.array_equal(got[k], v) for k, v in state.items())


def test_saving_refuses_a_state_that_does_not_fit_the_spec(tmp_path):
    state = random_state()
    del state["state.1.wkv"]
    with pytest.raises(StateError, match=r"s\.state: state tensor state\.1\.wkv is missing"):
        save_state(tmp_path / "s.state", state, SPEC, "rwkv7", SHA)
    state = random_state()
    state["state.0.att_shift"] = np.zeros(7, np.float32)
    with pytest.raises(StateError, match=r"state\.0\.att_shift .*\(7,\), expected float32 \(8,\)"):
        save_state(tmp_path / "s.state", state, SPEC, "rwkv7", SHA)
    with pytest.raises(StateError, match="unexpected state tensor 'state.9.x'"):
        save_state(tmp_path / "s.state", {**random_state(), "state.9.x": np.zeros(1)}, SPEC, "rwkv7", SHA)
    with pytest.raises(StateError, match="logits must be a float vector"):
        save_state(tmp_path / "s.state", random_state(), SPEC, "rwkv7", SHA, np.zeros((2, 3), np.float32))
    assert not (tmp_path / "s.state").exists()
    with pytest.raises(ArtifactError, match="cannot write"):
        save_state(tmp_path / "no-such-folder" / "s.state", random_state(), SPEC, "rwkv7", SHA)


def edited(tmp_path, edit, logits: bool = True, name: str = "e.state"):
    """A valid file's header and data passed through ``edit(header, data) -> (header, data)``, written by hand."""
    header, data = layout(random_state(), np.zeros(VOCAB, np.float32) if logits else None)
    header, data = edit(header, data)
    hand_written(tmp_path / name, header, data)
    return tmp_path / name


def set_meta(key, value):
    def edit(header, data):
        header["__metadata__"][key] = value
        return header, data
    return edit


def set_entry(name, key, value):
    def edit(header, data):
        header[name][key] = value
        return header, data
    return edit


def drop(name):
    def edit(header, data):
        del header[name]
        return header, data
    return edit


REFUSALS = {
    "format": (set_meta("format", "rwkv-edge.state/2"), r"format 'rwkv-edge.state/2', not 'rwkv-edge.state/1'"),
    "no metadata": (drop("__metadata__"), "format None, not 'rwkv-edge.state/1'"),
    "architecture": (set_meta("architecture", "rwkv6"), r"saved from an 'rwkv6' model, this one is 'rwkv7'"),
    "another model": (set_meta("source_sha256", "cd" * 32), "saved from another model"),
    "missing tensor": (drop("state.1.ffn_shift"), "holds no state.1.ffn_shift"),
    "extra tensor": (lambda h, d: ({**h, "state.2.wkv": h["state.0.att_shift"]}, d),
                     "holds 'state.2.wkv', which is not a state tensor of this model"),
    "dtype": (set_entry("state.0.wkv", "dtype", "F16"), "state.0.wkv is F16, expected F32"),
    "shape": (set_entry("state.0.att_shift", "shape", [2, 4]), r"state.0.att_shift has shape \[2, 4\], this model's is \[8\]"),
    "logits shape": (set_entry("logits", "shape", [VOCAB + 1]), r"logits has shape \[17\], this model's is \[16\]"),
    "logits dtype": (set_entry("logits", "dtype", "F64"), "logits is F64, expected F32"),
    "offsets span": (set_entry("state.0.att_shift", "data_offsets", [0, 4]), "do not span its 8 float32 values"),
    "offsets type": (set_entry("state.0.att_shift", "data_offsets", [0]), "is not a pair of integers"),
    "entry type": (lambda h, d: ({**h, "state.0.wkv": [1, 2]}, d), "expected an object of dtype, shape and data_offsets"),
    "gap": (lambda h, d: (shift_all(h, 4), b"\0" * 4 + d), "data begins at 4, expected 0"),
    "truncated": (lambda h, d: (h, d[:-1]), r"truncated \(.* bytes of data, the header describes"),
    "trailing": (lambda h, d: (h, d + b"\0" * 4), "4 bytes past the end of the data"),
}


def shift_all(header: dict, by: int) -> dict:
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [o + by for o in entry["data_offsets"]]
    return header


@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_refusal_names_the_file_and_the_problem(tmp_path, case):
    edit, message = REFUSALS[case]
    path = edited(tmp_path, edit)
    with pytest.raises(StateError, match=message) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_refusals_of_the_framing(tmp_path):
    path = tmp_path / "f.state"
    for raw, message in (
        (b"", "truncated"),
        (b"\x10\0\0", "truncated"),
        (struct.pack("<Q", (16 << 20) + 1) + b"{}", "more than a state file's"),
        (struct.pack("<Q", 100) + b"{}", r"truncated \(a header of 100 bytes in a file of 10\)"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "the header is not JSON"),
        (struct.pack("<Q", 8) + b"[1, 2]  ", "a JSON list, not an object"),
        (struct.pack("<Q", 46) + b'{"__metadata__": {}, "__metadata__": {}}      ', "names '__metadata__' twice"),
    ):
        path.write_bytes(raw)
        with pytest.raises(StateError, match=message):
            load(path)
    with pytest.raises(StateError, match=f"{tmp_path / 'missing.state'}: cannot read the state file"):
        load(tmp_path / "missing.state")


def test_another_spec_is_refused(tmp_path):
    path = save_state(tmp_path / "s.state", random_state(), SPEC, "rwkv7", SHA)
    wider = matrix_state_spec(n_layer=2, n_embd=16, n_head=4, head_size=4)
    with pytest.raises(StateError, match=r"state.0.att_shift has shape \[8\], this model's is \[16\]"):
        load(path, spec=wider)
    deeper = SPEC + [StateTensor(2, "att_shift", (8,))]
    with pytest.raises(StateError, match="holds no state.2.att_shift"):
        load(path, spec=deeper)

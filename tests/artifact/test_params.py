"""params.safetensors: 64-byte-aligned safetensors, mapped without a copy; a damaged file is refused in one line."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from rwkv_edge.artifact.interface import TensorSpec
from rwkv_edge.artifact.params import ALIGNMENT, map_params, save_params
from rwkv_edge.errors import ArtifactError


def weights() -> list[np.ndarray]:
    """Every dtype a bundle stores, with sizes that are no multiple of 64 bytes (so gaps are needed)."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float16),
            rng.integers(-128, 128, (2, 3, 3)).astype(np.int8), rng.integers(0, 256, 13).astype(np.uint8),
            rng.standard_normal((4, 16)).astype(np.float32)]


def test_every_weight_is_an_aligned_view_of_one_mapping(tmp_path):
    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    mapped = map_params(path, 5)
    for want, got in zip(weights(), mapped):
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got.ctypes.data % ALIGNMENT == 0
        assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)  # a view, not a copy
    assert all(np.shares_memory(mapped[0].base, m) for m in mapped)  # one mapping under all of them


def test_any_safetensors_reader_loads_it(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    loaded = load_file(str(path))
    for i, want in enumerate(weights()):
        assert np.array_equal(loaded[f"w{i}"], want)


def test_a_truncated_or_extended_file_is_refused(tmp_path):
    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    data = path.read_bytes()
    for damaged in (data[:-3], data + b"\0" * 64, data[:5]):
        path.write_bytes(damaged)
        with pytest.raises(ArtifactError) as e:
            map_params(path, 5)
        assert "\n" not in str(e.value)


def test_the_weight_count_must_be_the_librarys(tmp_path):
    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    with pytest.raises(ArtifactError, match="holds 5 weights, the library takes 4"):
        map_params(path, 4)


def test_an_unaligned_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "params.safetensors"
    save_file({f"w{i}": w for i, w in enumerate(weights())}, str(path))  # aligned to 8 only: what GPU bundles had
    with pytest.raises(ArtifactError, match="not an aligned rwkv-edge params file"):
        map_params(path, 5)


def test_a_misaligned_entry_is_refused(tmp_path):
    path = tmp_path / "params.safetensors"
    save_params(weights()[:1], path)
    text = path.read_bytes()
    length = struct.unpack("<Q", text[:8])[0]
    header = json.loads(text[8:8 + length])
    header["w0"]["data_offsets"] = [4, 64]  # 60 bytes at offset 4: the right size, not aligned
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + text[8 + length:])
    with pytest.raises(ArtifactError, match="w0 .* not 64-byte aligned"):
        map_params(path, 1)


def _edit_header(path, edit) -> None:
    """Rewrite the header of a params file in place (its data untouched), as a tamperer would."""
    text = path.read_bytes()
    length = struct.unpack("<Q", text[:8])[0]
    header = json.loads(text[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + text[8 + length:])


@pytest.mark.parametrize("shape", [[-3, -5], [2**32, 2**32], [2**62, 4], [3, True], [3.0, 5], "15", [1] * 9])
def test_a_header_claiming_impossible_dimensions_is_one_line(tmp_path, shape):
    """The review's headers: negative dimensions, 2^32 x 2^32 (whose byte count overflows int64), and
    other shapes that are no list of sizes."""
    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    _edit_header(path, lambda header: header["w0"].update(shape=shape))
    with pytest.raises(ArtifactError, match="w0") as e:
        map_params(path, 5)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda specs: [TensorSpec("float16", specs[0].shape), *specs[1:]], r"w0 is float32 \(3, 5\), the library takes float16"),
    (lambda specs: [TensorSpec("float32", (5, 3)), *specs[1:]], r"w0 is float32 \(3, 5\), the library takes float32 \(5, 3\)"),
])
def test_each_weight_is_held_to_what_the_library_takes(tmp_path, change, message):
    """A dtype or a transposed shape that is not the library's: one line before anything runs."""
    path = tmp_path / "params.safetensors"
    save_params(weights(), path)
    specs = [TensorSpec(str(w.dtype), w.shape) for w in weights()]
    assert len(map_params(path, specs)) == 5
    with pytest.raises(ArtifactError, match=f"{message}.*: the weights of another bundle"):
        map_params(path, change(specs))

"""arrays.py: no .npy or .npz header makes rwkv-edge allocate what the file does not hold."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from rwkv_edge.arrays import read_npy, read_npz
from rwkv_edge.errors import ArtifactError, ImageError

TIB = (100000, 3, 4096, 4096)  # 18.3 TiB of float32: the review's header


def npy_bytes(array: np.ndarray, claimed: tuple[int, ...] | None = None) -> bytes:
    """An .npy file of ``array``, its header claiming ``claimed`` instead of the real shape where given."""
    header = np.lib.format.header_data_from_array_1_0(array)
    if claimed is not None:
        header["shape"] = claimed
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + np.ascontiguousarray(array).tobytes()


def npz(path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)


def test_arrays_round_trip(tmp_path):
    a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.ones((2, 5), np.int64))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    assert np.array_equal(read_npy(tmp_path / "a.npy", ImageError), a)
    loaded = read_npz(tmp_path / "ab.npz", ArtifactError)
    assert loaded.keys() == {"a", "b"} and np.array_equal(loaded["a"], a) and np.array_equal(loaded["b"], b)
    assert all(v.flags.c_contiguous for v in loaded.values())


def test_scalars_and_empty_arrays_keep_their_shapes(tmp_path):
    scalar, empty = np.float32(2.5), np.zeros((0, 3), np.float32)
    np.save(tmp_path / "s.npy", scalar)
    np.savez(tmp_path / "se.npz", s=scalar, e=empty)
    assert read_npy(tmp_path / "s.npy", ImageError).shape == ()
    loaded = read_npz(tmp_path / "se.npz", ArtifactError)
    assert loaded["s"].shape == () and loaded["s"] == scalar and loaded["e"].shape == (0, 3)


def test_an_npy_header_claiming_terabytes_is_one_line(tmp_path):
    (tmp_path / "x.npy").write_bytes(npy_bytes(np.zeros(4, np.float32), TIB))
    with pytest.raises(ImageError, match=r"x.npy: its header says float32 \(100000, 3, 4096, 4096\).* 16 bytes follow"):
        read_npy(tmp_path / "x.npy", ImageError)


def test_an_npz_member_claiming_terabytes_is_one_line(tmp_path):
    """An artifact's reference.npz, rewritten and rehashed: numpy itself would try to allocate 18.3 TiB."""
    npz(tmp_path / "r.npz", {"tokens": npy_bytes(np.arange(3)), "logits": npy_bytes(np.zeros(25, np.float32), TIB)})
    with pytest.raises(ArtifactError, match=r"r.npz\[logits.npy\]: its header says float32 .* 100 bytes follow it"):
        read_npz(tmp_path / "r.npz", ArtifactError)


def test_compressed_members_are_refused(tmp_path):
    """A deflated member could expand far past the file's size (a zip bomb); np.savez never compresses."""
    npz(tmp_path / "c.npz", {"a": npy_bytes(np.zeros(1000, np.float32))}, zipfile.ZIP_DEFLATED)
    with pytest.raises(ArtifactError, match="a.npy is compressed or larger than the file"):
        read_npz(tmp_path / "c.npz", ArtifactError)


@pytest.mark.parametrize("data, message", [
    (npy_bytes(np.array([{"a": 1}], dtype=object)), "pickled Python objects"),
    (b"\x93NUMPY\x03\x00" + b"\x00" * 8, r"format version 3\.0"),
    (b"not an npy", "not a readable .npy array"),
])
def test_what_is_no_plain_array_is_one_line(tmp_path, data, message):
    (tmp_path / "x.npy").write_bytes(data)
    npz(tmp_path / "x.npz", {"x": data})
    with pytest.raises(ImageError, match=message):
        read_npy(tmp_path / "x.npy", ImageError)
    with pytest.raises(ArtifactError, match=message):
        read_npz(tmp_path / "x.npz", ArtifactError)

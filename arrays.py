""".npy and .npz files read without trusting their headers.

numpy allocates what an array's header claims before it reads a byte, so a 193-byte file whose header
says (100000, 3, 4096, 4096) asks for 18 TiB. Here each header is read first and held to the bytes
that follow it (a file's size; a .npz member's uncompressed size); only then is the array read,
exactly those bytes. Nothing pickled is ever loaded. Every problem is one line of the caller's error type.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import RwkvEdgeError, one_line

HeaderCheck = Callable[[tuple[int, ...], np.dtype], None]  # raises for an array the caller cannot use
MAX_NPZ_MEMBERS = 10_000


def read_npy(path: Path, error: type[RwkvEdgeError], check: HeaderCheck | None = None) -> np.ndarray:
    """The array of the .npy file ``path``, C-contiguous; ``check(shape, dtype)`` sees its header
    before any of its data is read."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise error(f"{path}: an .npz archive; give one array saved with numpy.save")
        f.seek(0)
        shape, fortran, dtype = _header(f, path, error, check, os.fstat(f.fileno()).st_size)
        array = np.fromfile(f, dtype=dtype, count=math.prod(shape))  # exactly the bytes checked
    return np.asarray(array.reshape(shape, order="F" if fortran else "C"), order="C")  # a 0-d array stays 0-d


def read_npz(path: Path, error: type[RwkvEdgeError]) -> dict[str, np.ndarray]:
    """Every array of the .npz file ``path`` by name: uncompressed members (np.savez), each one's header
    held to its size before it is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > MAX_NPZ_MEMBERS:
                raise error(f"{path}: {len(members)} arrays, more than an .npz of rwkv-edge holds")
            size = os.path.getsize(path)
            for m in members:  # stored as np.savez stores them: what is read is bounded by the file itself
                if m.compress_type != zipfile.ZIP_STORED or m.file_size != m.compress_size or m.file_size > size:
                    raise error(f"{path}: {m.filename} is compressed or larger than the file; rwkv-edge reads "
                                "plain np.savez archives")
            arrays = {}
            for member in members:
                with archive.open(member) as f:
                    shape, fortran, dtype = _header(f, f"{path}[{member.filename}]", error, None, member.file_size)
                    data = f.read(math.prod(shape) * dtype.itemsize)
                array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                arrays[member.filename.removesuffix(".npy")] = np.asarray(array, order="C")  # 0-d stays 0-d
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise error(f"{path}: not a plain .npz of arrays ({one_line(e)})") from None


def _header(f: BinaryIO, where, error: type[RwkvEdgeError], check: HeaderCheck | None,
            size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy stream ``f`` (``size`` bytes in all), left at its data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        shape, fortran, dtype = read(f)
        used = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{where}: not a readable .npy array ({one_line(e)}); save one with numpy.save") from None
    if dtype.hasobject:
        raise error(f"{where}: not a readable .npy array (it holds pickled Python objects, which rwkv-edge never loads)")
    if check is not None:
        check(shape, dtype)
    expected, left = math.prod(shape) * dtype.itemsize, size - used
    if expected != left:
        raise error(f"{where}: its header says {dtype} {shape}, {expected:,} bytes, but {left:,} bytes follow it: "
                    "a truncated or corrupt .npy file")
    return shape, fortran, dtype

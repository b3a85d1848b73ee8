"""Writing an artifact directory: build it beside the old one, swap it in whole, delete only what was ours.

- The new artifact is built in a sibling temporary directory (``.NAME.rwkv-edge-XXXXXXXX``, eight
  random hex digits) and,
  once it is complete and hashed, exchanged with the output directory in one atomic rename (Linux
  ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``; two renames elsewhere). Until
  that moment the previous artifact is intact and verifiable, and after any failure or signal too.
- Deleted are only what the writer can prove it wrote: the files that the previous artifact's
  validated manifest lists, that manifest, verify's reports, and its own temporary directories:
  named exactly ``.NAME.rwkv-edge-`` + eight hex digits, owned by this user, holding the marker file
  whose text names that very directory, and lockable (no live run holds them). Anything else is left
  alone whatever it holds; an output directory holding anything else is refused before work starts.
- One writer per output directory (an advisory lock on it, ``artifact/lock.py``): a second one, or a
  ``verify`` of the directory, makes it fail at once.
- Temporary directories that a killed run left behind are removed by the next run.

What proves a folder is the writer's is its listing (``Listing``): an artifact's is its manifest
(``ARTIFACT``); a folder of another kind (``rwkv-edge package``'s) brings its own and commits with
``commit_files``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import current_umask
from ..errors import ArtifactError
from .lock import lock_directory
from .manifest import MANIFEST, REPORTS, Manifest, parse_manifest, sha256_bytes, sha256_file
from .reader import read_files

TEMP_INFIX = ".rwkv-edge-"  # .NAME.rwkv-edge-XXXXXXXX beside the output directory
TEMP_SUFFIX = re.compile(r"[0-9a-f]{8}")  # the XXXXXXXX: secrets.token_hex(4)
MARKER = ".rwkv-edge-temporary"  # inside a temporary directory while it holds nothing of value
MAX_MARKER_BYTES = 4096
Files = Collection[str]  # the relative names a listing lists (a manifest's: name -> sha256, bytes)

REPORT_PARTIAL = re.compile(r"^\.(parity\.json|parity\.png)\.[A-Za-z0-9_]+\.partial")  # an interrupted report


@dataclass(frozen=True)
class Listing:
    """The file that lists a written folder's files, and so proves which of them the writer may delete."""

    name: str  # the listing's own file, at the folder's top
    read: Callable[[Path], Files]  # the validated files a folder's listing lists; ArtifactError otherwise
    what: str  # what such a folder is called in messages
    option: str  # the command-line option that names the folder
    extras: tuple[str, ...] = ()  # other top-level files of the writer's (verify's reports), unlisted
    partial: re.Pattern | None = None  # what an interrupted write of an extra leaves


ARTIFACT = Listing(MANIFEST, read_files, "rwkv-edge artifact", "-o", REPORTS, REPORT_PARTIAL)


class ArtifactWriter:
    """``with ArtifactWriter(out) as writer:`` build the new artifact in ``writer.dir`` (scratch work in
    ``writer.scratch``), then ``writer.commit(manifest)``. Leaving the block without a commit, by an
    error or a signal, discards the new files and leaves ``out`` as it was."""

    def __init__(self, out_dir: str | Path, log: Callable[[str], None] = print,
                 reads: Iterable[str | Path] = (), listing: Listing = ARTIFACT) -> None:
        """``reads``: the files the build reads (checkpoint, ONNX export), refused inside ``out_dir``;
        ``listing``: what the folder is (an artifact, listed by its manifest, unless told otherwise)."""
        self.requested, self.log, self.reads = Path(out_dir), log, [Path(p) for p in reads]
        self.listing = listing
        self.previous: Files | None = None  # what the artifact in `out` lists, proven ours
        self._locks: list[int] = []
        self._temporary: list[Path] = []
        self._scratch: Path | None = None
        self._created = self._committed = False

    def __enter__(self) -> "ArtifactWriter":
        self.out = _output_directory(self.requested, self.listing)
        for source in self.reads:
            if self.out == source.resolve() or self.out in source.resolve().parents:
                raise ArtifactError(f"{self.requested} holds {source}, which this build reads: write the "
                                    f"{self.listing.what.removeprefix('rwkv-edge ')} to another directory")
        try:
            self._created = not self.out.exists()
            self._locks.append(lock_directory(self.out, create=True))
            self.previous = _previous_artifact(self.out, self.listing)
            _remove_stale(self.out, self.log, self.listing)
            self.dir = self._temporary_directory()
        except BaseException as e:
            self._clean_up()
            if isinstance(e, OSError):
                raise ArtifactError(f"cannot write to {self.out}: {e.strerror or e}") from None
            raise
        return self

    @property
    def scratch(self) -> Path:
        """A temporary directory for intermediate files, removed when the block ends."""
        if self._scratch is None:
            self._scratch = self._temporary_directory()
        return self._scratch

    @property
    def temporary(self) -> bool:
        """Whether the artifact goes into another build's scratch directory, deleted when that build ends."""
        return _marked(self.out.parent)

    def commit(self, manifest: Manifest) -> str:
        """List and hash every file in ``self.dir`` in ``manifest.files``, write the manifest, and swap
        the new artifact in; returns the manifest's sha256 (what ``verify --expect-sha256`` pins)."""
        return sha256_bytes(self.commit_files(lambda names: _manifest_bytes(manifest, self.dir, names)))

    def commit_files(self, encode: Callable[[list[str]], bytes]) -> bytes:
        """Write ``encode(the relative names of every file in self.dir)`` as the listing, flush it all to
        disk, and swap the new folder in; returns the listing's bytes."""
        what = self.listing.what.removeprefix("rwkv-edge ")
        try:
            data = _finish(self.dir, self.listing.name, encode)
            if _previous_artifact(self.out, self.listing) != self.previous:  # changed meanwhile: keep it
                raise ArtifactError(f"{self.out} changed while the new {what} was built; nothing was replaced")
            (self.dir / MARKER).unlink()
            self.dir.chmod(0o777 & ~current_umask())
            _exchange(self.dir, self.out)
        except OSError as e:
            raise ArtifactError(f"cannot write the {what} to {self.out}: {e.strerror}; "
                                "the previous one (if any) is unchanged") from None
        self._committed = True
        _delete_artifact(self.dir, self.previous, self.log, self.listing)  # self.dir now holds the previous one
        _fsync_directory(self.out.parent)
        return data

    def __exit__(self, kind, error, traceback) -> None:
        self._clean_up()
        if isinstance(error, OSError):  # a full disk, a file system gone read-only, ...
            raise ArtifactError(f"writing the {self.listing.what.removeprefix('rwkv-edge ')} for {self.out} "
                                f"failed: {error.strerror or error}; "
                                "the previous one (if any) is unchanged") from None

    def _temporary_directory(self) -> Path:
        path = self.out.parent / f".{self.out.name}{TEMP_INFIX}{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        self._temporary.append(path)
        (path / MARKER).write_text(_marker_text(path))
        self._locks.append(lock_directory(path))
        return path

    def _clean_up(self) -> None:
        """Remove the temporary directories (not the one holding the previous artifact after a swap,
        which commit deletes file by file), a new output directory left empty, and the locks."""
        for directory in self._temporary:
            if not (self._committed and directory == self.dir):
                _discard(directory)
        if self._created and not self._committed:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only if still empty
        for fd in self._locks:
            os.close(fd)  # closing drops the flock
        self._locks.clear()


def check_output_directory(requested: str | Path, listing: Listing = ARTIFACT) -> None:
    """ArtifactError now, before any work, for an output directory the writer refuses whatever it builds:
    a file, the current directory (or one holding it), the root, a directory holding files but no
    listing. Creates nothing; the writer checks again (and the rest) when it starts."""
    out = _checked_output(Path(requested), listing)
    if out.is_dir():
        _occupied(out, listing)


def _output_directory(requested: Path, listing: Listing) -> Path:
    """The real directory to write (symlinks resolved), its parent created; ArtifactError for what
    cannot be such a folder."""
    out = _checked_output(requested, listing)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot write to {requested}: {e.strerror}") from None
    return out


def _checked_output(requested: Path, listing: Listing) -> Path:
    """``requested`` with symlinks resolved; ArtifactError for what cannot be the folder written."""
    out = requested.resolve()
    what, option = listing.what.removeprefix("rwkv-edge "), listing.option
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{requested} is a file, not a directory: give {option} a directory for the {what}")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ArtifactError(f"{requested} is the current directory (or holds it): write the {what} to a "
                            f"subdirectory, e.g. {option} out/model")
    if out.parent == out:
        raise ArtifactError(f"{requested}: the root directory cannot be replaced by an rwkv-edge {what}")
    return out


def _occupied(out: Path, listing: Listing) -> bool:
    """Whether ``out`` holds anything; ArtifactError when it holds files but no listing."""
    if not any(out.iterdir()):
        return False
    if not (out / listing.name).is_file():
        raise ArtifactError(f"{out} is not empty and holds no {listing.what} (no {listing.name}): write to a new "
                            "or empty directory (rwkv-edge never deletes files it did not write)")
    return True


def _previous_artifact(out: Path, listing: Listing) -> Files | None:
    """The validated file list of the folder in ``out`` (None when empty); ArtifactError when ``out``
    holds anything the writer cannot prove it wrote."""
    if not _occupied(out, listing):
        return None
    try:
        files = listing.read(out)
    except ArtifactError as e:
        raise ArtifactError(f"{out} holds a {listing.name} that rwkv-edge cannot read, so it will not replace it "
                            f"(remove the directory yourself, or write elsewhere): {e}") from None
    foreign = _foreign_entries(out, files, listing)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ArtifactError(f"{out} holds files that are not part of its {listing.what} ({shown}): move them "
                            "away or write elsewhere (rwkv-edge never deletes files it did not write)")
    return files


def _foreign_entries(root: Path, files: Files, listing: Listing) -> list[str]:
    """Paths under ``root`` (relative) that are neither the listed files nor rwkv-edge's own."""
    listed = set(files)
    parents = {"/".join(name.split("/")[:i]) for name in listed for i in range(1, name.count("/") + 1)}
    foreign = []
    for current, dirs, files in os.walk(root):
        relative = Path(current).relative_to(root).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        for name in list(dirs):
            path = prefix + name
            if Path(current, name).is_symlink() or path not in parents:
                foreign.append(path)
                dirs.remove(name)
        for name in files:
            path = prefix + name
            ours = path in listed or not prefix and (name == listing.name or name in listing.extras or
                                                     _partial(listing, name))
            if not ours or Path(current, name).is_symlink():
                foreign.append(path)
    return sorted(foreign)


def _partial(listing: Listing, name: str) -> bool:
    return listing.partial is not None and listing.partial.match(name) is not None


def _delete_artifact(directory: Path, files: Files | None, log: Callable[[str], None], listing: Listing) -> None:
    """Delete the ``files`` of the folder in ``directory`` and the writer's own, the listing last
    (a run killed meanwhile leaves what the next run can still prove), then the directory."""
    for name in [*(files or ()), *listing.extras]:
        if _is_regular_file(directory / name):
            (directory / name).unlink()
    for entry in directory.iterdir():
        if _partial(listing, entry.name) and _is_regular_file(entry):
            entry.unlink()
    for current, _, _ in sorted(os.walk(directory), key=lambda walked: -len(walked[0])):
        if Path(current) != directory:
            with contextlib.suppress(OSError):
                os.rmdir(current)  # the empty folders of a .mlpackage
    if _is_regular_file(directory / listing.name):
        (directory / listing.name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
    if directory.exists():
        log(f"warning: left {directory}: it holds files rwkv-edge did not write")


def _remove_stale(out: Path, log: Callable[[str], None], listing: Listing) -> None:
    """Remove the temporary directories that earlier runs on ``out`` left when they were killed: only
    those ``_left_by_a_killed_run`` proves are the writer's, and only once their lock can be taken."""
    prefix = f".{out.name}{TEMP_INFIX}"
    for path in out.parent.iterdir():
        if not (path.name.startswith(prefix) and TEMP_SUFFIX.fullmatch(path.name[len(prefix):])):
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue  # a symlink, a file, or another user's: never ours
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run's
        finally:
            os.close(fd)
        if _marked(path) or not any(path.iterdir()):
            _discard(path)
        else:  # a complete folder: a new one not yet swapped in, or an old one swapped out
            with contextlib.suppress(ArtifactError):
                files = listing.read(path)
                if not _foreign_entries(path, files, listing):
                    _delete_artifact(path, files, log, listing)


def _marker_text(directory: Path) -> str:
    """What the writer's marker says: the name of the very directory it marks."""
    return f"rwkv-edge temporary directory {directory.name}\n"


def _marked(directory: Path) -> bool:
    """Whether ``directory`` holds the marker the writer wrote into it (a regular file naming it)."""
    try:
        fd = os.open(directory / MARKER, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode) and f.read(MAX_MARKER_BYTES) == _marker_text(directory).encode()


def _discard(directory: Path) -> None:
    """Remove one of the writer's temporary directories, its marker last: a run killed meanwhile
    leaves a directory that the next run still recognises (marked, or empty)."""
    if directory.is_symlink() or not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name != MARKER:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (directory / MARKER).unlink(missing_ok=True)
        directory.rmdir()


def _manifest_bytes(manifest: Manifest, directory: Path, names: list[str]) -> bytes:
    """``manifest`` with every file of ``names`` listed with its size and sha256, encoded and checked."""
    manifest.files = {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
                      for name in names}
    data = manifest.encode()
    parse_manifest(data, directory / MANIFEST)  # what readers will check, checked before anything is replaced
    return data


def _finish(directory: Path, listing_name: str, encode: Callable[[list[str]], bytes]) -> bytes:
    """Write ``encode(every file's relative name)`` to ``listing_name``, flush it all to disk."""
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    names = [name for name in names if name != MARKER]
    data = encode(names)
    for name in names:
        _fsync_file(directory / name)
    with open(directory / listing_name, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for current, _, _ in os.walk(directory):
        _fsync_directory(Path(current))
    return data


def _exchange(new: Path, out: Path) -> None:
    """Swap ``new`` and ``out`` atomically where the OS can; ``new`` then holds what ``out`` held."""
    if _rename_exchange(new, out):
        return
    aside = out.parent / f".{out.name}{TEMP_INFIX}{secrets.token_hex(4)}"
    os.rename(out, aside)  # a crash from here to the next rename leaves `out` missing, the old artifact aside
    os.rename(new, out)
    os.rename(aside, new)


def _rename_exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE) / renamex_np(RENAME_SWAP); False where neither is available."""
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), 0x2)  # RENAME_SWAP
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not on this file system
        return False
    raise OSError(code, os.strerror(code))


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs directories
        _fsync_file(path)



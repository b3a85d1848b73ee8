"""Loading a TVM bundle's library from Python: TVM loads the very bytes that were hashed, staged in a
folder this process made for them alone. Each case uses a real shared library whose constructor leaves
a trace (what it saw of the folder it was loaded from), as the adversarial review did (issue 23)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rwkv_edge.artifact import open_artifact
from rwkv_edge.errors import ArtifactError
from rwkv_edge.runtime.tvm_backend import TvmBackend

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the constructor library")

CONSTRUCTOR = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void here(void) {}

/* Runs when the library loads: writes the folder it was loaded from, that folder's lstat mode and owner. */
__attribute__((constructor)) static void trace(void) {
  Dl_info info;
  char path[4096];
  struct stat st;
  if (!dladdr((void *)here, &info)) return;
  strncpy(path, info.dli_fname, sizeof path - 1);
  path[sizeof path - 1] = 0;
  char *folder = dirname(path);
  if (lstat(folder, &st) != 0) return;
  FILE *f = fopen("TRACE", "w");
  if (f) { fprintf(f, "%s\n%o\n%d\n", folder, (unsigned)st.st_mode, (int)st.st_uid); fclose(f); }
}
"""


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """(a shared library whose constructor writes its trace, the trace's path)."""
    trace = tmp_path / "constructor-ran"
    source = tmp_path / "evil.c"
    source.write_text(CONSTRUCTOR.replace("TRACE", str(trace)))
    library = tmp_path / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True)
    return library, trace


@pytest.fixture
def bundle(tvm_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tvm_bundle("v7"), tmp_path / "bundle"))


def test_a_library_swapped_after_the_check_never_runs(bundle, evil):
    """The artifact is opened and hashed; then model.so is replaced (the manifest untouched). What TVM
    would load is read and hashed again at load: refused, and the constructor never runs."""
    library, trace = evil
    artifact = open_artifact(bundle, kind="tvm")
    shutil.copy(library, bundle / "model.so")
    with pytest.raises(ArtifactError, match="model.so: sha256 differs from the manifest .*nothing was loaded"):
        TvmBackend(artifact)
    assert not trace.exists()


def test_the_library_is_staged_in_a_private_folder_of_its_own(bundle, evil, rehash, tmp_path, monkeypatch):
    """The review planted the shared staging folder ($TMPDIR/rwkv-edge-libraries-$UID) beforehand as a
    symlink to a world-writable folder, and rwkv-edge staged the library there. Planted again: the
    library loads from a folder this process made (mode 0700, this user's, no symlink), removed after."""
    library, trace = evil
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    watched = tmp_path / "world-writable"
    watched.mkdir(mode=0o777)
    watched.chmod(0o1777)
    (temporary / f"rwkv-edge-libraries-{os.getuid()}").symlink_to(watched)
    shutil.copy(library, bundle / "model.so")
    rehash(bundle)  # a consistent tamper: the hash check passes and the library loads
    with pytest.raises(ArtifactError, match="TVM cannot load it"):  # the constructor ran; it is no TVM module
        TvmBackend(bundle)
    folder, mode, owner = trace.read_text().split()
    assert Path(folder).parent == temporary and not Path(folder).is_relative_to(watched)
    assert int(mode, 8) == 0o040700 and int(owner) == os.geteuid()  # a directory, not a link; private
    assert not Path(folder).exists() and list(watched.iterdir()) == []

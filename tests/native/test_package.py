"""``rwkv-edge package``: the deployable folder runs its bundle with no Python and no library path, and
produces the greedy text Python's generate does; programs and libraries stripped, the bundle copied as
it is; a folder that is not an earlier package is never touched, an earlier one is replaced whole, and
one killed mid-copy leaves the earlier package as it was and nothing the next run does not remove."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import open_artifact, read_manifest
from rwkv_edge.errors import ArtifactError, PlatformError, StateError
from rwkv_edge.platforms import host_arch
from rwkv_edge.runtime.native_runner import runner_unavailable
from rwkv_edge.runtime.package import RECORD, bundle_arch, package_bundle
from rwkv_edge.state_file import save_state

missing = runner_unavailable(host_arch())
pytestmark = pytest.mark.skipif(missing is not None, reason=f"librwkv_edge cannot be built here: {missing}")
PROMPT = "Once upon a time"
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}  # no LD_LIBRARY_PATH, no Python's


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def package(demo_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package") / "pkg"
    package_bundle(demo_bundle, out, dev=True, log=quiet)
    return out


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sections(path: Path) -> str:
    return subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout


def test_the_folder_runs_with_no_python_and_prints_python_s_greedy_text(package, demo_bundle, cli):
    done = subprocess.run([str(package / "bin" / "rwkv-edge-run"), str(package / "bundle"), "--prompt", PROMPT,
                           "-n", "40", "--temperature", "0"], capture_output=True, env=CLEAN_ENV, cwd="/")
    assert done.returncode == 0, done.stderr
    code, out, _ = cli("generate", str(demo_bundle), "--prompt", PROMPT, "-n", "40", "--temperature", "0")
    assert code == 0
    assert out == PROMPT + done.stdout.decode("utf-8", "replace") + "\n" and len(done.stdout) > 0


def test_the_layout_stripped_and_the_bundle_as_it_is(package, demo_bundle):
    files = tree(package)
    assert {"bin/rwkv-edge-run", "lib/librwkv_edge.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so",
            "dev/include/rwkv_edge.h", "dev/lib/librwkv_edge.a", RECORD} <= set(files)
    assert {name.removeprefix("bundle/"): data for name, data in files.items() if name.startswith("bundle/")} == \
        tree(demo_bundle)  # byte for byte
    open_artifact(package / "bundle", kind="tvm")  # still verifies
    for name in ("bin/rwkv-edge-run", "lib/librwkv_edge.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        assert ".symtab" not in sections(package / name), name  # stripped
    record = json.loads((package / RECORD).read_text())
    assert record["arch"] == host_arch() and sorted(record["files"]) == sorted(set(files) - {RECORD})
    runpath = subprocess.run(["readelf", "-d", str(package / "bin" / "rwkv-edge-run")], capture_output=True,
                             text=True).stdout
    assert "$ORIGIN/../lib" in runpath


def test_a_folder_that_is_not_a_package_is_never_touched(demo_bundle, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    with pytest.raises(ArtifactError, match="holds no rwkv-edge package"):
        package_bundle(demo_bundle, out, log=quiet)
    assert tree(out) == {"notes.txt": b"user data"}
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left


def test_an_earlier_package_is_replaced_whole_unless_it_holds_a_stray_file(demo_bundle, tmp_path, cli):
    out = tmp_path / "pkg"
    code, stdout, _ = cli("package", str(demo_bundle), "--out", str(out))
    assert code == 0 and "bundle" in stdout and "total" in stdout and "MB" in stdout
    assert not (out / "dev").exists()
    code, _, err = cli("package", str(demo_bundle), "--out", str(out), "--dev")  # replaces it
    assert code == 0, err
    assert (out / "dev" / "lib" / "librwkv_edge.a").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # the old one removed, nothing left aside
    (out / "lib" / "extra.so").write_bytes(b"mine")
    code, _, err = cli("package", str(demo_bundle), "--out", str(out))
    assert code == 1 and "not part of its rwkv-edge package (lib/extra.so)" in err
    assert (out / "lib" / "extra.so").read_bytes() == b"mine"


def test_a_run_killed_mid_copy_leaves_the_earlier_package_and_the_next_run_clears_up(demo_bundle, tmp_path):
    out = tmp_path / "pkg"
    package_bundle(demo_bundle, out, log=quiet)
    before = tree(out)
    proc = subprocess.Popen([sys.executable, "-m", "rwkv_edge.cli", "package", str(demo_bundle), "--out", str(out),
                             "--dev"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.lstrip().startswith("copy the bundle"):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert tree(out) == before
    left = [p.name for p in tmp_path.iterdir() if p.name != "pkg"]
    assert len(left) == 1 and left[0].startswith(".pkg.rwkv-edge-")  # the killed run's half-built folder
    package_bundle(demo_bundle, out, dev=True, log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"] and (out / "dev" / "lib" / "librwkv_edge.a").is_file()


def test_a_tuned_state_is_checked_then_carried(demo_bundle, tmp_path):
    manifest = read_manifest(demo_bundle)
    state = {t.input_name: np.full(t.shape, 0.01, np.float32) for t in manifest.state}
    save_state(tmp_path / "other.state", state, manifest.state, manifest.architecture, "0" * 64)
    with pytest.raises(StateError, match="another model"):
        package_bundle(demo_bundle, tmp_path / "pkg", state=tmp_path / "other.state", log=quiet)
    assert not (tmp_path / "pkg").exists()
    good = save_state(tmp_path / "good.state", state, manifest.state, manifest.architecture,
                      manifest.source["sha256"])
    package_bundle(demo_bundle, tmp_path / "pkg", state=good, log=quiet)
    assert (tmp_path / "pkg" / "initial.state").read_bytes() == good.read_bytes()
    done = subprocess.run([str(tmp_path / "pkg" / "bin" / "rwkv-edge-run"), str(tmp_path / "pkg" / "bundle"),
                           "--state-in", str(tmp_path / "pkg" / "initial.state"), "--prompt", PROMPT, "-n", "5"],
                          capture_output=True, env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr


def test_only_linux_bundles_of_known_architectures_package(demo_bundle, tmp_path):
    assert bundle_arch(demo_bundle, "aarch64-linux-gnu") == "aarch64"
    for triple in ("arm64-apple-macos", "aarch64-linux-android", "riscv64-linux-gnu"):
        with pytest.raises(PlatformError, match=f"compiled for {triple}"):
            bundle_arch(demo_bundle, triple)
    with pytest.raises(Exception, match="inside one another"):
        package_bundle(demo_bundle, demo_bundle / "pkg", log=quiet)
    assert not (demo_bundle / "pkg").exists()


no_arm = runner_unavailable("aarch64")


@pytest.mark.skipif(no_arm is not None, reason=f"no aarch64 build: {no_arm}")
def test_an_aarch64_bundle_packages_aarch64_code(tvm_bundle, tmp_path):
    out = tmp_path / "arm"
    package_bundle(tvm_bundle("v7", "aarch64-linux"), out, log=quiet)
    for name in ("bin/rwkv-edge-run", "lib/librwkv_edge.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        header = subprocess.run(["readelf", "-h", str(out / name)], capture_output=True, text=True).stdout
        assert "AArch64" in header, name
        assert ".symtab" not in sections(out / name), name

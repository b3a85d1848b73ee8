"""``rwkv-edge package BUNDLE --out DIR``: a folder that runs a TVM bundle on its device with no Python.

The folder::

    bin/rwkv-edge-run          the command-line program (generate, state files)
    lib/librwkv_edge.so        the C library (rwkv_edge.h), found by the program through its $ORIGIN/../lib
    lib/libtvm_runtime.so      TVM's runtime, from the TVM wheel of the bundle's architecture
    lib/libtvm_ffi.so
    bundle/                    a copy of the bundle (its listed files and manifest.json, as they are)
    initial.state              with --state: a tuned initial state (checked against the bundle first)
    dev/include/rwkv_edge.h    with --dev: the header and the static library, to link an app
    dev/lib/librwkv_edge.a
    rwkv-edge-package.json     what this folder holds: how a later run knows it may replace it

The runtime is built for the bundle's architecture (x86_64 or aarch64, from its target triple) and
its programs and libraries are stripped; the bundle is copied byte for byte (its files are hashed by
the manifest). The folder is written as artifacts are (``artifact/writer.py``, with the package record as
its listing): built beside ``--out`` and swapped in whole, a non-empty ``--out`` that is not an earlier
package refused, an earlier package removed only once the new one is in, what a killed run left
removed by the next.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifact import MANIFEST, ArtifactWriter, check_output_directory, open_artifact
from ..artifact.files import LIBRARY
from ..artifact.writer import Listing
from ..errors import ArtifactError, OptionError, PlatformError, ToolError
from ..platforms import host_arch
from ..state_file import load_state
from .native_runner import ARCHES, NativeBuild, build_native

RECORD = "rwkv-edge-package.json"
FORMAT = "rwkv-edge.package/1"
STATE = "initial.state"
STRIP = {"x86_64": "strip", "aarch64": "aarch64-linux-gnu-strip"}  # on an x86-64 host; an aarch64 host strips its own
PARTS = ("bin", "lib", "bundle", STATE, "dev")  # what the size report names, in this order


@dataclass(frozen=True)
class Package:
    """A folder written by ``package_bundle``."""

    directory: Path
    arch: str
    sizes: dict[str, int]  # part (PARTS) -> bytes

    def report(self) -> str:
        lines = [f"{part:<14}{size / 1e6:10.2f} MB" for part, size in self.sizes.items()]
        return "\n".join([*lines, f"{'total':<14}{sum(self.sizes.values()) / 1e6:10.2f} MB"])


def package_bundle(bundle: str | Path, out: str | Path, state: str | Path | None = None, dev: bool = False,
                   log: Callable[[str], None] = print) -> Package:
    """Write the deployable folder of the TVM bundle ``bundle`` to ``out`` (see the module's docstring)."""
    bundle, out = Path(bundle), Path(out)
    inside = out.resolve() == bundle.resolve() or bundle.resolve() in out.resolve().parents or \
        out.resolve() in bundle.resolve().parents
    if inside:
        raise OptionError(f"--out {out} and the bundle {bundle} lie inside one another: give a folder elsewhere")
    artifact = open_artifact(bundle, kind="tvm")
    manifest = artifact.manifest
    arch = bundle_arch(bundle, manifest.target.triple)
    if manifest.target.device != "cpu":
        raise PlatformError(f"{bundle}: a {manifest.target.device} bundle; the native runtime runs CPU bundles")
    if LIBRARY not in manifest.files:
        raise ArtifactError(f"{bundle}: holds no linked {LIBRARY}: compile it for a Linux target")
    if state is not None:  # before anything is built: a state of another model fails now
        load_state(state, manifest.state, manifest.architecture, manifest.source["sha256"], manifest.vocab_size)
    with ArtifactWriter(out, log, reads=[bundle], listing=PACKAGE) as writer:
        build = build_native(arch, log=log)
        runtime_lib, ffi_lib = _tvm_libraries(build)
        strip = _strip_tool(arch)
        copies = {"bin/rwkv-edge-run": build.run, "lib/librwkv_edge.so": build.shared_library,
                  "lib/libtvm_runtime.so": runtime_lib, "lib/libtvm_ffi.so": ffi_lib}
        if dev:
            copies.update({"dev/include/rwkv_edge.h": build.include / "rwkv_edge.h",
                           "dev/lib/librwkv_edge.a": build.static_library})
        for name, source in copies.items():
            _copy(source, writer.dir / name)
        for name in copies:
            if not name.endswith(".h"):
                _strip(strip, writer.dir / name, debug_only=name.endswith(".a"))
        listed = sum(meta["bytes"] for meta in manifest.files.values())
        log(f"  copy the bundle: {len(manifest.files) + 1} files, {listed / 1e6:.1f} MB")
        for name in [*manifest.files, MANIFEST]:  # the bundle as it is: listed files only, never reports or strays
            _copy(bundle / name, writer.dir / "bundle" / name)
        if state is not None:
            _copy(Path(state), writer.dir / STATE)
        writer.commit_files(lambda files: (json.dumps({"format": FORMAT, "arch": arch, "files": files}, indent=2)
                                           + "\n").encode())
    sizes = {part: _size(out / part) for part in PARTS if (out / part).exists()}
    package = Package(out, arch, sizes)
    log(f"packaged {bundle} for {arch} in {out}:")
    log(package.report())
    log(f"run it: {out / 'bin' / 'rwkv-edge-run'} {out / 'bundle'}" + (f" --state-in {out / STATE}" if state else ""))
    return package


def check_packable(target: object) -> None:
    """PlatformError now, before a long build, where ``target`` (a targets.TARGETS value) makes bundles the
    native runtime does not run: GPU, Core ML, Android (bionic) or another architecture."""
    from ..targets import TvmTarget

    if not isinstance(target, TvmTarget):
        raise PlatformError(f"--with-runtime: {target.name} bundles do not run on the native runtime, which runs "
                            "TVM CPU bundles for Linux")
    bundle_arch(Path(target.name), target.triple)


def bundle_arch(bundle: Path, triple: str) -> str:
    """x86_64 or aarch64: the architecture of a bundle for glibc Linux (its target triple's first part)."""
    arch = triple.split("-")[0]
    if arch not in ARCHES or triple != f"{arch}-linux-gnu":
        raise PlatformError(f"{bundle}: compiled for {triple}; the native runtime packages bundles for "
                            f"{' and '.join(a + '-linux-gnu' for a in ARCHES)}")
    return arch


def check_package_output(out: str | Path) -> None:
    """ArtifactError now, before a long build, for an --out that ``package_bundle`` would refuse."""
    check_output_directory(out, PACKAGE)


def _package_files(directory: Path) -> list[str]:
    """The files the package record in ``directory`` lists; ArtifactError for anything else."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory / RECORD}: not a package record ({e})") from None
    files = record.get("files") if isinstance(record, dict) and record.get("format") == FORMAT else None
    if not isinstance(files, list) or not all(isinstance(f, str) and f != RECORD for f in files):
        raise ArtifactError(f"{directory / RECORD}: not a {FORMAT} record")
    return files


PACKAGE = Listing(RECORD, _package_files, "rwkv-edge package", "--out")


def _tvm_libraries(build: NativeBuild) -> tuple[Path, Path]:
    """libtvm_runtime.so and libtvm_ffi.so, from the TVM wheels ``build`` was linked against."""
    found = []
    for name in ("libtvm_runtime.so", "libtvm_ffi.so"):
        paths = [d / name for d in build.library_dirs if (d / name).is_file()]
        if not paths:
            raise ToolError(f"{name} is not in {', '.join(map(str, build.library_dirs))}, which the {build.arch} "
                            "runtime was built against")
        found.append(paths[0])
    return found[0], found[1]


def _strip_tool(arch: str) -> str:
    tool = STRIP[arch] if arch != host_arch() else "strip"
    if shutil.which(tool) is None:
        package = "binutils" if tool == "strip" else "binutils-aarch64-linux-gnu"
        raise ToolError(f"{tool} is not installed (apt-get install {package})")
    return tool


def _strip(tool: str, path: Path, debug_only: bool = False) -> None:
    """Strip a copied program or library (a static library: its debug sections only, its symbols are its use)."""
    flag = "--strip-debug" if debug_only else "--strip-unneeded"
    done = subprocess.run([tool, flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(f"{tool} failed on {path.name}: {(done.stderr.strip() or 'no output').splitlines()[-1]}")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

"""text_check: the C++ tokenizer, sampler and text stream (runtime/cpp/tests/text_check.cc), built once per
session for this host with g++ and for aarch64 with aarch64-linux-gnu-g++ -static (run under
qemu-aarch64-static). Tests that take the ``text_check`` fixture run on both; a missing tool skips the
architecture, naming it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import rwkv_edge

CPP = Path(rwkv_edge.__file__).resolve().parent / "runtime" / "cpp"
SOURCES = ["tokenizer.cc", "sampler.cc", "text_stream.cc", "tests/text_check.cc"]
ARCHES = {  # arch -> (compiler and its flags, what runs the binary, what to install)
    "host": (["g++"], [], {"g++": "apt-get install g++"}),
    "aarch64": (["aarch64-linux-gnu-g++", "-static"], ["qemu-aarch64-static", "-cpu", "cortex-a53"],
                {"aarch64-linux-gnu-g++": "apt-get install g++-aarch64-linux-gnu",
                 "qemu-aarch64-static": "apt-get install qemu-user-static"}),
}


class TextCheck:
    """Runs the built text_check: ``run(mode, *args)`` -> CompletedProcess (text output)."""

    def __init__(self, arch: str, prefix: list[str]) -> None:
        self.arch = arch
        self.prefix = prefix

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.prefix, *map(str, args)], capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"text_check {args[0]} failed ({result.returncode}): {result.stderr}")
        return result


@pytest.fixture(scope="session", params=list(ARCHES))
def text_check(request, tmp_path_factory) -> TextCheck:
    compiler, runner, tools = ARCHES[request.param]
    missing = [f"{tool} ({install})" for tool, install in tools.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {request.param} text_check: missing {', '.join(missing)}")
    binary = tmp_path_factory.mktemp(f"text-check-{request.param}") / "text_check"
    build = subprocess.run([*compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
                            *(str(CPP / s) for s in SOURCES)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return TextCheck(request.param, [*runner, str(binary)])

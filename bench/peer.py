"""llama.cpp as the bench's peer: its ``llama-bench`` on the same model, converted to GGUF, in the same run.

llama.cpp runs RWKV-7 on CPUs with its own kernels and its own quantized formats; the bench runs its
``llama-bench`` (an optional, separately built program: docs/llamacpp.md says how)
on one GGUF file per weight format, F32 beside our fp32 rows, Q8_0 beside int8, Q4_0 beside int4, with
the same thread count, the same decode length (``-n steps``) and prompt length (``-p prefill``) as our
backends, once before them and once after, so that both sides see the same window of the machine.
Each llama-bench call is one process, whose peak RSS (VmHWM) counts the pages of the model file that
llama.cpp maps and touches; the file is read once just before, so that llama.cpp maps it from the page
cache as our backends read their weights from memory. Nothing else here depends on llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError, ToolError, one_line

BINARY = "llama-bench"
GGUF_TYPES = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_0"}  # our weight format -> llama.cpp's type beside it
GGUF_NAMES = {"fp32": "model-f32.gguf", "int8": "model-q8_0.gguf", "int4": "model-q4_0.gguf"}  # in a --gguf folder
ROUNDS = ("before", "after")  # when the peer runs, relative to our backends
# llama.cpp counts the converter's placeholders for layer 0's unused value-residual weights: 0.013% more on the
# 0.1B shape (188,454,912 against 188,430,336 in the checkpoint, 188,404,992 used)
PARAMETER_SLACK = 0.01


@dataclass(frozen=True)
class LlamaCpp:
    """The peer: llama.cpp's bin folder and one GGUF file per weight format (``llama_cpp`` checks them)."""

    bin_dir: str
    models: dict[str, str]  # our weight format ("fp32", "int8", "int4") -> GGUF file
    repetitions: int = 5  # llama-bench -r: timed repetitions of each test per call

    @property
    def binary(self) -> Path:
        return Path(self.bin_dir) / BINARY


@dataclass
class PeerRun:
    """llama-bench on one GGUF file, every round, and how our rows with the same weights compare."""

    weights: str  # our weight format it stands beside
    gguf_type: str  # F32, Q8_0, Q4_0
    model: str  # the GGUF file
    status: str = "ok"  # "ok" or "failed"
    reason: str = ""
    decode_ms: dict[str, list[float]] = field(default_factory=dict)  # round -> ms/token of every repetition
    prefill_tok_s: dict[str, list[float]] = field(default_factory=dict)  # round -> tokens/s of every repetition
    peak_rss_mib: dict[str, float] = field(default_factory=dict)  # round -> the llama-bench process's peak RSS
    details: dict[str, Any] = field(default_factory=dict)  # llama-bench's build, model type and size, threads
    vs: dict[str, dict[str, float]] = field(default_factory=dict)  # our row -> ours/peer: decode, prefill, rss

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def median_decode_ms(self) -> float:
        return float(np.median([ms for samples in self.decode_ms.values() for ms in samples]))

    def median_prefill_tok_s(self) -> float | None:
        samples = [s for round_ in self.prefill_tok_s.values() for s in round_]
        return float(np.median(samples)) if samples else None

    def max_rss_mib(self) -> float:
        return max(self.peak_rss_mib.values())


def llama_cpp(bin_dir: str | Path, models: str | Path | Mapping[str, str | Path], repetitions: int = 5) -> LlamaCpp:
    """The peer at ``bin_dir`` (llama.cpp's build/bin) with ``models``: a folder holding any of
    model-f32.gguf, model-q8_0.gguf, model-q4_0.gguf, or {weight format (ours or llama.cpp's name): file}.
    ToolError where llama-bench is not there; OptionError for a missing or non-GGUF model file."""
    binary = Path(bin_dir) / BINARY
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ToolError(f"--llama-cpp {bin_dir}: no executable {BINARY} there; build llama.cpp's {BINARY} "
                        "(cmake --build build --target llama-bench) and name its build/bin folder")
    if repetitions < 1:
        raise OptionError(f"llama-bench repetitions must be >= 1, got {repetitions}")
    if isinstance(models, Mapping):
        files = {_our_format(name): Path(path) for name, path in models.items()}
    else:
        folder = Path(models)
        if not folder.is_dir():
            raise OptionError(f"--gguf {folder}: not a folder; give a folder holding {', '.join(GGUF_NAMES.values())} "
                              "or FORMAT=FILE")
        files = {w: folder / name for w, name in GGUF_NAMES.items() if (folder / name).is_file()}
        if not files:
            raise OptionError(f"--gguf {folder}: none of {', '.join(GGUF_NAMES.values())} there")
    for path in files.values():
        _check_gguf(path)
    return LlamaCpp(str(bin_dir), {w: str(p) for w, p in sorted(files.items(), key=lambda i: list(GGUF_TYPES).index(i[0]))},
                    repetitions)


def from_arguments(bin_dir: str | Path | None, gguf: list[str]) -> LlamaCpp:
    """The peer of ``--llama-cpp BIN_DIR`` and ``--gguf`` values (one folder, or FORMAT=FILE each);
    OptionError for one without the other, a folder beside files, a format named twice."""
    if bin_dir is None or not gguf:
        raise OptionError("--llama-cpp BIN_DIR and --gguf go together: llama-bench and the GGUF files it runs")
    values = [gguf_arg(g) for g in gguf]
    if len(values) == 1 and isinstance(values[0], str):
        return llama_cpp(bin_dir, values[0])
    if any(isinstance(v, str) for v in values):
        raise OptionError("--gguf: one folder, or FORMAT=FILE values, not both")
    if len({name for name, _ in values}) != len(values):
        raise OptionError("--gguf: a weight format is named twice")
    return llama_cpp(bin_dir, dict(values))


def gguf_arg(text: str) -> tuple[str, str] | str:
    """A ``--gguf`` value: ``FORMAT=FILE`` -> (our format, file); a folder stays as it is."""
    if "=" not in text:
        return text
    name, path = text.split("=", 1)
    return _our_format(name), path


def _our_format(name: str) -> str:
    """Our weight format for ``name``, ours (int8) or llama.cpp's (Q8_0); OptionError otherwise."""
    by_type = {t.lower(): w for w, t in GGUF_TYPES.items()}
    found = name if name in GGUF_TYPES else by_type.get(name.lower())
    if found is None:
        raise OptionError(f"no peer format {name!r}; choose from "
                          f"{', '.join(f'{w} ({t})' for w, t in GGUF_TYPES.items())}")
    return found


def _check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise OptionError(f"GGUF file {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise OptionError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


# -- running and reading llama-bench ----------------------------------------------------------------
def command(peer: LlamaCpp, model: str, threads: int, steps: int, prefill: int) -> list[str]:
    """llama-bench's argument list: a decode test of ``steps`` tokens and, where ``prefill`` > 0, a prompt
    test of ``prefill`` tokens; JSON on stdout, every weight on the CPU."""
    return [str(peer.binary), "-m", model, "-p", str(prefill), "-n", str(steps), "-t", str(threads),
            "-r", str(peer.repetitions), "-ngl", "0", "-o", "json"]


def parse(text: str) -> list[dict[str, Any]]:
    """The tests of llama-bench's ``-o json`` output; ToolError naming what is wrong otherwise."""
    try:
        tests = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolError(f"{BINARY} printed no JSON ({e.msg} at line {e.lineno}); run it with -o json") from None
    if not isinstance(tests, list) or not tests:
        raise ToolError(f"{BINARY} printed {type(tests).__name__}, not a list of tests")
    for test in tests:
        if not isinstance(test, dict):
            raise ToolError(f"{BINARY}: a test is {type(test).__name__}, not an object")
        for key in ("n_prompt", "n_gen", "samples_ns"):
            if key not in test:
                raise ToolError(f"{BINARY}: a test has no {key!r}")
        samples = test["samples_ns"]
        if not isinstance(samples, list) or not samples or not all(isinstance(s, int) and s > 0 for s in samples):
            raise ToolError(f"{BINARY}: samples_ns must be positive integers, got {samples!r:.60}")
        if not all(isinstance(test[k], int) and test[k] >= 0 for k in ("n_prompt", "n_gen")):
            raise ToolError(f"{BINARY}: n_prompt and n_gen must be integers >= 0")
    return tests


def decode_ms(tests: list[dict[str, Any]]) -> list[float]:
    """ms/token of each repetition of the decode test (no prompt, ``n_gen`` tokens)."""
    test = _one(tests, lambda t: t["n_prompt"] == 0 and t["n_gen"] > 0, "decode (-p 0 -n N)")
    return [ns / test["n_gen"] / 1e6 for ns in test["samples_ns"]]


def prefill_tok_s(tests: list[dict[str, Any]]) -> list[float]:
    """tokens/s of each repetition of the prompt test (``n_prompt`` tokens, nothing generated); [] where there is none."""
    found = [t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0]
    if not found:
        return []
    test = _one(found, lambda t: True, "prompt (-p N -n 0)")
    return [test["n_prompt"] * 1e9 / ns for ns in test["samples_ns"]]


def _one(tests: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    found = [t for t in tests if match(t)]
    if len(found) != 1:
        raise ToolError(f"{BINARY}: expected one {what} test, found {len(found)}")
    return found[0]


def run_process(argv: list[str], poll_s: float = 0.02) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MiB) of ``argv`` run to its end. The peak is the child's
    VmHWM, read every ``poll_s`` while it runs (a high-water mark: a late read still sees an early peak);
    ``wait4``'s ru_maxrss would not do, as it counts the parent's pages the child had before exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)  # returns after exec
        status, peak = Path(f"/proc/{process.pid}/status"), 0.0
        try:
            while process.poll() is None:
                peak = max(peak, _high_water_mib(status))
                time.sleep(poll_s)
        except BaseException:
            process.kill()
            process.wait()
            raise
        out.seek(0), err.seek(0)
        return process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak


def _high_water_mib(status: Path) -> float:
    """VmHWM of /proc/PID/status in MiB; 0 once the process is gone (or a zombie, without memory)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(peer: LlamaCpp, runs: dict[str, PeerRun], round_: str, threads: int, steps: int, prefill: int,
            parameters: int | None = None, log: Callable[[str], None] = print) -> dict[str, PeerRun]:
    """One round: llama-bench on every model of ``peer``, recorded into ``runs`` (created on the first round).
    ``parameters``: our model's count; a GGUF whose count is more than PARAMETER_SLACK away from it is not the
    same model, and its run fails (two models of one shape cannot be told apart this way)."""
    for weights, model in peer.models.items():
        run = runs.setdefault(weights, PeerRun(weights, GGUF_TYPES[weights], model))
        if not run.ok:
            continue
        log(f"llama.cpp {run.gguf_type} ({round_}): {BINARY} -n {steps} -p {prefill} -t {threads} "
            f"-r {peer.repetitions} ...")
        try:
            read_through(model)
            code, out, err, rss = run_process(command(peer, model, threads, steps, prefill))
            if code != 0:
                raise ToolError(f"{BINARY} exited with {code}: {_last_line(err)}")
            tests = parse(out)
            _check_parameters(tests[0].get("model_n_params"), parameters)
            run.decode_ms[round_] = decode_ms(tests)
            run.prefill_tok_s[round_] = prefill_tok_s(tests)
        except (ToolError, OSError) as e:
            run.status, run.reason = "failed", one_line(e)
            log(f"llama.cpp {run.gguf_type}: failed: {run.reason}")
            continue
        run.peak_rss_mib[round_] = rss
        first = tests[0]
        run.details = {k: first.get(k) for k in ("build_commit", "build_number", "cpu_info", "model_type",
                                                 "model_size", "model_n_params", "n_threads", "load_mode")}
        prefill_now = np.median(run.prefill_tok_s[round_]) if run.prefill_tok_s[round_] else None
        log(f"llama.cpp {run.gguf_type} ({round_}): median {np.median(run.decode_ms[round_]):.3f} ms/token"
            + (f", prefill {prefill_now:.0f} tok/s" if prefill_now is not None else "") + f", peak RSS {rss:.0f} MiB")
    return runs


def read_through(path: str | Path, chunk: int = 16 << 20) -> None:
    """Read the file once, so that its pages are in the page cache when llama.cpp maps it: our backends load
    their weights into memory of their own, and the bench's bandwidth probe just before the first round
    evicts the cache (measured: F32 decode 256 ms/token from a cold GGUF file, 23 ms right after)."""
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


def _check_parameters(theirs: Any, ours: int | None) -> None:
    """ToolError where llama-bench's model is not the shape of ours (its parameter count differs by more than
    PARAMETER_SLACK: the converter's layer-0 placeholders add a few)."""
    if ours is None or not isinstance(theirs, int):
        return
    if abs(theirs - ours) > PARAMETER_SLACK * ours:
        raise ToolError(f"the GGUF model has {theirs:,} parameters and the bench's model {ours:,}: "
                        "convert the checkpoint being benched to GGUF")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on stderr)"


# -- beside our rows --------------------------------------------------------------------------------
def compare(peer_runs: list[PeerRun], rows: list[Any]) -> None:
    """Fill each peer run's ``vs``: for every ok row of ours with the same weights, ours/peer of the median
    decode ms/token, the prefill tokens/s and the peak RSS."""
    for run in peer_runs:
        if not run.ok:
            continue
        peer_prefill = run.median_prefill_tok_s()
        for r in rows:
            if r.ok and r.weights == run.weights:
                ratios = {"decode": r.decode_ms["median"] / run.median_decode_ms(),
                          "rss": r.peak_rss_mib / run.max_rss_mib()}
                if r.prefill_tok_s is not None and peer_prefill:
                    ratios["prefill"] = r.prefill_tok_s / peer_prefill
                run.vs[r.backend] = ratios


def table(peer_runs: list[PeerRun]) -> list[str]:
    """The peer's lines of the bench table: one row per GGUF file, then ours/peer per row of ours."""
    if not peer_runs:
        return []
    ok = [r for r in peer_runs if r.ok]
    build = ok[0].details.get("build_commit") if ok else None
    lines = ["", f"peer      llama.cpp {BINARY}" + (f" (build {build})" if build else "")
             + f", rounds {' and '.join(ROUNDS)} our backends; ours/peer: decode ms/token (< 1: ours faster), "
             "prefill tok/s (> 1: ours faster), peak RSS (< 1: ours smaller)",
             f"{'llama.cpp':<12} {'weights':>7} {'decode ms/token':>15} {'per round':>17} {'prefill tok/s':>13} "
             f"{'peak RSS MiB':>12} {'model MB':>9}"]
    for run in peer_runs:
        if not run.ok:
            lines.append(f"{run.gguf_type:<12} {run.weights:>7} failed: {run.reason}")
            continue
        rounds = "/".join(f"{np.median(v):.2f}" for v in run.decode_ms.values())
        prefill = run.median_prefill_tok_s()
        size = run.details.get("model_size")
        lines.append(f"{run.gguf_type:<12} {run.weights:>7} {run.median_decode_ms():15.3f} {rounds:>17} "
                     f"{f'{prefill:.0f}' if prefill else '-':>13} {run.max_rss_mib():12.0f} "
                     f"{f'{size / 1e6:.0f}' if size else '-':>9}")
        if not run.vs:
            lines.append(f"{'':<12} no row of ours with {run.weights} weights in this run")
        for backend, v in run.vs.items():
            prefill_ratio = f"{v['prefill']:.2f}" if "prefill" in v else "-"
            lines.append(f"{'':<12} {backend} / {run.gguf_type}: decode {v['decode']:.2f}, prefill {prefill_ratio}, "
                         f"peak RSS {v['rss']:.2f}")
    return lines

"""``rwkv-edge bench``: every backend's decode and prefill speed and memory against the machine's
memory-bandwidth bound (bench/run.py), each measured in a process of its own (bench/workers.py);
optionally llama.cpp beside them (bench/peer.py)."""

from .bound import bound_ms, weight_bytes_per_token
from .peer import LlamaCpp, PeerRun, llama_cpp
from .options import BACKENDS, BenchOptions
from .report import BackendRun, BenchReport, save_report
from .run import run_bench

__all__ = ["BACKENDS", "BackendRun", "BenchOptions", "BenchReport", "LlamaCpp", "PeerRun", "bound_ms",
           "llama_cpp", "run_bench", "save_report", "weight_bytes_per_token"]

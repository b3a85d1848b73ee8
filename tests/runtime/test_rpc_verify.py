"""verify over TVM RPC: the parity rollout on a device behind an RPC server on 127.0.0.1, native
and under qemu-aarch64 (a stand-in for a board; its timings mean nothing), and through a tracker."""

from __future__ import annotations

import importlib.util

import pytest

from rwkv_edge.errors import ToolError
from rwkv_edge.model import LANGUAGE_ARCHITECTURES
from rwkv_edge.runtime.rpc_server import emulation_unavailable_reason, rpc_server, rpc_tracker
from rwkv_edge.runtime.rpc_client import Remote
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def bundles(tvm_bundle):
    """bundles(target) -> the session's v7 bundle for that target."""
    return lambda target: tvm_bundle("v7", target)


def test_verify_through_a_native_rpc_server(bundles):
    with rpc_server() as (host, port):
        report = verify_artifact(bundles("x86_64-host"), steps=16, greedy_tokens=16, remote=Remote(f"{host}:{port}"),
                                 log=quiet)
        assert report.passed, report.summary()
        assert any(f"RPC server {host}:{port}" in line for line in report.what_ran)
        timing = report.details["decode_ms"]  # measured on the device by TVM's time_evaluator
        assert f"RPC server {host}:{port}" in timing["where"] and len(timing["samples"]) == 20
        assert all(t > 0 for t in timing["samples"])
        # the session was released: the server (one session at a time) takes the next client
        assert verify_artifact(bundles("x86_64-host"), steps=2, greedy_tokens=0, remote=Remote(f"{host}:{port}"),
                               log=quiet).passed


def test_verify_an_aarch64_bundle_on_an_emulated_board(bundles):
    reason = emulation_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with rpc_server(emulate="cortex-a53") as (host, port):
        report = verify_artifact(bundles("aarch64-linux"), steps=16, greedy_tokens=0, remote=Remote(f"{host}:{port}"),
                                 log=quiet)
    assert report.passed, report.summary()
    assert report.n_steps == 16


def test_every_version_prefills_on_an_emulated_board(tvm_bundle):
    """aarch64 bundles with a prefill function (GEMMs on NEON): one call of 8 tokens equals 8 steps of
    PyTorch's rollout, for v4-v7, on one RPC server under qemu (a server serves sessions in turn)."""
    reason = emulation_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with rpc_server(emulate="cortex-a53") as (host, port):
        for version in LANGUAGE_ARCHITECTURES:
            report = verify_artifact(tvm_bundle(version, "aarch64-linux", prefill=8), steps=8, greedy_tokens=0,
                                     remote=Remote(f"{host}:{port}"), log=quiet)
            assert report.passed, f"{version}: {report.summary()}"
            assert any(line.startswith("prefill graph: 8 tokens in one call") for line in report.what_ran), version


@pytest.mark.skipif(importlib.util.find_spec("tornado") is None, reason="TVM's RPC tracker needs tornado")
def test_verify_through_a_tracker(bundles):
    with rpc_tracker() as tracker, rpc_server(tracker=tracker, key="pc") as _:
        remote = Remote(f"{tracker[0]}:{tracker[1]}", key="pc")
        assert verify_artifact(bundles("x86_64-host"), steps=8, greedy_tokens=0, remote=remote, log=quiet).passed


def test_a_missing_server_is_one_clear_error(bundles):
    from rwkv_edge.runtime.rpc_server import free_port

    with pytest.raises(ToolError, match="no TVM RPC server at 127.0.0.1"):
        verify_artifact(bundles("x86_64-host"), steps=2, remote=Remote(f"127.0.0.1:{free_port()}"), log=quiet)

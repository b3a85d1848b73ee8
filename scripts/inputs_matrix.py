"""Every input form through every build: tiny models in each supported source layout, each exported to
ONNX, compiled for x86_64-host (TVM) and ios-coreml (Core ML), and each artifact verified.

The sources are made the way the input tests make them (tests/model/test_huggingface.py and
tests/model/gguf_files.py): a transformers RwkvForCausalLM folder (sharded safetensors), an rwkv7-hf
folder from its own converter (head size 32, where its GroupNorm eps differs), a flash-linear-attention
RWKV-6 folder, the -HF RWKV-5 and RWKV-6 layouts, and GGUF rwkv6 (Q8_0, rescaled layers) and rwkv7 (Q4_0)
files, plus the llama.cpp-converted Q4_0 golden file. Prints one line per build and verify. Run (about
fifteen minutes on two cores):

    python scripts/inputs_matrix.py --work /tmp/inputs-matrix
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"onnx": ["export", "onnx"], "tvm": ["compile", "--target", "x86_64-host"],
          "coreml": ["compile", "--target", "ios-coreml"]}


def make_sources(work: Path) -> dict[str, Path]:
    sys.path[:0] = [str(ROOT / "tests" / "model")]
    import test_huggingface as hf  # noqa: E402  (the tests' source makers)
    from gguf_files import write_gguf
    from rwkv_edge.model.synthetic import make_checkpoint

    import torch

    sources = {}
    hf._transformers_model(rescale_every=0).save_pretrained(work / "transformers-rwkv4", max_shard_size="60KB")
    sources["transformers RWKV-4 (sharded)"] = work / "transformers-rwkv4"
    sources["rwkv7-hf RWKV-7 (head 32)"] = hf._rwkv7_hf_folder(work, head_size=32)[1]
    sources["fla RWKV-6"] = hf._fla_rwkv6_folder(work)[1]
    for version, layer in (("v5", hf.HF_V5_LAYER), ("v6", hf.HF_V6_LAYER)):
        official = make_checkpoint(version, n_layer=2, n_embd=hf.C, vocab_size=hf.VOCAB, head_size=32, seed=2)
        names = dict(hf.HF_TOP)
        for i in range(2):
            names.update({f"rwkv.blocks.{i}.{a}": f"blocks.{i}.{b}" for a, b in layer.items()})
        folder = work / f"hf-{version}"
        folder.mkdir()
        torch.save({a: official[b] for a, b in names.items()}, folder / "pytorch_model.bin")
        (folder / "config.json").write_text(json.dumps({
            "model_type": f"rwkv{version[1]}", "architectures": [f"Rwkv{version[1]}ForCausalLM"], "vocab_size": hf.VOCAB,
            "hidden_size": hf.C, "num_hidden_layers": 2, "attention_hidden_size": hf.C, "head_size": 32,
            "intermediate_size": None, "layer_norm_epsilon": 1e-5, "rescale_every": 6, "head_size_divisor": 8}))
        sources[f"-HF RWKV-{version[1]}"] = folder
    v6 = make_checkpoint("v6", n_layer=2, n_embd=64, vocab_size=256, head_size=32, seed=4)
    write_gguf(v6, work / "rwkv6-q8_0.gguf", "rwkv6", "Q8_0", rescale_every=1)
    sources["GGUF rwkv6 Q8_0 (rescaled)"] = work / "rwkv6-q8_0.gguf"
    v7 = make_checkpoint("v7", n_layer=2, n_embd=64, vocab_size=256, head_size=32, seed=5)
    write_gguf(v7, work / "rwkv7-q4_0.gguf", "rwkv7", "Q4_0")
    sources["GGUF rwkv7 Q4_0"] = work / "rwkv7-q4_0.gguf"
    sources["GGUF rwkv7 Q4_0 (llama.cpp's)"] = ROOT / "tests" / "data" / "rwkv7-tiny-q4_0.gguf"
    return sources


def cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "rwkv_edge.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    for label, source in make_sources(args.work).items():
        for build, command in BUILDS.items():
            out = args.work / "out" / f"{source.stem}-{build}"
            code, text = cli(*command, str(source), "-o", str(out))
            if code:
                print(f"{label:32} {build:7} BUILD FAILED: {text.strip().splitlines()[-1]}", flush=True)
                continue
            code, text = cli("verify", str(out))
            verdict = next((line.strip() for line in text.splitlines() if line.strip().startswith(("PASS", "FAIL"))), "")
            print(f"{label:32} {build:7} {'verified' if code == 0 else 'VERIFY FAILED'}: {verdict}", flush=True)


if __name__ == "__main__":
    main()

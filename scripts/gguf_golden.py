"""The independent check of the GGUF loader: llama.cpp's own converter and quantizer write the files, llama.cpp
computes the logits, and rwkv-edge must read the same weights and compute the same numbers.

Makes a tiny RWKV-7 (2 layers x 64, head size 64, the World vocabulary of 65536) from a fixed seed with
model/synthetic.py, maps it to the Hugging Face layout llama.cpp's converter reads with rwkv7-hf's own
converter (a test dependency; it writes the World vocabulary beside the weights), converts that with
llama.cpp's convert_hf_to_gguf.py to F32, quantizes it with llama-quantize --pure to Q8_0 and Q4_0 (every
matrix), and has llama.cpp compute the logits of the same tokens (scripts/llama_logits.cpp, built here
against libllama.so; docs/llamacpp.md builds llama.cpp). Then:

- the F32 GGUF opened by rwkv-edge gives back the checkpoint's tensors exactly;
- every Q8_0 / Q4_0 matrix's blocks equal the integers and scales ``quantize.py`` gives the opened
  matrix (what an int8 / int4 bundle in groups of 32 stores);
- logits of the PyTorch model, the onnxruntime export and the TVM bundle (x86_64-host) of each GGUF
  against llama.cpp's: max|d| / std and top-1 agreement over the tokens.

With ``--golden DIR`` it copies what the CI test (tests/model/test_gguf_llamacpp.py) reads: the Q4_0 file
and llama.cpp's logits of its first four tokens at every 16th id. CI has no llama.cpp; it regenerates the checkpoint from
the seed. (The versioned file was converted from a folder another renamer wrote; what this script makes
has the same tensors, byte for byte, and the same llama.cpp logits, and differs only in the tokenizer's
chat template and padding-token metadata.) Run (about two minutes on two cores):

    python scripts/gguf_golden.py --llama-cpp PATH/llama.cpp --python PATH/llama-venv/bin/python \\
        --work /tmp/gguf-golden [--golden tests/data]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

SEED, N_LAYER, N_EMBD, HEAD_SIZE, VOCAB = 7, 2, 64, 64, 65536
TOKENS = [0, 510, 4600, 33, 11, 10250, 3319, 21887, 261, 59, 45, 1000, 65535, 2, 40, 30000]
GOLDEN_POSITIONS, GOLDEN_STRIDE = 4, 16  # llama.cpp's logits kept for CI: the first rows, every 16th id
# (llama.cpp 0.3.36 runs head size 32 differently from 64 after the first token: its RWKV-7 files use 64)


def tiny_checkpoint() -> dict[str, torch.Tensor]:
    from rwkv_edge.model.synthetic import make_checkpoint

    return make_checkpoint("v7", n_layer=N_LAYER, n_embd=N_EMBD, head_size=HEAD_SIZE, vocab_size=VOCAB, seed=SEED)


def run(cmd: list, **kw) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_files(args) -> dict[str, Path]:
    from rwkv_edge.model.synthetic import save_checkpoint

    work, llama = args.work, args.llama_cpp
    work.mkdir(parents=True, exist_ok=True)
    pth = save_checkpoint(tiny_checkpoint(), work / "tiny.pth")
    to_hugging_face(pth, work / "hf")
    files = {"F32": work / "tiny-f32.gguf"}
    run([args.python, llama / "convert_hf_to_gguf.py", work / "hf", "--outtype", "f32", "--outfile", files["F32"]],
        stdout=subprocess.DEVNULL)
    for kind in ("Q8_0", "Q4_0"):
        files[kind] = work / f"tiny-{kind.lower()}.gguf"
        run([llama / "build/bin/llama-quantize", "--pure", files["F32"], files[kind], kind], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    dump = work / "llama_logits"
    run(["g++", "-O2", "-std=c++17", Path(__file__).with_name("llama_logits.cpp"), "-o", dump, f"-I{llama}/include",
         f"-I{llama}/ggml/include", f"-L{llama}/build/bin", "-lllama", f"-Wl,-rpath,{llama}/build/bin"])
    for path in files.values():
        run([dump, path, path.with_suffix(".logits"), ",".join(map(str, TOKENS)), "2"])
    return files


def to_hugging_face(pth: Path, out: Path) -> None:
    """The RWKV-7 Hugging Face folder of ``pth``, by rwkv7-hf's converter, with the World vocabulary."""
    from rwkv7_hf import converter

    vocab = Path(__import__("rwkv").__file__).parent / "rwkv_vocab_v20230424.txt"
    converter.convert(argparse.Namespace(
        input=str(pth), output=str(out), vocab_file=str(vocab), precision="fp32", attn_mode="chunk",
        adapter_layout="reference", runtime_package_version="0.9.0", fuse_norm=False, max_shard_size="1000GB",
        low_memory=False))


def compare(files: dict[str, Path], work: Path) -> dict:
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model import model_from_checkpoint
    from rwkv_edge.model.sources import open_checkpoint
    from rwkv_edge.quantize import quantize
    from rwkv_edge.runtime.registry import open_backend

    source = tiny_checkpoint()
    report = {}
    for kind, path in files.items():
        row = {}
        opened = open_checkpoint(path)
        if kind == "F32":
            row["tensors equal to the .pth"] = all(torch.equal(opened.tensors[k], source[k]) for k in opened.tensors)
            row["tensors missing"] = sorted(set(source) - set(opened.tensors))
        else:
            bits = 8 if kind == "Q8_0" else 4
            equal = [_blocks_equal(path, name, quantize(opened.tensors[name].numpy(), bits, 32))
                     for name in opened.stored.types]
            row["matrices whose int%d integers and scales equal the GGUF blocks" % bits] = f"{sum(equal)} of {len(equal)}"
            row["stored"] = opened.stored.report(opened.stored.format, 32)
        theirs = np.fromfile(path.with_suffix(".logits"), np.float32).reshape(len(TOKENS), VOCAB)
        model = model_from_checkpoint(opened)
        with torch.inference_mode():
            ours = model(torch.tensor(TOKENS))[0].numpy()
        row["torch"] = _parity(ours, theirs)
        weights = {"F32": "fp32", "Q8_0": "int8", "Q4_0": "int4"}[kind]
        export_onnx(path, work / f"onnx-{kind}", OnnxOptions(prefill_chunk=0), log=lambda _: None)
        row["onnxruntime"] = _parity(_roll(open_backend(work / f"onnx-{kind}", "onnxruntime")), theirs)
        compile_tvm(path, work / f"tvm-{kind}", TvmOptions(weights=weights, compute="fp32"), log=lambda _: None)
        row["tvm x86_64-host"] = _parity(_roll(open_backend(work / f"tvm-{kind}", "tvm")), theirs)
        report[kind] = row
        print(kind, json.dumps(row, indent=1), flush=True)
    return report


def _roll(backend) -> np.ndarray:
    state, rows = backend.init_state(), []
    for token in TOKENS:
        logits, state = backend.step(token, state)
        rows.append(np.asarray(logits, np.float32).reshape(-1))
    return np.stack(rows)


def _parity(ours: np.ndarray, theirs: np.ndarray) -> dict:
    d = np.abs(ours - theirs)
    return {"max|d|/std": float(d.max() / theirs.std()), "first token": float(d[0].max() / theirs[0].std()),
            "top-1": f"{int((ours.argmax(-1) == theirs.argmax(-1)).sum())}/{len(theirs)}"}


def gguf_blocks(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(integers (N, K) int8, scales (N, K / 32) fp16) of a Q8_0 / Q4_0 matrix of a GGUF file (official name)."""
    from gguf import GGUFReader

    from rwkv_edge.model.gguf import RENAMED, RENAMED_IN_LAYERS, stored_blocks

    reverse = {v: k for k, v in RENAMED.items()}
    if name not in reverse:
        layer, rest = name.split(".", 2)[1:]
        reverse[name] = f"blk.{layer}." + {v: k for k, v in RENAMED_IN_LAYERS.items()}[rest]
    t = next(t for t in GGUFReader(path).tensors if t.name == reverse[name])
    return stored_blocks(t.data, t.tensor_type.name)


def _blocks_equal(path: Path, name: str, found) -> bool:
    q, d = gguf_blocks(path, name)
    return bool(np.array_equal(q, found.values) and np.array_equal(d, found.scales))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree with build/bin")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="the Python with llama.cpp's gguf-py")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--golden", type=Path, help="copy the Q4_0 file and llama.cpp's first logits here")
    args = p.parse_args()
    files = build_files(args)
    report = compare(files, args.work)
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    if args.golden:
        shutil.copyfile(files["Q4_0"], args.golden / "rwkv7-tiny-q4_0.gguf")
        logits = np.fromfile(files["Q4_0"].with_suffix(".logits"), np.float32).reshape(len(TOKENS), VOCAB)
        np.save(args.golden / "rwkv7-tiny-q4_0.llama-logits.npy", logits[:GOLDEN_POSITIONS, ::GOLDEN_STRIDE])


if __name__ == "__main__":
    main()

"""``rwkv-edge``: a thin command line over the library. Its backend choices and flags come from
runtime/registry.py; heavy imports (torch, TVM, onnxruntime, coremltools) happen inside commands."""

from __future__ import annotations

import argparse
import codecs
import json
import math
import re
import signal
import sys
from pathlib import Path

from .. import __version__
from ..architectures import IMAGE, LANGUAGE, detect
from ..atomic import check_writable
from ..bundled import DEMO_CHECKPOINT, SAMPLE_IMAGES, VISION_DEMO_CHECKPOINT
from ..contract import MAX_CHUNK, MAX_IMAGE_SIZE
from ..errors import CheckpointError, OptionError, RwkvEdgeError, StateError, printable
from ..targets import get_target
from ..targets.coreml import EXECUTORS
from ..runtime.registry import BACKENDS, CHECKPOINT_BACKEND, artifact_directory, default_entry, in_words, takers
from ..weights import COMPUTES, GROUP_SIZES, WEIGHT_FORMATS, weight_format

MAX_TOKENS = 1_000_000  # rollout, greedy and generation lengths: larger is a typo, not a request
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")  # classify: a leading path with one of these is the model
BENCH_BACKENDS = tuple(e.name for e in BACKENDS.values() if e.bench)  # bench.BACKENDS, without importing the bench
BENCH_DEFAULT = tuple(e.name for e in BACKENDS.values() if e.bench and e.bench_default)  # bench.DEFAULT_BACKENDS
MAX_OPSET = 28  # onnx 1.23's newest (a test checks); onnxruntime 1.32 ran exports at 18 to 28 (measured)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up as Ctrl-C does
    try:
        return args.run(args) or 0
    except RwkvEdgeError as e:  # one line, whatever a file's text in it holds
        print(f"rwkv-edge: error: {printable(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rwkv-edge: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkv-edge",
        description="Export RWKV models to edge devices and prove the artifacts compute what PyTorch computes.",
    )
    parser.add_argument("--version", action="version", version=f"rwkv-edge {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="detected architecture and full config of a checkpoint (language or vision)")
    _checkpoint_arg(p)
    p.add_argument("--json", action="store_true", help="print the config as JSON")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("generate", help="generate text from a checkpoint or an exported artifact")
    _source_arg(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("-n", type=_bounded_int(1, MAX_TOKENS), default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=_temperature, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=_probability, default=0.85, help="nucleus sampling mass, in (0, 1] (default 0.85)")
    p.add_argument("--seed", type=_bounded_int(0, 2**64 - 1), default=0, help="sampling seed, 0 to 2**64-1 (default 0)")
    p.add_argument("--top-k", type=_bounded_int(0, 2**31 - 1), default=0,
                   help="keep at most the K most likely tokens before top-p; 0 = no limit (default 0)")
    p.add_argument("--presence-penalty", type=_float, default=0.0,
                   help="subtracted from the logit of every token already generated (default 0)")
    p.add_argument("--frequency-penalty", type=_float, default=0.0,
                   help="times a token's (decayed) count of generations, subtracted from its logit (default 0)")
    p.add_argument("--penalty-decay", type=_probability, default=1.0,
                   help="every count is multiplied by this at each token, in (0, 1]; 1 = no decay (default 1)")
    p.add_argument("--stop", action="append", default=[], type=_stop_text, metavar="TEXT",
                   help="stop where the generated text contains TEXT (repeatable); the text before it is printed")
    p.add_argument("--ignore-eos", action="store_true",
                   help="go on past the tokenizer's end-of-text token (World, 20B: 0); by default generation stops there")
    p.add_argument("--state-in", type=Path, metavar="FILE",
                   help="start from the state (and logits) of a state file saved with --state-out by this model; "
                        "the prompt may then be empty")
    p.add_argument("--state-out", type=_output_file, metavar="FILE",
                   help="save the state and logits after the last generated token to a state file (docs/native.md)")
    _tokenizer_args(p)
    _backend_arg(p)
    p.add_argument("--threads", type=_bounded_int(1, 4096),
                   help=f"{in_words([e.name for e in takers('threads')])} intra-op threads (default: torch one per "
                        "step of a model below ~1e9 parameters, else torch's default; onnxruntime its own; native TVM's)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("trace", help="run step over tokens from the initial state and save logits and state, or "
                                     "a vision model over images and save its logits")
    p.add_argument("source", nargs="?", type=Path,
                   help="checkpoint file or artifact directory (default: the bundled RWKV-7 demo model; with "
                        "--images, the bundled Vision-RWKV demo model)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--tokens", type=_token_list, help="comma-separated token ids, e.g. 1,2,3")
    what.add_argument("--images", type=Path, metavar="FILE.npy",
                      help="a Vision-RWKV model: images (N, 3, H, W) float32, already normalised; writes logits "
                           "(N, classes), or features (N, C, H/p, W/p) for a backbone")
    p.add_argument("-o", "--out", required=True, type=_output_file,
                   help="output .npz (tokens, logits, state_out.*; with --images logits or features)")
    _backend_arg(p)
    p.set_defaults(run=cmd_trace)

    p = sub.add_parser("classify", help="the most probable classes of images (PNG, JPEG, ...) under a Vision-RWKV model",
                       usage="rwkv-edge classify [-h] [--top K] [--image-size N] [--json] [--samples] [CHECKPOINT] "
                             "[IMAGE ...]")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="a Vision-RWKV checkpoint (.pth, .pt or .safetensors) or artifact directory (default: the "
                        "bundled demo model, which tells ten shapes and textures apart), then one or more image files")
    p.add_argument("--samples", action="store_true",
                   help=f"also classify the sample images installed with the demo model "
                        f"({', '.join(p.name for p in SAMPLE_IMAGES)}, in {SAMPLE_IMAGES[0].parent})")
    p.add_argument("--top", type=_bounded_int(1, 1000), default=5, metavar="K", help="classes shown per image (default 5)")
    p.add_argument("--image-size", type=_bounded_int(1, MAX_IMAGE_SIZE), metavar="N",
                   help="crop size after resizing the shorter side to N * 256 / 224 (default: the model's "
                        "trained size); a multiple of the patch size")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=cmd_classify)

    export = sub.add_parser("export", help="export a checkpoint to a deployable format").add_subparsers(
        required=True, metavar="FORMAT")
    p = export.add_parser("onnx", help="single-step ONNX graph (+ prefill graph) with the state as named I/O")
    _checkpoint_arg(p)
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    p.add_argument("--weights", choices=list(WEIGHT_FORMATS),
                   help="weight format: fp32, fp16 (fp16 compute), int8 or int4 (the projections and head quantized, "
                        "onnxruntime's MatMulNBits, fp32 compute); the state stays fp32 (default fp32; a GGUF "
                        "of Q8_0 / Q4_0 matrices: int8 / int4, as it stores them)")
    _group_size_arg(p)
    p.add_argument("--prefill-chunk", type=_bounded_int(0, MAX_CHUNK), default=16, metavar="T",
                   help="tokens per prefill call; 0 exports no prefill graph (default 16)")
    p.add_argument("--prefill-all-logits", action="store_true", help="prefill returns the logits of all T positions")
    p.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch axis instead of batch 1")
    p.add_argument("--opset", type=_bounded_int(18, MAX_OPSET), default=18,
                   help=f"ONNX opset, 18 to {MAX_OPSET} (default 18)")
    p.add_argument("--image-size", type=_bounded_int(1, MAX_IMAGE_SIZE), metavar="N",
                   help="image models: the graph's fixed resolution, N x N px, a multiple of the patch size "
                        "(default: the checkpoint's trained size)")
    p.set_defaults(run=cmd_export_onnx)

    p = sub.add_parser("compile", help="compile a checkpoint or an ONNX export for a deployment target "
                                       "(see `rwkv-edge targets`)")
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help="checkpoint (.pth / .safetensors, a Hugging Face model folder or a GGUF file), or for TVM "
                        "targets an ONNX export (its directory or model.onnx); default: the bundled demo model")
    p.add_argument("--target", required=True,
                   help="target name, e.g. x86_64-host, aarch64-linux, raspberry-pi-5, cuda-sm90, apple-m-metal, ios-coreml")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    p.add_argument("--weights", choices=list(WEIGHT_FORMATS),
                   help="weight format (default: the target's, an ONNX export's, or a GGUF's Q8_0 / Q4_0 as int8 / "
                        "int4): TVM CPU fp32, int8 or int4 "
                        "(the project's quantizer, fp32 compute); TVM GPU fp32, fp16, int8 or int4 (GEMV weights, "
                        "summed in fp32); Core ML fp16 (fp16 compute), fp32 (fp32 compute), int8 or int4 (the project's quantizer, "
                        "iOS 18 / macOS 15), fp16 compute")
    _group_size_arg(p)
    p.add_argument("--stateful", action="store_true",
                   help="Core ML: keep the state in Core ML states (fp16, iOS 18 / macOS 15) instead of explicit fp32 I/O")
    p.add_argument("--compute-units", help="Core ML: ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE (default: the target's)")
    p.add_argument("--deployment", help="Core ML: minimum deployment target, e.g. iOS17, iOS18, macOS15")
    p.add_argument("--prefill-chunk", type=_bounded_int(0, MAX_CHUNK), metavar="T",
                   help="tokens per call of the prefill function; 0 for none. Core ML (iOS 18 / macOS 15): default 16; "
                        "TVM CPU targets: a checkpoint is exported with it (default 32), an ONNX export's own prefill "
                        "graph is used (none: steps only) unless T is given")
    p.add_argument("--no-schedules", action="store_true",
                   help="TVM: TVM's default lowering instead of the project's schedules (slow; for comparison)")
    p.add_argument("--compute", choices=[c.name for c in COMPUTES.values() if not c.half],  # TVM CPU's
                   help="TVM CPU, int8/int4 weights: int8 (activations rounded to int8 per group, integer dot "
                        "products: ARM sdot, x86 AVX-512 VNNI) or fp32 (weights dequantized in registers); "
                        "default int8 where the target has the instruction (see `rwkv-edge targets`)")
    p.add_argument("--image-size", type=_bounded_int(1, MAX_IMAGE_SIZE), metavar="N",
                   help="Core ML, image models: the square input resolution, a multiple of the patch size "
                        "(default: the checkpoint's; ONNX exports fix theirs with `export onnx --image-size`)")
    p.add_argument("--with-runtime", metavar="DIR", type=Path, dest="package_out",
                   help="then package the bundle with the native runtime into DIR, as `rwkv-edge package` does")
    _package_args(p, required=False)
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("package", help="a folder that runs a TVM bundle on its device without Python: the C "
                                       "runtime built for the bundle's architecture, TVM's runtime and the bundle")
    p.add_argument("bundle", type=Path, help="a TVM bundle for x86_64-linux-gnu or aarch64-linux-gnu (from `compile`)")
    _package_args(p, required=True)
    p.set_defaults(run=cmd_package)

    p = sub.add_parser("targets", help="list the deployment targets and their settings")
    p.set_defaults(run=cmd_targets)

    p = sub.add_parser("verify", help="roll out an artifact against its PyTorch model; write parity.json/.png")
    p.add_argument("artifact", type=Path, help="artifact directory (from `export onnx` or `compile`), or its .mlpackage")
    p.add_argument("--steps", type=_bounded_int(1, MAX_TOKENS), default=64, help="rollout length (default 64)")
    p.add_argument("--greedy-tokens", type=_bounded_int(0, MAX_TOKENS), default=128,
                   help="greedy generation length, 0 to skip (default 128)")
    p.add_argument("--expect-sha256", type=_sha256, metavar="HEX",
                   help="the manifest's sha256 printed when the artifact was built: anything else fails before it loads")
    p.add_argument("--against-checkpoint", nargs="?", const=True, default=False, metavar="PATH",
                   help="compare with the PyTorch model run live (needs torch): the checkpoint the manifest names, "
                        "or PATH; default: the reference rollout the artifact carries (no torch, no checkpoint)")
    executor, remote = (in_words([e.label for e in takers(option)]) for option in ("executor", "remote"))
    p.add_argument("--executor", choices=EXECUTORS,
                   help=f"{executor}: predict (macOS, Apple's runtime) or mil (coremltools value inference; "
                        "default off macOS)")
    p.add_argument("--rpc", type=_address, metavar="HOST:PORT",
                   help=f"{remote}: run the bundle on the device behind this TVM RPC server (port 1-65535)")
    p.add_argument("--tracker", type=_address, metavar="HOST:PORT",
                   help=f"{remote}: ask this RPC tracker for a device (with --key)")
    p.add_argument("--key", help=f"{remote}: the device key registered with the tracker")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("bench", help="decode latency, prefill speed and peak memory per backend, against the "
                                     "memory-bandwidth bound of this machine")
    p.add_argument("source", nargs="?", type=Path,
                   help="checkpoint, or an artifact directory: its backend runs it, the others its source checkpoint "
                        "(default: the bundled RWKV-7 demo model)")
    p.add_argument("--backends", default=",".join(BENCH_DEFAULT), metavar="LIST",
                   help=f"comma-separated, of {','.join(BENCH_BACKENDS)} (default {','.join(BENCH_DEFAULT)})")
    p.add_argument("--steps", type=_bounded_int(1, MAX_TOKENS), default=128, help="timed decode steps (default 128)")
    p.add_argument("--warmup", type=_bounded_int(0, MAX_TOKENS), default=16, help="untimed decode steps first (default 16)")
    p.add_argument("--prefill", type=_bounded_int(0, MAX_TOKENS), default=64,
                   help="prompt tokens for prefill tokens/s, 0 to skip (default 64)")
    p.add_argument("--prefill-chunk", type=_bounded_int(0, MAX_CHUNK), default=32, metavar="T",
                   help="tokens per prefill call of the onnxruntime export and the CPU TVM bundle, as CPU bundles "
                        "compiled from a checkpoint have; 0: single steps (default 32)")
    p.add_argument("--threads", type=_bounded_int(1, 4096), help="threads per backend (default: every usable core)")
    p.add_argument("--work", type=Path, metavar="DIR", help="where exports and compiled bundles are kept (default ~/.cache/rwkv-edge/bench)")
    p.add_argument("--rebuild", action="store_true", help="export and compile again even if a matching artifact is there")
    p.add_argument("--json", action="store_true",
                   help="print the whole report as JSON on stdout instead of the table (progress goes to stderr)")
    p.add_argument("--json-out", type=Path, metavar="OUT.json", help="also save the whole report as JSON in this file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: every row on this machine's NVIDIA GPU (torch eager, the TVM bundle for its CUDA "
                        "target, onnxruntime where its CUDA provider is installed) against GPU memory bandwidth "
                        "(default cpu)")
    p.add_argument("--weights", choices=list(WEIGHT_FORMATS), default="fp32",
                   help="the rows' weights: fp16 with --device cuda (torch and TVM); int8 or int4 on the CPU "
                        "(onnxruntime and TVM, groups of 32; torch stays fp32); default fp32")
    p.add_argument("--target", metavar="NAME",
                   help="the TVM row's target (default x86_64-host; with --device cuda the newest CUDA target "
                        "this GPU runs, e.g. cuda-sm90 on an H100)")
    p.add_argument("--llama-cpp", type=Path, metavar="BIN_DIR",
                   help="also run llama.cpp's llama-bench from this folder (its build/bin) on --gguf, before and after "
                        "our backends, same threads, decode and prompt lengths; prints ours/peer per weight format")
    p.add_argument("--gguf", action="append", metavar="DIR|FORMAT=FILE",
                   help="with --llama-cpp: a folder holding model-f32.gguf, model-q8_0.gguf, model-q4_0.gguf, or "
                        "fp32=FILE, int8=FILE, int4=FILE (also F32=, Q8_0=, Q4_0=), repeatable; the same model as SOURCE")
    p.set_defaults(run=cmd_bench)
    return parser


def _package_args(p: argparse.ArgumentParser, required: bool) -> None:
    """package's options; compile takes them after --with-runtime DIR (its --out is the bundle's)."""
    if required:
        p.add_argument("--out", required=True, type=Path, dest="package_out", metavar="DIR",
                       help="the folder to write: new, empty, or an earlier package (replaced whole)")
    what = "" if required else "with --with-runtime: "
    p.add_argument("--state", type=Path, metavar="FILE",
                   help=f"{what}a tuned initial state file for the bundle's model, copied in as initial.state")
    p.add_argument("--dev", action="store_true",
                   help=f"{what}also dev/include/rwkv_edge.h and dev/lib/librwkv_edge.a, to link an app")


def _group_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES, metavar="G",
                   help="int8/int4: weights per fp16 scale along each row's input axis (default 32)")


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help=".pth or .safetensors checkpoint, a Hugging Face model folder or a GGUF file (default: the "
                        "bundled RWKV-7 demo model)")


# The tokenizer choices repeat tokenizer.TOKENIZER_NAMES so that `--help` needs no torch import;
# tests/cli checks that they agree.
def _source_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", type=Path,
                   help="checkpoint file or artifact directory (default: the bundled RWKV-7 demo model)")


def _backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="; ".join(f"{e.name} runs {e.source}" for e in BACKENDS.values()) +
                        f" (default: an artifact runs on its own backend, a checkpoint on {CHECKPOINT_BACKEND})")


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", choices=["bytes", "world", "20b"],
                   help="default: inferred from the vocabulary size (256 bytes, 65536 world, 50277 20b)")
    p.add_argument("--tokenizer-file", type=Path, help="vocabulary file for world/20b (default: the one the artifact carries, else the packaged one)")


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}")
        return value

    return parse


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 is greedy), got {value}")
    return value


def _probability(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _stop_text(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError("a stop sequence is non-empty text without NUL characters")
    return text


def _output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name, e.g. {path / 'trace.npz'}")
    return path


def _address(text: str) -> str:
    """An argparse type: HOST:PORT with a port in 1-65535 (``rpc_client.parse_address``, which ``Remote`` uses)."""
    from ..runtime.rpc_client import parse_address

    try:
        parse_address(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"expected the 64 hex digits of a sha256, got {text!r}")
    return text.lower()


def _token_list(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not tokens:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return tokens


def _exists(path: Path | None, what: str = "checkpoint file") -> None:
    """CheckpointError now, before torch, ONNX or TVM load, if ``path`` is given and not there."""
    if path is not None and not path.exists():
        raise CheckpointError(f"{path}: no such {what}")


def _state_exists(path: Path | None) -> None:
    """StateError now, before a model loads, if a state file ``path`` is given and not there."""
    if path is not None and not path.is_file():
        raise StateError(f"{path}: no such state file")


def _check_output(out: Path) -> None:
    """ArtifactError now, before torch, ONNX or TVM load, for an output directory the artifact writer refuses."""
    from ..artifact import check_output_directory  # numpy, nothing heavier

    check_output_directory(out)


def cmd_info(args: argparse.Namespace) -> None:
    _exists(args.checkpoint, "checkpoint file or model folder")
    from ..model import open_any_model

    model, checkpoint = open_any_model(args.checkpoint or DEMO_CHECKPOINT)  # any form: its layout is shown
    architecture = detect(checkpoint.tensors)
    # every family's JSON starts alike: the family, the architecture's name (the manifest's) and its label
    header = {"family": architecture.family, "architecture": architecture.name, "label": architecture.label}
    INFO[architecture.family](args, model, header, checkpoint)


def _language_info(args: argparse.Namespace, model, header: dict[str, str], checkpoint) -> None:
    from ..model import LANGUAGE_ARCHITECTURES

    info = {**header, **model.describe(), "format": checkpoint.layout}  # describe() names the architecture "version" too
    spec = model.state_spec()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["state_floats"] = sum(math.prod(t.shape) for t in spec)
    stored = checkpoint.stored and checkpoint.stored.report(checkpoint.stored.format or "fp32", checkpoint.stored.group)
    source = {"stored": stored} if stored else {}  # a quantized source (GGUF): what is kept exactly
    if args.json:
        print(json.dumps({**info, **source}, indent=2))
        return
    print(f"checkpoint    {args.checkpoint or f'{DEMO_CHECKPOINT} (bundled demo model)'}")
    print(f"format        {printable(checkpoint.layout)}")
    for key, value in source.items():
        print(f"{key:<14}{value}")
    print(f"architecture  {LANGUAGE_ARCHITECTURES[model.version].label} [{model.version}]")
    print(f"parameters    {info['parameters']:,}")
    for key, value in model.describe().items():
        if key != "version":
            print(f"  {key:<14}{value}")
    layer0 = ", ".join(f"{t.role} {t.shape}" for t in spec if t.layer == 0)
    print(f"state         per layer: {layer0}; {info['state_floats']:,} floats in all")


def _vision_info(args: argparse.Namespace, model, header: dict[str, str], checkpoint) -> None:
    config = {k: v for k, v in model.describe().items() if k not in header}  # describe() says "vision", "Vision-RWKV"
    info = {**header, **config, "parameters": sum(p.numel() for p in model.parameters()), "format": checkpoint.layout}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    cfg = model.config
    print(f"checkpoint    {printable(args.checkpoint)}")
    print(f"architecture  Vision-RWKV [{cfg.embed_dims} x {cfg.depth}, {cfg.image_size} px, patch {cfg.patch_size}]")
    print(f"parameters    {info['parameters']:,}")
    for key, value in info.items():
        if key not in (*header, "parameters"):
            print(f"  {key:<15} {printable(value)}")
    grid = cfg.image_size // cfg.patch_size
    out = f"logits (B, {cfg.num_classes})" if cfg.num_classes else f"features (B, {cfg.embed_dims}, {grid}, {grid})"
    print(f"output        {out} for images (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size})")


INFO = {LANGUAGE: _language_info, IMAGE: _vision_info}  # family -> what `info` prints of its checkpoints


def cmd_generate(args: argparse.Namespace) -> None:
    _exists(args.source, "checkpoint file or artifact directory")
    _state_exists(args.state_in)
    if args.state_out is not None:
        check_writable(args.state_out)
    from ..runtime import Sampler
    from ..runtime.native import NativeBackend
    from ..runtime.registry import open_backend

    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, seed=args.seed, top_k=args.top_k,
                      presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                      penalty_decay=args.penalty_decay)
    backend = open_backend(args.source, args.backend, args.threads)
    try:
        if isinstance(backend, NativeBackend):
            _generate_native(args, backend, sampler)
        else:
            _generate_python(args, backend, sampler)
    finally:
        backend.close()


def _generate_python(args: argparse.Namespace, backend, sampler) -> None:
    """Tokenize in Python and generate with ``runtime.generate`` on any step backend."""
    from ..runtime import generate
    from ..state_file import load_state, save_state
    from ..tokenizer import TokenizerError, load_tokenizer, tokenizer_for_vocab

    name = args.tokenizer or tokenizer_for_vocab(backend.vocab_size)
    tokenizer = load_tokenizer(name, args.tokenizer_file or _carried_vocabulary(args.source, name))
    if tokenizer.vocab_size > backend.vocab_size:
        raise TokenizerError(f"the {name} tokenizer's ids run to {tokenizer.vocab_size - 1:,}, past this model's "
                             f"vocabulary of {backend.vocab_size:,}: {_tokenizer_fix(backend.vocab_size)}")
    identity = _model_identity(args.source) if args.state_in or args.state_out else None
    prompt = tokenizer.encode(args.prompt)
    start = None
    if args.state_in is not None:
        state, logits = load_state(args.state_in, backend.state_spec(), *identity, backend.vocab_size)
        if logits is None and not prompt:
            raise OptionError(f"{args.state_in} holds no logits (saved before any token): give a --prompt to go on from")
        start = (logits, state)
    recorder = _Recorder(backend)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = _StopText(args.stop)
    sys.stdout.write(args.prompt)
    tokens = []
    end_token = None if args.ignore_eos else tokenizer.end_of_text
    for token in generate(recorder, prompt, args.n, sampler, start=start, end_token=end_token):
        tokens.append(token)
        released, stopped = stops.push(text.decode(tokenizer.decode_bytes([token])))
        sys.stdout.write(released)
        sys.stdout.flush()
        if stopped:
            break
    else:
        sys.stdout.write(stops.push(text.decode(b"", final=True))[0] + stops.flush())
    sys.stdout.write("\n")
    if args.state_out is not None:
        logits, state = recorder.after(tokens, start)
        save_state(args.state_out, state, backend.state_spec(), *identity, logits)


def _generate_native(args: argparse.Namespace, backend, sampler) -> None:
    """The C library's own generation: its tokenizer, sampler and stop sequences; text streamed as released."""
    if args.tokenizer or args.tokenizer_file:
        raise OptionError("--backend native tokenizes with the bundle's own tokenizer: drop --tokenizer and "
                          "--tokenizer-file")
    session = backend.session
    if args.state_in is not None:
        session.load(args.state_in)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)

    def show(token: int, data: bytes) -> None:
        sys.stdout.write(text.decode(data))
        sys.stdout.flush()

    end_token = -1 if args.ignore_eos else backend.model.end_of_text
    session.generate(args.prompt, backend.sampler(sampler), args.n, stop=args.stop, end_token=end_token,
                     callback=show)
    sys.stdout.write(text.decode(b"", final=True) + "\n")
    if args.state_out is not None:
        session.save(args.state_out)


class _StopText:
    """Generated text released as the C library releases it: held back while it may begin a stop
    sequence; once one matched, the text before its first occurrence and nothing after."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.pending = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        """(the text released now, whether a stop sequence matched)."""
        self.pending += text
        hits = [i for stop in self.stops if (i := self.pending.find(stop)) >= 0]
        if hits:
            released, self.pending = self.pending[:min(hits)], ""
            return released, True
        held = max((k for stop in self.stops for k in range(1, len(stop)) if self.pending.endswith(stop[:k])),
                   default=0)
        released = self.pending[:len(self.pending) - held]
        self.pending = self.pending[len(released):]
        return released, False

    def flush(self) -> str:
        released, self.pending = self.pending, ""
        return released


class _Recorder:
    """A step backend that remembers what its last call returned, so that the state after the last
    generated token can be saved (``generate`` need not feed the last token it yields)."""

    def __init__(self, backend) -> None:
        self.backend, self.fed, self.last = backend, 0, None

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def prefill(self, tokens, state):
        self.last = self.backend.prefill(tokens, state)
        return self.last

    def step(self, token, state):
        self.fed += 1
        self.last = self.backend.step(token, state)
        return self.last

    def after(self, tokens: list[int], start):
        """(logits, state) after the last of ``tokens``, fed now where ``generate`` did not."""
        last = self.last or start
        if tokens and self.fed < len(tokens):
            last = self.backend.step(tokens[-1], last[1])
        return last


def _model_identity(source: Path | None) -> tuple[str, str]:
    """(architecture, source sha256) a state file of this model records: an artifact's manifest's, or a
    checkpoint's (an artifact and the checkpoint it was made from share them)."""
    from ..artifact import MANIFEST, read_manifest

    directory = artifact_directory(source)
    if directory is not None and (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        return manifest.architecture, manifest.source["sha256"]
    from ..model.sources import open_checkpoint

    checkpoint = open_checkpoint(source or DEMO_CHECKPOINT)
    return detect(checkpoint.tensors).name, checkpoint.sha256


def _carried_vocabulary(source: Path | None, name: str) -> Path | None:
    """The vocabulary file of tokenizer ``name`` the artifact ``source`` carries (checked against its
    manifest), or None: a checkpoint, an artifact without one, or one of another tokenizer."""
    from ..artifact import MANIFEST
    from ..artifact.reader import read_tokenizer_file

    directory = artifact_directory(source)
    if directory is None or not (directory / MANIFEST).exists():
        return None
    tokenizer, path = read_tokenizer_file(directory)
    return path if tokenizer == name else None


def _tokenizer_fix(vocab_size: int) -> str:
    """What to pass for a model of ``vocab_size`` tokens instead of a tokenizer that does not fit it."""
    from ..tokenizer import TokenizerError, tokenizer_for_vocab

    try:
        return f"use --tokenizer {tokenizer_for_vocab(vocab_size)}, the default for a vocabulary of {vocab_size:,}"
    except TokenizerError:
        return "pass --tokenizer-file with this model's own vocabulary"


def cmd_trace(args: argparse.Namespace) -> None:
    _exists(args.source, "checkpoint file or artifact directory")
    if args.images is not None:
        return _trace_images(args)
    from ..runtime import run_trace, save_trace
    from ..runtime.registry import open_backend

    backend = open_backend(args.source, args.backend)
    trace = run_trace(backend, args.tokens)
    save_trace(trace, args.out)
    top1 = trace.logits.argmax(-1).tolist()
    print(f"traced {len(args.tokens)} tokens on {backend.name}: logits {trace.logits.shape}, "
          f"{len(trace.state)} state tensors -> {args.out} (greedy next tokens {top1[:8]}{' ...' if len(top1) > 8 else ''})")


def _trace_images(args: argparse.Namespace) -> None:
    from ..images import load_image_batch
    from ..runtime.classify import open_image_model
    from ..runtime.tracing import run_image_trace, save_arrays

    own = default_entry(args.source)
    if args.backend is not None and args.backend != own.name:  # the habit of --tokens, as long as it agrees
        what = f"this {own.label} artifact" if own.kind else "a checkpoint"
        raise OptionError(f"--backend {args.backend} contradicts {args.source or 'the bundled demo model'}: with "
                          f"--images a model runs on its own backend ({own.name} for {what}); drop --backend or "
                          f"name {own.name}")
    images = load_image_batch(args.images)  # before the model loads: a bad file fails fast
    model = open_image_model(args.source or VISION_DEMO_CHECKPOINT)
    arrays = run_image_trace(model, images)
    save_arrays(arrays, args.out)
    (name, out), = arrays.items()
    print(f"traced {images.shape[0]} images {images.shape[1:]}: {name} {out.shape} -> {args.out}")


def cmd_classify(args: argparse.Namespace) -> None:
    source, images = _model_and_images(args.paths, args.samples)
    _exists(source, "checkpoint file or artifact directory")
    for image in images:
        _exists(image, "file")
    from ..runtime.classify import classify, open_image_model

    model = open_image_model(source or VISION_DEMO_CHECKPOINT, classifier=True)
    results = classify(model, images, args.top, args.image_size)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return
    size = args.image_size or model.image_size
    print(f"classify: {printable(source or f'{VISION_DEMO_CHECKPOINT} (bundled demo model)')}, {size} px")
    for r in results:  # names from the checkpoint or manifest, paths from the disk: escaped, one line each
        print(printable(r.path) + (f"  (converted: {r.converted})" if r.converted else ""))
        for g in r.top:
            print(f"  {g.probability:7.2%}  {printable(g.name)}" + (f"  [{g.index}]" if g.name != str(g.index) else ""))


def _model_and_images(paths: list[Path], samples: bool) -> tuple[Path | None, list[Path]]:
    """classify's positional paths: a leading checkpoint (by its suffix) or artifact directory, if any, and
    the images, the installed samples after them with ``samples``."""
    model = paths[0] if paths and (paths[0].suffix.lower() in CHECKPOINT_SUFFIXES or paths[0].is_dir()) else None
    images = [*(paths[1:] if model else paths), *(SAMPLE_IMAGES if samples else ())]
    if not images:
        after = f" after the model {model}" if model else ""
        raise OptionError(f"no images to classify: give image files{after}, or --samples for the ones installed "
                          f"with the demo model")
    return model, images


def cmd_export_onnx(args: argparse.Namespace) -> None:
    _exists(args.checkpoint)
    if args.weights is not None:  # None: what the source stores (fp32, or a GGUF's int8/int4)
        weight_format(args.weights).check_group(args.group_size)
    _check_output(args.out)
    from ..export import OnnxOptions, export_onnx

    options = OnnxOptions(args.weights, args.prefill_chunk, args.prefill_all_logits, args.dynamic_batch, args.opset,
                          args.group_size, args.image_size)
    checkpoint = args.checkpoint or DEMO_CHECKPOINT
    print(f"export onnx: {checkpoint} -> {args.out}  ({options})")
    export_onnx(checkpoint, args.out, options)


def cmd_compile(args: argparse.Namespace) -> None:
    from ..compile import CompileRequest, check_request, compile_for  # numpy, nothing heavier

    target = get_target(args.target)
    source = args.checkpoint or DEMO_CHECKPOINT
    _exists(source, "checkpoint file or ONNX export")
    request = CompileRequest(args.weights, not args.no_schedules, args.stateful, args.compute_units, args.deployment,
                             args.prefill_chunk, args.group_size, args.compute, args.image_size)
    _check_output(args.out)
    check_request(source, target, request)
    if args.package_out is None and (args.state or args.dev):
        raise OptionError("--state and --dev apply with --with-runtime DIR")
    if args.package_out is not None:
        _state_exists(args.state)
        from ..runtime.package import check_package_output, check_packable

        check_packable(target)
        check_package_output(args.package_out)
    print(f"compile: {source} -> {args.out}")
    compile_for(source, args.out, args.target, request)
    if args.package_out is not None:
        from ..runtime.package import package_bundle

        package_bundle(args.out, args.package_out, state=args.state, dev=args.dev)


def cmd_package(args: argparse.Namespace) -> None:
    _exists(args.bundle, "bundle directory")
    _state_exists(args.state)
    from ..runtime.package import package_bundle

    package_bundle(args.bundle, args.package_out, state=args.state, dev=args.dev)


def cmd_targets(args: argparse.Namespace) -> None:
    from ..targets import TARGETS

    for name, target in sorted(TARGETS.items()):
        print(name)
        for key, value in target.settings().items():
            print(f"  {key:<14} {value}")


def cmd_verify(args: argparse.Namespace) -> int:
    from ..verify import verify_artifact

    remote = None
    if args.rpc or args.tracker:
        from ..runtime.rpc_client import Remote

        if args.rpc and args.tracker:
            raise OptionError("give --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
        if args.tracker and not args.key:
            raise OptionError("--tracker needs --key, the device key registered with the tracker")
        remote = Remote(args.rpc or args.tracker, args.key if args.tracker else None)
    report = verify_artifact(args.artifact, steps=args.steps, greedy_tokens=args.greedy_tokens,
                             against_checkpoint=args.against_checkpoint, executor=args.executor, remote=remote,
                             expect_sha256=args.expect_sha256, log=lambda line: print(printable(line)))
    print(report.summary())
    return report.exit_code  # 3: a GPU bundle built but not executed here (no GPU)


def cmd_bench(args: argparse.Namespace) -> int:
    _exists(args.source, "checkpoint file or artifact directory")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = [b for b in backends if b not in BENCH_BACKENDS]  # BenchOptions checks it too, after torch loads
    if unknown:
        raise OptionError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BENCH_BACKENDS)}")
    if args.json_out:
        check_writable(args.json_out)
    from ..bench import BenchOptions, run_bench, save_report

    options = BenchOptions(backends, args.steps, args.warmup,
                           args.prefill, threads=args.threads, rebuild=args.rebuild, device=args.device,
                           weights=args.weights, tvm_target=args.target, onnx_prefill_chunk=args.prefill_chunk)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print  # stdout: the JSON alone
    report = run_bench(args.source, options, work=args.work, log=log, peer=_peer(args.llama_cpp, args.gguf))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print()
        print(report.table())
    if args.json_out:
        log(f"wrote {save_report(report, args.json_out)}")
    return 1 if report.failed else 0


def _peer(bin_dir: Path | None, gguf: list[str] | None):
    """The llama.cpp peer of --llama-cpp and --gguf, or None."""
    if bin_dir is None and not gguf:
        return None
    from ..bench.peer import from_arguments

    return from_arguments(bin_dir, gguf or [])

if __name__ == "__main__":
    sys.exit(main())

"""``rwkv-edge``: a thin command line over the library. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

from .. import __version__
from ..errors import RwkvEdgeError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except RwkvEdgeError as e:
        print(f"rwkv-edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rwkv-edge: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkv-edge",
        description="Export RWKV models to edge devices and prove the artifacts compute what PyTorch computes.",
    )
    parser.add_argument("--version", action="version", version=f"rwkv-edge {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="detected architecture and full config of a checkpoint")
    _checkpoint_arg(p)
    p.add_argument("--json", action="store_true", help="print the config as JSON")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("generate", help="generate text with the PyTorch model")
    _checkpoint_arg(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("-n", type=_positive_int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.85, help="nucleus sampling mass (default 0.85)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    _tokenizer_args(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("trace", help="run step over tokens from the initial state; save logits and state")
    _checkpoint_arg(p)
    p.add_argument("--tokens", required=True, type=_token_list, help="comma-separated token ids, e.g. 1,2,3")
    p.add_argument("--out", required=True, type=Path, help="output .npz (tokens, logits, state_out.*)")
    p.add_argument("--backend", choices=["torch"], default="torch", help="runtime to trace (default torch)")
    p.set_defaults(run=cmd_trace)
    return parser


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help=".pth or .safetensors checkpoint (default: the bundled RWKV-7 demo model)")


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", choices=["bytes", "world", "20b"],
                   help="default: inferred from the vocabulary size (256 bytes, 65536 world, 50277 20b)")
    p.add_argument("--tokenizer-file", type=Path, help="vocabulary file for world/20b, if not the packaged one")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _token_list(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not tokens:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return tokens


def _load(args: argparse.Namespace):
    from ..model import DEMO_CHECKPOINT, load_model

    return load_model(args.checkpoint or DEMO_CHECKPOINT)


def cmd_info(args: argparse.Namespace) -> None:
    from ..model import ARCHITECTURES, DEMO_CHECKPOINT

    model = _load(args)
    info = model.describe()
    spec = model.state_spec()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["state_floats"] = sum(_numel(t.shape) for t in spec)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"checkpoint    {args.checkpoint or f'{DEMO_CHECKPOINT} (bundled demo model)'}")
    print(f"architecture  {ARCHITECTURES[model.version].label} [{model.version}]")
    print(f"parameters    {info['parameters']:,}")
    for key, value in model.describe().items():
        if key != "version":
            print(f"  {key:<14}{value}")
    layer0 = ", ".join(f"{t.role} {t.shape}" for t in spec if t.layer == 0)
    print(f"state         per layer: {layer0}; {info['state_floats']:,} floats in all")


def cmd_generate(args: argparse.Namespace) -> None:
    from ..model.tokenizer import load_tokenizer, tokenizer_for_vocab
    from ..runtime import Sampler, TorchBackend, generate

    sampler = Sampler(args.temperature, args.top_p, args.seed)
    model = _load(args)
    tokenizer = load_tokenizer(args.tokenizer or tokenizer_for_vocab(model.config.vocab_size), args.tokenizer_file)
    prompt = tokenizer.encode(args.prompt)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)
    for token in generate(TorchBackend(model), prompt, args.n, sampler):
        sys.stdout.write(text.decode(tokenizer.decode_bytes([token])))
        sys.stdout.flush()
    sys.stdout.write(text.decode(b"", final=True) + "\n")


def cmd_trace(args: argparse.Namespace) -> None:
    from ..runtime import TorchBackend, run_trace, save_trace

    trace = run_trace(TorchBackend(_load(args)), args.tokens)
    save_trace(trace, args.out)
    top1 = trace.logits.argmax(-1).tolist()
    print(f"traced {len(args.tokens)} tokens on {args.backend}: logits {trace.logits.shape}, "
          f"{len(trace.state)} state tensors -> {args.out} (greedy next tokens {top1[:8]}{' ...' if len(top1) > 8 else ''})")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    sys.exit(main())

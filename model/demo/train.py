"""Train the bundled demo checkpoint ``rwkv7-demo.pth``: a tiny byte-level RWKV-7 that writes Python.

Data: the ``*.py`` files of the running Python's standard library (``sysconfig.get_paths()["stdlib"]``),
sorted by path, skipping tests, site-packages and generated tables (encodings/, pydoc_data/); every
20th file is held out for validation.  Vocabulary: the 256 byte values (``ByteTokenizer``).
Model: RWKV-7, 4 layers, n_embd 128, head_size 64, ffn 512 (1.0M parameters, 4 MB fp32).
Training: RWKV-LM style init, AdamW (peak lr 4e-3, 30 warmup steps, cosine to 10% over the time
budget), random 128-byte windows, batch 16; the WKV recurrence runs as a compiled per-token step
(same maths as ``v7.wkv7``) where torch.compile works.

Result of ``python -m rwkv_edge.model.demo.train`` (torch 2.13, 2 CPU threads of a shared machine):
2438 steps, 5.0M bytes (about half an epoch) in 13.6 minutes in all; train loss 1.065 nats
(1.54 bits/byte), validation loss 1.269 nats = 1.83 bits/byte.  Greedy decoding from "import "
writes an indented ``def __init__(self, other):`` with a docstring, then loops on a phrase.
``--steps N`` trains a fixed number of steps instead of a time budget, for a reproducible run.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from ...atomic import atomic_path
from .. import v7
from ..checkpoint import StateDict
from ..registry import load_model, model_from_state_dict
from ..synthetic import make_checkpoint
from ...tokenizer import ByteTokenizer

N_LAYER, N_EMBD, HEAD_SIZE = 4, 128, 64
BATCH, CTX, PEAK_LR, WARMUP = 16, 128, 4e-3, 30
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}
DEFAULT_OUT = Path(__file__).with_name("rwkv7-demo.pth")


def load_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 byte streams of the standard library sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))

    def stream(paths: list[Path]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(p.read_bytes() + b"\n\n" for p in paths)), dtype=torch.uint8)

    return stream([p for i, p in enumerate(files) if i % 20 != 19]), stream(files[19::20])


def windows(data: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (input, target) windows of CTX bytes."""
    starts = torch.randint(0, len(data) - CTX - 1, (n,), generator=g)
    chunk = torch.stack([data[s : s + CTX + 1] for s in starts.tolist()]).long()
    return chunk[:, :-1], chunk[:, 1:]


def initial_tensors(seed: int = 0) -> StateDict:
    """make_checkpoint's key layout, values re-drawn as RWKV-LM initialises x070 (identity blocks)."""
    t = make_checkpoint("v7", n_layer=N_LAYER, n_embd=N_EMBD, vocab_size=256, head_size=HEAD_SIZE, seed=seed)
    g = torch.Generator().manual_seed(seed)
    C, L = N_EMBD, N_LAYER
    ddd = torch.arange(C) / C

    def uniform(*shape: int, bound: float) -> torch.Tensor:
        return (torch.rand(shape, generator=g) * 2 - 1) * bound

    def ortho(like: torch.Tensor, gain: float) -> torch.Tensor:
        return torch.nn.init.orthogonal_(torch.empty_like(like), gain=gain, generator=g)

    t["emb.weight"] = uniform(256, C, bound=1e-4)
    t["head.weight"] = ortho(t["head.weight"], 0.5 * math.sqrt(256 / C))
    for name in [k for k in t if ".ln" in k or k.startswith("ln_out")]:
        t[name] = torch.ones_like(t[name]) if name.endswith("weight") else torch.zeros_like(t[name])
    for i in range(L):
        a, r0, r1 = f"blocks.{i}.att.", i / (L - 1), 1 - i / L
        for x, p in dict(r=0.2, w=0.9, k=0.7, v=0.7, a=0.9, g=0.2).items():
            t[a + "x_" + x] = (1 - ddd ** (p * r1)).view(1, 1, C)
        t[a + "w0"] = (-6.5 + 5 * (torch.arange(C) / (C - 1)) ** (0.85 + r0**0.5)).view(1, 1, C)
        t[a + "a0"], t[a + "v0"] = torch.zeros(1, 1, C), torch.ones(1, 1, C)
        for lora in "wavg":
            t[a + lora + "1"] = torch.zeros_like(t[a + lora + "1"])
            t[a + lora + "2"] = ortho(t[a + lora + "2"], 0.1)
        t[a + "k_k"], t[a + "k_a"] = torch.full((1, 1, C), 0.85), torch.ones(1, 1, C)
        t[a + "r_k"] = torch.zeros_like(t[a + "r_k"])
        for w, bound in dict(receptance=0.5, key=0.05, value=0.5).items():
            t[a + w + ".weight"] = uniform(C, C, bound=bound / math.sqrt(C))
        t[a + "output.weight"] = torch.zeros(C, C)
        t[a + "ln_x.weight"] = torch.full((C,), ((1 + i) / L) ** 0.7)
        f = f"blocks.{i}.ffn."
        t[f + "x_k"] = (1 - ddd ** (r1**4)).view(1, 1, C)
        t[f + "key.weight"] = uniform(4 * C, C, bound=0.5 / math.sqrt(C))
        t[f + "value.weight"] = torch.zeros(C, 4 * C)
    return t


def compiled_wkv7() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``v7.wkv7`` with a torch.compile'd token step and unbind over T (cheap backward)."""
    step = torch.compile(v7.wkv7_step, dynamic=False)

    def wkv7(r, decay, k, v, kk, a, wkv):  # type: ignore[no-untyped-def]
        ys = []
        for inputs in zip(*(z.unbind(-3) for z in (r, decay, k, v, kk, a))):
            y, wkv = step(wkv, *inputs)
            ys.append(y)
        return torch.stack(ys, dim=-3), wkv

    return wkv7


def check_kernel(kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether ``kernel`` matches ``v7.wkv7`` on random training-shaped inputs."""
    g = torch.Generator().manual_seed(0)
    shape = (BATCH, CTX, N_EMBD // HEAD_SIZE, HEAD_SIZE)
    r, k, v, kk = (torch.randn(shape, generator=g) for _ in range(4))
    decay, a = 0.5 + 0.5 * torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    inputs = [r, decay, k, v, F.normalize(kk, dim=-1), a]
    wkv = torch.zeros(shape[0], shape[2], HEAD_SIZE, HEAD_SIZE)
    with torch.no_grad():
        want = v7.wkv7(*inputs, wkv)
    got = kernel(*(t.requires_grad_(True) for t in inputs), wkv)
    # the compiled kernel fuses and reorders fp32 arithmetic over 128 steps: agreement to ~1e-6 is
    # typical; 1e-4 separates that from a wrong kernel, whose error is of order 1
    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-4) for x, y in zip(got, want))


@contextmanager
def wkv_kernel(kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Run v7's recurrence with ``kernel`` inside the block."""
    original, v7.wkv7 = v7.wkv7, kernel
    try:
        yield
    finally:
        v7.wkv7 = original


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def lr_at(step: int, progress: float) -> float:
    """Linear warmup, then cosine from PEAK_LR to PEAK_LR / 10 as progress goes 0 -> 1."""
    return PEAK_LR * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def greedy(model: torch.nn.Module, prompt: str, n: int = 200) -> str:
    tok = ByteTokenizer()
    logits, state = model(tok.encode(prompt))
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[-1].argmax()))
        logits, state = model([out[-1]], state)
    return prompt + tok.decode(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=13.5,
                        help="training time budget, compiling included (default 13.5)")
    parser.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead (reproducible)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-compile", action="store_true", help="use the eager recurrence")
    args = parser.parse_args()
    t_start = time.time()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    train, val = load_corpus()
    print(f"data: {len(train) / 1e6:.2f} MB train, {len(val) / 1e6:.2f} MB val", flush=True)
    tensors = initial_tensors()
    model = model_from_state_dict(tensors).train().requires_grad_(True)
    print(f"model: {model.describe()}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params", flush=True)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.99), eps=1e-8)

    budget, t_train = args.minutes * 60, time.time()  # the budget includes compiling
    kernel = v7.wkv7
    if not args.no_compile:
        compiled = compiled_wkv7()
        try:
            if check_kernel(compiled):  # also compiles it for the training shapes
                kernel = compiled
            else:
                print("compiled recurrence disagrees with v7.wkv7", flush=True)
        except Exception as e:  # no C++ compiler, unsupported platform, ...
            print(f"torch.compile unavailable ({type(e).__name__}: {e}): eager", flush=True)
        print(f"recurrence: {'compiled' if kernel is compiled else 'eager'} ({time.time() - t_train:.0f}s)", flush=True)

    step, tokens, t_log = 0, 0, t_train
    recent: list[float] = []
    with wkv_kernel(kernel):
        while True:
            progress = step / args.steps if args.steps else (time.time() - t_train) / budget
            if progress >= 1:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, progress)
            x, y = windows(train, BATCH, g)
            loss = loss_of(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, tokens = step + 1, tokens + x.numel()
            recent = (recent + [loss.item()])[-50:]
            if step % 25 == 0:
                now = time.time()
                print(f"step {step:5d}  loss {sum(recent[-25:]) / 25:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                      f"{25 * x.numel() / (now - t_log):6.0f} tok/s  {now - t_start:6.1f}s", flush=True)
                t_log = now

    t_done = time.time()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        vx, vy = windows(val, 256, torch.Generator().manual_seed(1234))
        val_loss = sum(float(loss_of(model, a, b)) for a, b in zip(vx.split(64), vy.split(64))) / 4
    train_loss = sum(recent) / len(recent)
    print(f"done: {step} steps, {tokens / 1e6:.2f}M tokens, {t_done - t_train:.0f}s training, "
          f"{time.time() - t_done:.0f}s validation")
    print(f"train loss {train_loss:.4f} nats ({train_loss / math.log(2):.3f} bits/byte), "
          f"val loss {val_loss:.4f} nats ({val_loss / math.log(2):.3f} bits/byte)")

    trained = model.state_dict()  # official key layout and shapes; layer 0 keeps its unused v0/v1/v2 at init
    assert trained.keys() <= tensors.keys()
    out = {k: trained.get(k, v).reshape(v.shape).float().contiguous() for k, v in tensors.items()}
    with atomic_path(args.out) as tmp:
        torch.save(out, tmp)
    loaded = load_model(args.out)
    probe = ByteTokenizer().encode("def main():\n    return 0\n")
    assert torch.equal(loaded(probe)[0], model(probe)[0]), "reloaded checkpoint gives different logits"
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {loaded.describe()}")
    for prompt in ("def ", "import "):
        print(f"--- greedy from {prompt!r} ---\n{greedy(loaded, prompt)}\n---")
    print(f"total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()

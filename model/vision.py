"""Vision-RWKV (VRWKV, OpenGVLab): an image becomes T patch tokens mixed in both directions by Bi-WKV.

Read top to bottom: the Bi-WKV scans, Q-shift, the spatial and channel mixes, the block, the config
inferred from a checkpoint, the model, and loading. Parameter names are the official backbone's
(``layers.3.att.spatial_decay``) with the mmcls ``backbone.`` prefix removed; the classifier is
``head.fc``. docs/vision.md describes the model, the scans and the kernel study.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ImageError, OptionError, ShapeError, UnknownArchitectureError
from .checkpoint import Checkpoint, StateDict, check_tensors, check_values, dims, n_layers
from .sources import open_checkpoint

WKV_MODES = ("paper", "kernel")  # the paper's closed form; the official CUDA forward's arithmetic
KERNEL_TOKEN_SPLIT = 32  # the official kernel splits T into this many chunks (TOKEN_SPLIT)
KERNEL_EPS = 1e-6  # ... and adds this to its scaled denominator (EPS)
_NO_WEIGHT = -1e38  # the log-scale of an empty sum (the kernel's MIN_VALUE)


# -- Bi-WKV ----------------------------------------------------------------------------------------
def _shift(x: torch.Tensor, d: int, fill: float, after: bool) -> torch.Tensor:
    """Position t takes position t - d (``after`` False) or t + d along the token axis; ``fill`` where
    that is outside the sequence.  x: (..., T, C) -> (..., T, C), as a slice and a pad (no gather)."""
    if after:
        return F.pad(x[..., d:, :], (0, 0, 0, d), value=fill)
    return F.pad(x[..., :-d, :], (0, 0, d, 0), value=fill)  # d >= 1; no size arithmetic for a trace to keep


def _scan(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, after: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each t, the sum over the tokens before t (``after``: after t) of e^{k_i - (|t - i| - 1) w} [v_i | 1],
    kept as [num | den] scaled by e^{-top}, top the largest exponent. A doubling (Hillis-Steele) scan:
    after step j every position holds the sum over the 2^j nearest tokens on its side, and step j + 1 adds
    the sums 2^j positions further, decayed by e^{-2^j w}; ceil(log2 T) steps of elementwise ops and shifts.
    w: (C,); k, v: (..., T, C) -> nd (2, ..., T, C), top (..., T, C); empty sums have top = -1e38."""
    T = k.shape[-2]
    nd = _shift(torch.stack([v, torch.ones_like(v)]), 1, 0.0, after)  # (2, ..., T, C): the nearest token
    top = _shift(k, 1, _NO_WEIGHT, after)
    d = 1
    while d < T:
        far, far_top = _shift(nd, d, 0.0, after), _shift(top, d, _NO_WEIGHT, after) - d * w
        m = torch.maximum(top, far_top)
        nd, top = torch.exp(top - m) * nd + torch.exp(far_top - m) * far, m
        d *= 2
    return nd, top


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The paper's Bi-WKV: y_t = (sum_{i != t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t) / (the same
    sums without v), from a doubling scan each way with running maxima (no loop over T, no T x T matrix);
    w of any sign.  w, u: (C,); k, v: (..., T, C) -> (..., T, C)."""
    (num_l, den_l), top_l = _scan(w, k, v, after=False)  # tokens before t
    (num_r, den_r), top_r = _scan(w, k, v, after=True)  # tokens after t
    now = u + k
    m = torch.maximum(torch.maximum(top_l, top_r), now)
    e_l, e_r, e_now = torch.exp(top_l - m), torch.exp(top_r - m), torch.exp(now - m)
    return (e_l * num_l + e_r * num_r + e_now * v) / (e_l * den_l + e_r * den_r + e_now)


Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (num, den, top): num e^top, den e^top


def _accumulate(acc: Sums, log_w: torch.Tensor, add: Sums) -> Sums:
    """acc + e^{log_w} add, both in the (num, den, top) form, with the larger top kept.  (..., C) each"""
    a, b, o = acc
    x, y, top = add
    m = torch.maximum(o, top + log_w)
    e_acc, e_new = torch.exp(o - m), torch.exp(top + log_w - m)
    return e_acc * a + e_new * x, e_acc * b + e_new * y, m


def bi_wkv_kernel(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  token_split: int = KERNEL_TOKEN_SPLIT, eps: float = KERNEL_EPS) -> torch.Tensor:
    """Bi-WKV as the official CUDA forward computes it (docs/vision.md, "The kernel study"), in O(T):
    T is cut into ``token_split`` chunks of ceil(T / token_split) tokens; each chunk's partial sums are
    combined with the decay of the full token distance |t - i| (not |t - i| - 1), then updated token by
    token inside the chunk; its right-hand update subtracts, so the two differ by O(w). ``eps`` is added
    to the scaled denominator. Same shapes as ``bi_wkv``."""
    T = k.shape[-2]
    L = -(-T // token_split)  # tokens per chunk
    starts = list(range(0, T, L))
    zero = torch.zeros_like(k[..., 0, :])  # (..., C)
    one = torch.ones_like(zero)
    empty = (zero, zero, torch.full_like(zero, _NO_WEIGHT))
    right, left = [], []  # per chunk: its sums rightwards from its first token; leftwards from just past its end
    for s in starts:
        n = min(L, T - s)
        r_acc = l_acc = empty
        for j in range(n):
            r_acc = _accumulate(r_acc, -w * j, (v[..., s + j, :], one, k[..., s + j, :]))
            i = s + n - 1 - j
            l_acc = _accumulate(l_acc, -w * (s + n - i), (v[..., i, :], one, k[..., i, :]))
        right.append(r_acc), left.append(l_acc)
    # the kernel's combination, as one scan over the chunks each way: before chunk c, the chunks before
    # it decayed by the whole chunks in between; from chunk c on, this chunk and those after it
    before, acc = [], empty
    for sums in left:
        before.append(acc)
        acc = _accumulate(sums, -w * L, acc)
    from_here, acc = [], empty
    for sums in reversed(right):
        acc = _accumulate(sums, -w * L, acc)
        from_here.append(acc)
    ys = []
    for c, s in enumerate(starts):
        a, b, o2 = before[c]
        cc, d, o1 = from_here[-1 - c]  # minus this chunk's first token, which is not after itself
        e_first = torch.exp(k[..., s, :] - o1)
        cc, d = cc - e_first * v[..., s, :], d - e_first
        for t in range(s, min(s + L, T)):
            k_t, v_t = k[..., t, :], v[..., t, :]
            m = torch.maximum(torch.maximum(o1, u + k_t), o2)
            e1, e2, e3 = torch.exp(o1 - m), torch.exp(o2 - m), torch.exp(u + k_t - m)
            ys.append((cc * e1 + a * e2 + e3 * v_t) / (d * e1 + b * e2 + e3 + eps))
            m = torch.maximum(o2 - w, k_t)  # left: a <- e^-w a + e^k_t v_t
            e2, e3 = torch.exp(o2 - w - m), torch.exp(k_t - m)
            a, b, o2 = e2 * a + e3 * v_t, e2 * b + e3, m
            k_n, v_n = k[..., (t + 1) % T, :], v[..., (t + 1) % T, :]
            m = torch.maximum(o1 + w, k_n + w)  # right: c <- e^w (c - e^k_{t+1} v_{t+1})
            e1, e3 = torch.exp(o1 + w - m), torch.exp(k_n + w - m)
            cc, d, o1 = e1 * cc - e3 * v_n, e1 * d - e3, m
    return torch.stack(ys, -2)


# -- the model ------------------------------------------------------------------------------------
def q_shift(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each channel quarter takes its neighbour one patch to the left, right, above and below (zeros at
    the border); the quarters' bounds are floor(C j / 4) as in the official backbone.
    x: (B, T, C), grid (H, W) with H * W == T -> (B, T, C)"""
    C = x.shape[-1]
    g = x.reshape(-1, grid[0], grid[1], C)  # (B, H, W, C)
    q = quarters(C)
    parts = [
        F.pad(g[:, :, :-1, q[0]:q[1]], (0, 0, 1, 0)),  # from the left neighbour
        F.pad(g[:, :, 1:, q[1]:q[2]], (0, 0, 0, 1)),  # from the right
        F.pad(g[:, :-1, :, q[2]:q[3]], (0, 0, 0, 0, 1, 0)),  # from above
        F.pad(g[:, 1:, :, q[3]:q[4]], (0, 0, 0, 0, 0, 1)),  # from below
    ]
    return torch.cat(parts, -1).reshape(x.shape)


def quarters(C: int) -> list[int]:
    """The channel bounds of Q-shift's four directions, as Python ints (a traced graph keeps them constant)."""
    return [int(C) * j // 4 for j in range(5)]


def mix(x: torch.Tensor, shifted: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """amount * x + (1 - amount) * shifted"""
    return x * amount + shifted * (1 - amount)


class SpatialMix(nn.Module):
    """Q-shift, then r, k, v projections, Bi-WKV over all tokens, optional key_norm, gated output."""

    def __init__(self, C: int, key_norm: bool, wkv: str) -> None:
        super().__init__()
        self.spatial_decay, self.spatial_first = nn.Parameter(torch.empty(C)), nn.Parameter(torch.empty(C))
        self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r = (nn.Parameter(torch.empty(C)) for _ in range(3))
        self.key, self.value, self.receptance, self.output = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.wkv = bi_wkv if wkv == "paper" else bi_wkv_kernel

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        T = grid[0] * grid[1]
        xx = q_shift(x, grid)
        k = self.key(mix(x, xx, self.spatial_mix_k))  # (B, T, C)
        v = self.value(mix(x, xx, self.spatial_mix_v))
        r = torch.sigmoid(self.receptance(mix(x, xx, self.spatial_mix_r)))
        dtype = torch.promote_types(x.dtype, torch.float32)  # the scans never run in fp16
        y = self.wkv(self.spatial_decay.to(dtype) / T, self.spatial_first.to(dtype) / T, k.to(dtype), v.to(dtype)).to(x.dtype)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(r * y)


class ChannelMix(nn.Module):
    """Q-shift, squared-ReLU key (optional key_norm), value, sigmoid receptance gate."""

    def __init__(self, C: int, hidden: int, key_norm: bool) -> None:
        super().__init__()
        self.spatial_mix_k, self.spatial_mix_r = nn.Parameter(torch.empty(C)), nn.Parameter(torch.empty(C))
        self.key = nn.Linear(C, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else None
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(hidden, C, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        xx = q_shift(x, grid)
        k = torch.relu(self.key(mix(x, xx, self.spatial_mix_k))) ** 2  # (B, T, hidden)
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(mix(x, xx, self.spatial_mix_r))) * self.value(k)


class Block(nn.Module):
    """x += g1 * att(ln1 x); x += g2 * ffn(ln2 x), or with post_norm x += g1 * ln1(att x) ...;
    g1 = g2 = 1 without layer scale; block 0 first applies ln0."""

    def __init__(self, cfg: "VisionConfig", layer_id: int) -> None:
        super().__init__()
        C = cfg.embed_dims
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = SpatialMix(C, cfg.key_norm, cfg.wkv)
        self.ffn = ChannelMix(C, cfg.hidden_dims, cfg.key_norm)
        if cfg.layer_scale:
            self.gamma1, self.gamma2 = nn.Parameter(torch.empty(C)), nn.Parameter(torch.empty(C))
        self.post_norm = cfg.post_norm

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        g1, g2 = (self.gamma1, self.gamma2) if hasattr(self, "gamma1") else (1.0, 1.0)
        if self.post_norm:
            x = x + g1 * self.ln1(self.att(x, grid))
            return x + g2 * self.ln2(self.ffn(x, grid))
        x = x + g1 * self.att(self.ln1(x), grid)
        return x + g2 * self.ffn(self.ln2(x), grid)


@dataclass(frozen=True)
class VisionConfig:
    """Everything but ``post_norm`` and ``wkv`` is read from tensor shapes and key names."""

    embed_dims: int
    depth: int
    patch_size: int
    in_channels: int
    image_size: int  # the trained resolution (square), from pos_embed's token count
    hidden_dims: int  # channel-mix width (hidden_rate * embed_dims)
    num_classes: int  # 0: a backbone-only checkpoint, which gives features
    key_norm: bool
    layer_scale: bool
    final_norm: bool
    post_norm: bool
    post_norm_from: str  # "meta" (the mmcls config text), "caller", or "recipe" (= layer_scale)
    wkv: str = "paper"  # WKV_MODES

    @property
    def trained_grid(self) -> int:
        """Patches per side at the trained image size."""
        return self.image_size // self.patch_size

    @classmethod
    def from_state_dict(cls, t: StateDict, source: str = "checkpoint", meta: dict[str, Any] | None = None,
                        post_norm: bool | None = None, wkv: str = "paper") -> "VisionConfig":
        """The config the (prefix-free) tensors imply; ``post_norm`` from the caller, else the meta, else
        the recipe."""
        if wkv not in WKV_MODES:
            raise OptionError(f"unknown Bi-WKV mode {wkv!r}; expected one of {', '.join(WKV_MODES)}")
        C, in_channels, p, p_w = dims(t, "patch_embed.projection.weight", 4, source)  # (C, 3, p, p)
        if p != p_w:
            raise ShapeError(f"{source}: patch_embed.projection.weight has shape {(C, in_channels, p, p_w)}: "
                             "a non-square patch; expected (embed_dims, channels, patch, patch)")
        _, n_tokens, _ = dims(t, "pos_embed", 3, source)  # (1, N, C)
        grid = math.isqrt(n_tokens)
        if grid * grid != n_tokens:
            raise ShapeError(f"{source}: pos_embed has {n_tokens} tokens, not a square grid; expected "
                             "(1, (image_size / patch_size)^2, embed_dims)")
        layer_scale = "layers.0.gamma1" in t
        if post_norm is not None:
            post_norm_from = "caller"
        elif (found := _meta_post_norm(meta or {})) is not None:
            post_norm, post_norm_from = found, "meta"
        else:  # post-norm and pre-norm have the same tensors; every official config pairs it with layer scale
            post_norm, post_norm_from = layer_scale, "recipe"
        return cls(
            embed_dims=C, depth=n_layers(t, source, prefix="layers"), patch_size=p, in_channels=in_channels,
            image_size=grid * p, hidden_dims=dims(t, "layers.0.ffn.key.weight", 2, source)[0],  # (hidden, C)
            num_classes=dims(t, "head.fc.weight", 2, source)[0] if "head.fc.weight" in t else 0,
            key_norm="layers.0.att.key_norm.weight" in t, layer_scale=layer_scale, final_norm="ln1.weight" in t,
            post_norm=post_norm, post_norm_from=post_norm_from, wkv=wkv,
        )


def _meta_post_norm(meta: dict[str, Any]) -> bool | None:
    """post_norm as the mmcls config text saved in a checkpoint's meta sets it (False if it is silent)."""
    text = meta.get("config")
    if not isinstance(text, str) or "VRWKV" not in text:
        return None
    found = re.search(r"post_norm\s*[=:]\s*(True|False)", text)
    return found is not None and found.group(1) == "True"


class PatchEmbed(nn.Module):
    """Holds the patch projection under its official name, ``patch_embed.projection``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(cfg.in_channels, cfg.embed_dims, cfg.patch_size, stride=cfg.patch_size)


class VisionRWKV(nn.Module):
    """Images (B, 3, H, W) -> logits (B, classes), or features (B, C, H / patch, W / patch) for a
    backbone-only checkpoint. H and W are multiples of the patch size; pos_embed is resized bicubically
    when they differ from the trained size."""

    config_class: ClassVar[type[VisionConfig]] = VisionConfig

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        C, g = config.embed_dims, config.trained_grid
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.empty(1, g * g, C))
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.depth))
        if config.final_norm:
            self.ln1 = nn.LayerNorm(C)
        if config.num_classes:
            self.head = nn.Module()
            self.head.fc = nn.Linear(C, config.num_classes)

    @classmethod
    def from_state_dict(cls, tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint",
                        meta: dict[str, Any] | None = None, post_norm: bool | None = None,
                        wkv: str = "paper") -> "VisionRWKV":
        """Build the model the tensors imply (official key layout, prefixes optional), checking every
        key and shape. ``post_norm`` overrides what the meta or the recipe says; ``wkv`` picks the
        Bi-WKV arithmetic (WKV_MODES)."""
        tensors = vision_keys(tensors, source)
        config = cls.config_class.from_state_dict(tensors, source, meta, post_norm, wkv)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        matched = check_tensors(tensors, expected, source)
        model.load_state_dict({k: v.to(dtype) for k, v in matched.items()}, assign=True)
        return model.eval().requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        """The family and full config, for ``rwkv-edge info``."""
        return {"family": "vision", "architecture": "Vision-RWKV", **dataclasses.asdict(self.config)}

    def check_images(self, images: torch.Tensor) -> tuple[int, int]:
        """The patch grid of ``images``; ImageError unless (B, channels, H, W) with H, W positive multiples
        of the patch size."""
        cfg = self.config
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise ImageError(f"images must be a floating-point tensor (B, {cfg.in_channels}, H, W), got {kind}")
        if images.dim() != 4 or images.shape[1] != cfg.in_channels or images.shape[0] == 0:
            raise ImageError(f"images have shape {tuple(images.shape)}; expected (B, {cfg.in_channels}, H, W) "
                             "with B >= 1")
        H, W = images.shape[2:]
        p = cfg.patch_size
        if H % p or W % p or H < p or W < p:
            raise ImageError(f"image size {H} x {W} is not a positive multiple of the patch size {p}; resize or "
                             f"crop to a multiple (trained at {cfg.image_size} x {cfg.image_size})")
        return H // p, W // p

    def position(self, grid: tuple[int, int]) -> torch.Tensor:
        """pos_embed for a patch grid, resized bicubically from the trained one.  -> (1, T, C)"""
        g = self.config.trained_grid
        if grid == (g, g):
            return self.pos_embed
        square = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
        resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)  # (1, C, H, W)
        return resized.flatten(2).transpose(1, 2)

    def at_resolution(self, image_size: int) -> "VisionRWKV":
        """This model with pos_embed resized once for square ``image_size`` images (itself at the trained
        size): what a fixed-resolution graph holds instead of a resize. ImageError as ``check_images``."""
        grid = self.check_images(torch.empty(1, self.config.in_channels, image_size, image_size, device="meta"))
        if grid[0] == self.config.trained_grid:
            return self
        config = dataclasses.replace(self.config, image_size=image_size)
        with torch.device("meta"):
            model = VisionRWKV(config)
        tensors = {**self.state_dict(), "pos_embed": self.position(grid).detach()}
        model.load_state_dict(tensors, assign=True)
        return model.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, classes), or features (B, C, H / p, W / p) without a head."""
        return self.run(images, self.check_images(images))

    def run(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``forward`` on a patch grid given as Python ints, unchecked: a traced graph keeps it constant."""
        x = self.patch_embed.projection(images.to(self.pos_embed.dtype))  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) + self.position(grid)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, grid)
        if self.config.final_norm:
            x = self.ln1(x)
        if not self.config.num_classes:
            return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return self.head.fc(x.mean(1))  # global average pooling, then the classifier

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                        source: str = "checkpoint") -> "VisionRWKV":
        """``from_state_dict`` of an opened checkpoint's tensors and meta."""
        return cls.from_state_dict(checkpoint.tensors, dtype, source, checkpoint.meta)


# -- loading ---------------------------------------------------------------------------------------
_OTHER_MODELS = (  # a key that gives another vision model away, and its name
    ("cls_token", "a ViT/DeiT-style transformer (it has a class token)"),
    ("layers.0.attn.qkv.weight", "a ViT-style transformer (attention with qkv projections)"),
    ("blocks.0.attn.qkv.weight", "a timm ViT/DeiT"),
    ("layers.0.att.time_maa_x", "a Vision-RWKV6 (VRWKV6) model, which is not supported"),
    ("emb.weight", "an RWKV language model"),
)


def vision_keys(tensors: StateDict, source: str = "checkpoint") -> StateDict:
    """The state dict in this module's names: mmcls ``backbone.`` and DDP ``module.`` prefixes removed,
    ``fc.*`` of a head without its ``head.`` prefix renamed ``head.fc.*``. UnknownArchitectureError,
    naming a telling key, unless it is a Vision-RWKV checkpoint."""
    out: StateDict = {}
    for key, value in tensors.items():
        name = key.removeprefix("module.").removeprefix("backbone.")
        out["head." + name if name.startswith("fc.") else name] = value
    if "layers.0.att.spatial_decay" not in out or "patch_embed.projection.weight" not in out:
        other = next((what for key, what in _OTHER_MODELS if key in out), None)
        found = ", ".join(sorted(tensors)[:4]) + (", ..." if len(tensors) > 4 else "")
        raise UnknownArchitectureError(
            f"{source}: not a Vision-RWKV checkpoint{f': looks like {other}' if other else ''} (keys {found}); "
            "expected backbone.patch_embed.projection.weight and backbone.layers.0.att.spatial_decay")
    return out


def class_names(meta: dict[str, Any], num_classes: int) -> list[str] | None:
    """The class names an mmcls (``meta["CLASSES"]``) or mmpretrain (``meta["dataset_meta"]["classes"]``)
    checkpoint carries, if they are strings, one per class; else None (classes shown by index)."""
    dataset = meta.get("dataset_meta")
    for names in (meta.get("CLASSES"), dataset.get("classes") if isinstance(dataset, dict) else None):
        if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def vision_model_from_state_dict(tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint",
                                 **options: Any) -> VisionRWKV:
    """Check the values and build the model (options: meta, post_norm, wkv; see VisionRWKV.from_state_dict)."""
    check_values(tensors, source)
    return VisionRWKV.from_state_dict(tensors, dtype, source, **options)


def load_vision_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, post_norm: bool | None = None,
                           wkv: str = "paper") -> tuple[VisionRWKV, str]:
    """Load an official (mmcls) or converted ``.pth`` / ``.safetensors`` Vision-RWKV checkpoint through
    the safe loader, and the sha256 of its bytes."""
    checkpoint = open_checkpoint(path)  # values checked, wrapper removed
    model = VisionRWKV.from_state_dict(checkpoint.tensors, dtype, str(path), checkpoint.meta, post_norm, wkv)
    return model, checkpoint.sha256

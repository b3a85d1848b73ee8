"""Vision-RWKV: the Bi-WKV scans against O(T^2) oracles, the model on seeded random checkpoints of several
shapes, pos_embed resizing, the official key layouts, and one typed error per bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from rwkv_edge.errors import ImageError, OptionError, ShapeError, UnknownArchitectureError
from rwkv_edge.model import detect_version, load_any_model, load_vision_checkpoint, vision_model_from_state_dict
from rwkv_edge.model.synthetic import make_vision_checkpoint, save_checkpoint
from rwkv_edge.model.vision import KERNEL_TOKEN_SPLIT, bi_wkv, bi_wkv_kernel, q_shift

f64 = torch.float64


# -- oracles: the closed forms summed directly, O(T^2), float64 --------------------------------------
def weighted_average(logit: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_i e^{logit[t, i]} v_i / sum_i e^{logit[t, i]}.  logit (..., T, T, C), v (..., T, C) -> (..., T, C)"""
    weight = torch.exp(logit - logit.amax(-2, keepdim=True))
    return (weight * v.unsqueeze(-3)).sum(-2) / weight.sum(-2)


def paper_oracle(w, u, k, v):
    """y_t = (sum_{i != t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t) / (the same without v)."""
    T = k.shape[-2]
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().to(k.dtype)[..., None]  # (T, T, 1)
    logit = torch.where(dist == 0, u + k.unsqueeze(-3), -(dist - 1) * w + k.unsqueeze(-3))  # (..., T, T, C)
    return weighted_average(logit, v)


def kernel_oracle(w, u, k, v, split=KERNEL_TOKEN_SPLIT):
    """What the official CUDA forward computes without its EPS (docs/vision.md): chunks of n = ceil(T / split)
    tokens; tokens i < t weigh e^{k_i - (t-i-1) w} inside t's chunk and e^{k_i - (t-i) w} before it; i > t
    weigh e^{k_i - (i-t) w}; the tokens chunk start < i <= t add (1 - e^w) e^{k_i + (t-i) w}."""
    T = k.shape[-2]
    n = -(-T // split)
    t, i = torch.arange(T)[:, None, None], torch.arange(T)[None, :, None]
    start = t // n * n
    dist = (t - i).abs().to(k.dtype)
    ki = k.unsqueeze(-3)  # (..., 1, T, C)
    weight = torch.where(i < t, torch.exp(torch.where(i >= start, -(dist - 1) * w, -dist * w) + ki), 0)
    weight = weight + torch.where(i > t, torch.exp(-dist * w + ki), 0)
    weight = weight + torch.where((i > start) & (i <= t), (1 - torch.exp(w)) * torch.exp(dist * w + ki), 0)
    weight = weight + torch.where(i == t, torch.exp(u + ki), 0)
    return (weight * v.unsqueeze(-3)).sum(-2) / weight.sum(-2)


def wkv_inputs(T, C=6, batch=(2,), scale=3.0, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(C, generator=g, dtype=f64) * scale / T).to(dtype)  # both signs
    u = (torch.randn(C, generator=g, dtype=f64) * scale / T).to(dtype)
    k = (torch.randn(*batch, T, C, generator=g, dtype=f64) * scale).to(dtype)
    v = torch.randn(*batch, T, C, generator=g, dtype=f64).to(dtype)
    return w, u, k, v


# -- the scans --------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 2, 3, 15, 64, 196])
def test_bi_wkv_scan_equals_the_paper_closed_form(T):
    w, u, k, v = wkv_inputs(T)  # measured: at most 1.5e-14 over these T
    assert (bi_wkv(w, u, k, v) - paper_oracle(w, u, k, v)).abs().max() < 1e-12


def test_bi_wkv_equals_the_closed_form_for_every_length_up_to_200():
    """The doubling scan's shifts and log2 steps at every T (powers of two, one past them, odd lengths).
    Measured over T = 1 ... 200 (seed T): float64 3.1e-15; fp32 inputs vs the float64 oracle 1.1e-6."""
    for T in range(1, 201):
        w, u, k, v = wkv_inputs(T, seed=T)
        want = paper_oracle(w, u, k, v)
        assert (bi_wkv(w, u, k, v) - want).abs().max() < 1e-12, T
        assert (bi_wkv(w.float(), u.float(), k.float(), v.float()).double() - want).abs().max() < 3e-6, T


def test_bi_wkv_is_stable_where_the_exponents_overflow():
    """Keys of +-300 and a growth of 5 per token: e^k overflows even float64, the running maxima do not.
    fp32 scan vs float64 oracle: 2.3e-6 measured on this seed, at most 7.7e-6 over seeds 0-19 (|y| <= 2);
    rounding keys of 300 to fp32 alone moves an exponent by up to 1.5e-5."""
    w, u, k, v = wkv_inputs(40, scale=100.0)
    w = torch.where(torch.arange(6) % 2 == 0, -5.0, 5.0).to(f64)  # growth and fast decay
    want = paper_oracle(w, u, k, v)
    assert want.isfinite().all()
    assert (bi_wkv(w, u, k, v) - want).abs().max() < 1e-12
    got = bi_wkv(w.float(), u.float(), k.float(), v.float())
    assert (got.double() - want).abs().max() < 2e-5


@pytest.mark.parametrize("T", [15, 40, 196, 200])
def test_kernel_scan_equals_the_kernel_closed_form(T):
    w, u, k, v = wkv_inputs(T)  # measured: at most 3.4e-15 over these T
    assert (bi_wkv_kernel(w, u, k, v, eps=0.0) - kernel_oracle(w, u, k, v)).abs().max() < 1e-12


def test_the_kernel_differs_from_the_paper():
    """Up to 32 tokens every chunk is one token, and the kernel is the paper with u + w for u; at T = 196
    (7-token chunks) it is no re-parametrisation of the paper. Measured: 2.0e-15; 5.9e-2; 6.2e-3."""
    w, u, k, v = wkv_inputs(30)
    assert (bi_wkv_kernel(w, u, k, v, eps=0.0) - bi_wkv(w, u + w, k, v)).abs().max() < 1e-12
    assert (bi_wkv_kernel(w, u, k, v, eps=0.0) - bi_wkv(w, u, k, v)).abs().max() > 1e-3
    w, u, k, v = wkv_inputs(196)
    assert (bi_wkv_kernel(w, u, k, v, eps=0.0) - bi_wkv(w, u + w, k, v)).abs().max() > 1e-3


def test_q_shift_takes_each_quarter_from_its_neighbour():
    H, W, C = 3, 5, 10  # quarters at floor(10 j / 4): 0, 2, 5, 7, 10
    x = torch.randn(2, H * W, C, dtype=f64)
    g, out = x.reshape(2, H, W, C), q_shift(x, (H, W)).reshape(2, H, W, C)
    for h in range(H):
        for col in range(W):
            want = torch.zeros(2, C, dtype=f64)
            if col > 0:
                want[:, 0:2] = g[:, h, col - 1, 0:2]
            if col < W - 1:
                want[:, 2:5] = g[:, h, col + 1, 2:5]
            if h > 0:
                want[:, 5:7] = g[:, h - 1, col, 5:7]
            if h < H - 1:
                want[:, 7:10] = g[:, h + 1, col, 7:10]
            assert torch.equal(out[:, h, col], want)


# -- the model --------------------------------------------------------------------------------------
SHAPES = {  # name: make_vision_checkpoint arguments
    "plain": dict(embed_dims=32, depth=2, patch_size=4, grid=4),
    "key_norm+layer_scale": dict(embed_dims=24, depth=3, patch_size=4, grid=3, key_norm=True, layer_scale=True),
    "odd channels": dict(embed_dims=18, depth=1, patch_size=2, grid=5, key_norm=True, num_classes=7),
    "backbone": dict(embed_dims=16, depth=2, patch_size=4, grid=4, num_classes=0),
}


def model_of(name, dtype=f64, **options):
    return vision_model_from_state_dict(make_vision_checkpoint(**SHAPES[name]), dtype=dtype, **options)


def with_oracle(model):
    for layer in model.layers:
        layer.att.wkv = paper_oracle
    return model


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("grid", [None, (3, 5)])
def test_model_with_scans_equals_model_with_the_oracle(name, grid):
    model = model_of(name)
    p, g = model.config.patch_size, model.config.trained_grid
    H, W = grid or (g, g)
    images = torch.randn(3, 3, H * p, W * p, generator=torch.Generator().manual_seed(1), dtype=f64)
    out = model(images)
    C, classes = model.config.embed_dims, model.config.num_classes
    assert out.shape == ((3, classes) if classes else (3, C, H, W))
    assert out.isfinite().all() and out.std() > 0.1  # not flat (std 0.36 to 1.7 measured)
    # measured over these shapes: 1.8e-15 against the oracle, 6.7e-16 between batch and single image
    assert (out - with_oracle(model_of(name))(images)).abs().max() < 1e-12
    assert (model(images[1:2]) - out[1:2]).abs().max() < 1e-12  # images do not mix in a batch


def test_config_is_inferred_from_the_keys():
    cfg = model_of("key_norm+layer_scale").config
    assert (cfg.embed_dims, cfg.depth, cfg.patch_size, cfg.image_size, cfg.hidden_dims, cfg.num_classes) == \
        (24, 3, 4, 12, 96, 10)
    assert cfg.key_norm and cfg.layer_scale and cfg.final_norm
    assert (cfg.post_norm, cfg.post_norm_from) == (True, "recipe")  # official configs pair it with layer scale
    plain = model_of("plain").config
    assert not (plain.key_norm or plain.layer_scale or plain.post_norm)


def test_post_norm_changes_the_output_and_can_be_set():
    images = torch.randn(1, 3, 12, 12, dtype=f64)
    post, pre = model_of("key_norm+layer_scale"), model_of("key_norm+layer_scale", post_norm=False)
    assert pre.config.post_norm_from == "caller" and not pre.config.post_norm
    assert (post(images) - pre(images)).abs().max() > 1e-2


def test_kernel_mode_is_an_option():
    images = torch.randn(1, 3, 16, 16, dtype=f64)
    kernel = model_of("plain", wkv="kernel")
    assert kernel.config.wkv == "kernel"
    assert 0 < (kernel(images) - model_of("plain")(images)).abs().max() < 1
    with pytest.raises(OptionError, match="unknown Bi-WKV mode 'cuda'"):
        model_of("plain", wkv="cuda")


def test_pos_embed_is_resized_bicubically_along_the_right_axes():
    model = model_of("plain")  # trained at 4 x 4
    assert model.position((4, 4)) is model.pos_embed
    ramp = torch.linspace(-1, 1, 4, dtype=f64)  # varies along the width only
    model.pos_embed.data = ramp[None, :, None].expand(4, 4, 32).reshape(1, 16, 32).clone()
    resized = model.position((3, 7)).reshape(3, 7, 32)
    assert (resized - resized[:1]).abs().max() < 1e-12  # still constant down each column
    # along the width it follows the ramp: bicubic overshoots linear by at most 0.066 (measured, at the
    # ends); resized along the wrong axis it would be constant here (off by up to 1)
    assert torch.allclose(resized[0, :, 0], F.interpolate(ramp[None, None], size=7, mode="linear",
                                                          align_corners=False)[0, 0], atol=0.1)
    assert (resized[0, 1:, 0] > resized[0, :-1, 0]).all()


# -- loading ----------------------------------------------------------------------------------------
def layouts(tensors):
    """The key layouts an official or converted checkpoint comes in."""
    bare = {k.removeprefix("backbone.").removeprefix("head."): v for k, v in tensors.items()}
    return {
        "mmcls wrapper": {"meta": {"epoch": 300, "CLASSES": ["a"] * 10}, "state_dict": tensors},
        "prefixed": tensors,
        "no prefixes": bare,
        "DDP module.": {"module." + k: v for k, v in tensors.items()},
    }


@pytest.mark.parametrize("layout, suffix", [  # safetensors holds tensors only, never a wrapper
    *[(layout, ".pth") for layout in ("mmcls wrapper", "prefixed", "no prefixes", "DDP module.")],
    *[(layout, ".safetensors") for layout in ("prefixed", "no prefixes")],
])
def test_official_key_layouts_load_to_the_same_model(layout, suffix, tmp_path):
    tensors = make_vision_checkpoint(**SHAPES["key_norm+layer_scale"])
    content = layouts(tensors)[layout]
    if suffix == ".safetensors":
        path = save_checkpoint(content, tmp_path / f"m{suffix}")
    else:
        path = tmp_path / "m.pth"
        torch.save(content, path)
    model, sha = load_vision_checkpoint(path, dtype=f64)
    assert len(sha) == 64
    images = torch.randn(2, 3, 12, 12, dtype=f64)
    assert torch.equal(model(images), vision_model_from_state_dict(tensors, dtype=f64)(images))
    assert isinstance(load_any_model(path), type(model))


def test_post_norm_comes_from_the_mmcls_config_in_meta(tmp_path):
    tensors = make_vision_checkpoint(**SHAPES["key_norm+layer_scale"])
    for setting in (False, True):
        config = f"model = dict(backbone=dict(type='VRWKV', embed_dims=24, post_norm={setting}, init_values=1e-5))"
        torch.save({"meta": {"config": config}, "state_dict": tensors}, tmp_path / "m.pth")
        cfg = load_vision_checkpoint(tmp_path / "m.pth")[0].config
        assert (cfg.post_norm, cfg.post_norm_from) == (setting, "meta")


def test_a_backbone_gives_features(tmp_path):
    path = save_checkpoint(make_vision_checkpoint(**SHAPES["backbone"]), tmp_path / "b.safetensors")
    model, _ = load_vision_checkpoint(path)
    assert model.config.num_classes == 0 and not hasattr(model, "head")
    assert model(torch.randn(2, 3, 16, 24)).shape == (2, 16, 4, 6)


# -- bad input: one typed error each ----------------------------------------------------------------
@pytest.mark.parametrize("images, message", [
    (torch.randn(1, 3, 16, 18), r"image size 16 x 18 is not a positive multiple of the patch size 4"),
    (torch.randn(1, 3, 2, 16), r"image size 2 x 16 is not a positive multiple"),
    (torch.randn(1, 1, 16, 16), r"shape \(1, 1, 16, 16\); expected \(B, 3, H, W\)"),
    (torch.randn(3, 16, 16), r"shape \(3, 16, 16\)"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), r"floating-point tensor .* got torch.uint8"),
])
def test_bad_images(images, message):
    with pytest.raises(ImageError, match=message):
        model_of("plain", dtype=torch.float32)(images)


def test_another_vision_model_is_one_clear_error(tmp_path):
    vit = {"backbone.cls_token": torch.zeros(1, 1, 8), "backbone.pos_embed": torch.zeros(1, 17, 8),
           "backbone.patch_embed.projection.weight": torch.zeros(8, 3, 4, 4),
           "backbone.layers.0.attn.qkv.weight": torch.zeros(24, 8), "head.layers.head.weight": torch.zeros(10, 8)}
    torch.save({"meta": {}, "state_dict": vit}, tmp_path / "vit.pth")
    with pytest.raises(UnknownArchitectureError, match="not a Vision-RWKV checkpoint: looks like a ViT/DeiT"):
        load_vision_checkpoint(tmp_path / "vit.pth")
    with pytest.raises(UnknownArchitectureError, match="not a Vision-RWKV checkpoint: looks like a ViT/DeiT"):
        load_any_model(tmp_path / "vit.pth")
    with pytest.raises(UnknownArchitectureError, match="an image-model checkpoint"):
        detect_version(make_vision_checkpoint())


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("backbone.layers.1.ffn.value.weight"), r"missing layers\.1\.ffn\.value\.weight"),
    (lambda t: t.update({"backbone.layers.0.att.key.weight": torch.zeros(32, 31)}),
     r"layers\.0\.att\.key\.weight has shape \(32, 31\), expected \(32, 32\)"),
    (lambda t: t.update({"backbone.pos_embed": torch.zeros(1, 15, 32)}), r"pos_embed has 15 tokens, not a square"),
    (lambda t: t.update({"backbone.layers.0.att.extra": torch.zeros(3)}), r"unexpected layers\.0\.att\.extra"),
    (lambda t: t.update({"backbone.layers.3.ln1.weight": torch.zeros(32)}), r"layer 2 is missing.*layers numbered"),
])
def test_bad_checkpoints_name_the_culprit_key(change, message):
    tensors = make_vision_checkpoint(**SHAPES["plain"])
    change(tensors)
    with pytest.raises(ShapeError, match=message):
        vision_model_from_state_dict(tensors)


def test_info_shows_a_vision_checkpoint(cli, tmp_path):
    path = save_checkpoint(make_vision_checkpoint(**SHAPES["odd channels"]), tmp_path / "v.pth")
    code, out, _ = cli("info", str(path))
    assert code == 0
    assert "Vision-RWKV [18 x 1, 10 px, patch 2]" in out and "logits (B, 7)" in out and "key_norm        True" in out
    code, out, _ = cli("info", str(path), "--json")
    assert code == 0 and '"num_classes": 7' in out


def test_describe_is_the_full_config():
    model = model_of("plain")
    assert model.describe() == {"family": "vision", "architecture": "Vision-RWKV",
                                **dataclasses.asdict(model.config)}

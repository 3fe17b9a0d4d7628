"""SAM ViT-B/L/H teacher encoders: official key layout, checkpoint round trip, model inference, attention numerics."""

import importlib
import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F

from tinysam_edge import weights
from tinysam_edge.errors import CheckpointError
from tinysam_edge.models import build_sam, infer_model_name, sam_model_registry
from tinysam_edge.models.modeling import ImageEncoderViT

# (embed_dim, depth, heads, global attention blocks) of the official checkpoints.
CONFIGS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
# pos_embed + patch_embed.proj.{weight,bias} + 14 keys per block + neck (0.weight, 1.*, 2.weight, 3.*).
ENCODER_KEYS = {"vit_b": 177, "vit_l": 345, "vit_h": 457}


def _official_encoder_shapes(embed_dim: int, depth: int, heads: int, global_blocks: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The image_encoder.* keys and shapes of segment-anything's ImageEncoderViT, written out by hand."""
    e, hd = embed_dim, embed_dim // heads
    shapes = {"pos_embed": (1, 64, 64, e), "patch_embed.proj.weight": (e, 3, 16, 16), "patch_embed.proj.bias": (e,)}
    for i in range(depth):
        rel = 2 * (64 if i in global_blocks else 14) - 1
        block = {
            "norm1.weight": (e,), "norm1.bias": (e,),
            "attn.rel_pos_h": (rel, hd), "attn.rel_pos_w": (rel, hd),  # own parameters come before submodules
            "attn.qkv.weight": (3 * e, e), "attn.qkv.bias": (3 * e,),
            "attn.proj.weight": (e, e), "attn.proj.bias": (e,),
            "norm2.weight": (e,), "norm2.bias": (e,),
            "mlp.lin1.weight": (4 * e, e), "mlp.lin1.bias": (4 * e,),
            "mlp.lin2.weight": (e, 4 * e), "mlp.lin2.bias": (e,),
        }  # fmt: skip
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    shapes.update({"neck.0.weight": (256, e, 1, 1), "neck.1.weight": (256,), "neck.1.bias": (256,), "neck.2.weight": (256, 256, 3, 3)})
    shapes.update({"neck.3.weight": (256,), "neck.3.bias": (256,)})
    return {f"image_encoder.{k}": v for k, v in shapes.items()}


def _shapes(model: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def vit_b():
    """A random-init ViT-B Sam with non-zero relative-position tables."""
    torch.manual_seed(0)
    model = sam_model_registry["vit_b"]("sam")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def vit_b_checkpoint(vit_b, tmp_path_factory):
    path = tmp_path_factory.mktemp("vit_b") / "random_vit_b.pth"
    torch.save(vit_b.state_dict(), path)
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vit_b_official_layout(vit_b, random_model):
    shapes = _shapes(vit_b, "image_encoder.")
    assert len(shapes) == ENCODER_KEYS["vit_b"] == 177
    assert shapes == _official_encoder_shapes(*CONFIGS["vit_b"])
    assert list(shapes) == list(_official_encoder_shapes(*CONFIGS["vit_b"]))  # and in the official module's state_dict order
    spot = {
        "pos_embed": (1, 64, 64, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.0.attn.rel_pos_h": (27, 64),
        "blocks.2.attn.rel_pos_h": (127, 64),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.0.mlp.lin1.weight": (3072, 768),
        "neck.0.weight": (256, 768, 1, 1),
        "neck.2.weight": (256, 256, 3, 3),
    }
    assert {k: shapes[f"image_encoder.{k}"] for k in spot} == spot
    for part in ("prompt_encoder.", "mask_decoder."):
        assert _shapes(vit_b, part) == _shapes(random_model, part)
        assert list(_shapes(vit_b, part)) == list(_shapes(random_model, part))
    assert isinstance(vit_b.image_encoder, ImageEncoderViT) and vit_b.flavour == "sam"


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_large_layouts_on_meta_device(name):
    with torch.device("meta"):
        model = sam_model_registry[name]("sam")
    shapes = _shapes(model, "image_encoder.")
    assert len(shapes) == ENCODER_KEYS[name]
    assert shapes == _official_encoder_shapes(*CONFIGS[name])
    if name == "vit_l":
        assert shapes["image_encoder.blocks.5.attn.rel_pos_h"] == (127, 64)
        assert shapes["image_encoder.blocks.4.attn.rel_pos_w"] == (27, 64)
        assert shapes["image_encoder.blocks.23.attn.qkv.weight"] == (3072, 1024)
    else:
        assert shapes["image_encoder.blocks.7.attn.rel_pos_h"] == (127, 80)
        assert shapes["image_encoder.blocks.0.attn.rel_pos_h"] == (27, 80)
        assert shapes["image_encoder.neck.0.weight"] == (256, 1280, 1, 1)


def test_vit_b_round_trip_and_auto(vit_b, vit_b_checkpoint, monkeypatch):
    loaded = build_sam("vit_b", checkpoint=vit_b_checkpoint)
    assert _same_weights(loaded, vit_b) and loaded.flavour == "sam" and not loaded.training
    assert build_sam("vit_b", checkpoint=vit_b_checkpoint, flavour="tinysam").flavour == "tinysam"

    module = importlib.import_module("tinysam_edge.models.build_sam")
    reads = []
    real_read = module.read_state_dict
    monkeypatch.setattr(module, "read_state_dict", lambda *a, **kw: reads.append(a) or real_read(*a, **kw))
    auto = build_sam("auto", checkpoint=vit_b_checkpoint)
    assert len(reads) == 1  # the file is read once, for inference and loading
    assert isinstance(auto.image_encoder, ImageEncoderViT) and auto.flavour == "sam"
    assert _same_weights(auto, vit_b)


def test_infer_model_name(random_model, random_checkpoint):
    assert infer_model_name(random_model.state_dict()) == "vit_t"
    auto = build_sam("auto", checkpoint=random_checkpoint)
    assert auto.flavour == "tinysam" and _same_weights(auto, random_model)
    for name, config in CONFIGS.items():
        assert infer_model_name(dict.fromkeys(_official_encoder_shapes(*config), torch.zeros(1))) == name
    with pytest.raises(ValueError, match="pass a checkpoint"):
        build_sam("auto")


def test_truncated_or_foreign_checkpoints(tmp_path):
    keys = list(_official_encoder_shapes(*CONFIGS["vit_b"]))
    truncated = {k: torch.zeros(1) for k in keys if not k.startswith("image_encoder.blocks.11.")}
    with pytest.raises(CheckpointError, match=r"cannot infer the model.*11 image_encoder.blocks.N indexes"):
        infer_model_name(truncated)
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(CheckpointError, match="cannot infer the model"):
        build_sam("auto", checkpoint=tmp_path / "truncated.pth")
    with pytest.raises(CheckpointError, match="no image_encoder.layers"):
        infer_model_name({"mask_decoder.iou_token.weight": torch.zeros(1, 256)})
    # Right key names but nothing else right: inferred as vit_b, then the strict load refuses it.
    torch.save({k: torch.zeros(1) for k in keys}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not match this model"):
        build_sam("auto", checkpoint=tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="looks like a vit_b checkpoint"):
        build_sam("vit_t", checkpoint=tmp_path / "wrong.pth")


def test_sam_registry_entries():
    for name, model in (("sam_vit_b", "vit_b"), ("sam_vit_l", "vit_l"), ("sam_vit_h", "vit_h")):
        entry = weights.REGISTRY[name]
        assert (entry.model, entry.flavour, entry.pickled_module) == (model, "sam", False)
        assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything/{entry.filename}"
        assert weights.get_entry(entry.filename) is entry and entry.model in sam_model_registry
    assert weights.REGISTRY["sam_vit_h"].filename == "sam_vit_h_4b8939.pth"


# --- numerics: the SDPA implementation against a loop/gather reference -------------------------------------------------


def _naive_attention(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One (S, S, C) grid attending to itself, head by head, with the bias gathered offset by offset."""
    s, _, c = x.shape
    heads, hd = attn.num_heads, c // attn.num_heads
    qkv = x.reshape(s * s, c) @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.view(s * s, 3, heads, hd).unbind(1)
    rows, cols = torch.arange(s * s) // s, torch.arange(s * s) % s
    dh = rows[:, None] - rows[None, :] + s - 1
    dw = cols[:, None] - cols[None, :] + s - 1
    out = []
    for h in range(heads):
        logits = q[:, h] @ k[:, h].T / math.sqrt(hd)
        logits = logits + (q[:, h] @ attn.rel_pos_h.T).gather(1, dh) + (q[:, h] @ attn.rel_pos_w.T).gather(1, dw)
        out.append(logits.softmax(-1) @ v[:, h])
    return (torch.cat(out, -1) @ attn.proj.weight.T + attn.proj.bias).view(s, s, c)


def _naive_encoder(enc: ImageEncoderViT, image: torch.Tensor) -> torch.Tensor:
    e = enc.pos_embed.shape[-1]
    patches = image.view(3, 64, 16, 64, 16).permute(1, 3, 0, 2, 4).reshape(64, 64, -1)
    x = patches @ enc.patch_embed.proj.weight.reshape(e, -1).T + enc.patch_embed.proj.bias + enc.pos_embed[0]
    for block in enc.blocks:
        y = F.layer_norm(x, (e,), block.norm1.weight, block.norm1.bias, 1e-6)
        ws = block.window_size
        if ws:
            n = math.ceil(64 / ws)
            padded = torch.zeros(n * ws, n * ws, e)
            padded[:64, :64] = y
            out = torch.empty_like(padded)
            for i in range(n):
                for j in range(n):
                    win = (slice(i * ws, (i + 1) * ws), slice(j * ws, (j + 1) * ws))
                    out[win] = _naive_attention(block.attn, padded[win])
            y = out[:64, :64]
        else:
            y = _naive_attention(block.attn, y)
        x = x + y
        z = F.layer_norm(x, (e,), block.norm2.weight, block.norm2.bias, 1e-6)
        x = x + F.gelu(z @ block.mlp.lin1.weight.T + block.mlp.lin1.bias) @ block.mlp.lin2.weight.T + block.mlp.lin2.bias
    return enc.neck(x.permute(2, 0, 1)[None])


def test_attention_matches_naive_reference():
    torch.manual_seed(0)
    enc = ImageEncoderViT(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,)).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
            elif name.endswith("pos_embed"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    assert enc.blocks[0].window_size == 14 and enc.blocks[1].window_size == 0
    assert enc.blocks[0].attn.rel_pos_h.shape == (27, 32) and enc.blocks[1].attn.rel_pos_w.shape == (127, 32)
    image = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        got = enc(image)
        want = _naive_encoder(enc, image[0])
        assert got.shape == (1, 256, 64, 64)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        # The relative-position bias is exercised, not vanishingly small.
        for block in enc.blocks:
            block.attn.rel_pos_h.zero_()
            block.attn.rel_pos_w.zero_()
        assert (enc(image) - got).abs().max() > 1e-2

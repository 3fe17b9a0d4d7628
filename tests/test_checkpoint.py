"""Checkpoint IO with random-init models: round trip, strict keys, wrappers, pickled-module refusal."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinysam_edge.errors import CheckpointError, WeightsError
from tinysam_edge.models import TorchPredictor, build_sam, read_state_dict, save_checkpoint


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(random_model, random_checkpoint):
    loaded = build_sam("vit_t", checkpoint=random_checkpoint)
    assert not loaded.training
    assert _same_weights(loaded, random_model)
    # Outputs depend on the loaded attention biases, not on a stale cache.
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    a, b = TorchPredictor(random_model), TorchPredictor(loaded)
    a.set_image(image)
    b.set_image(image)
    np.testing.assert_array_equal(a.get_image_embedding(), b.get_image_embedding())


def test_attention_biases_are_used_after_loading(random_model, tmp_path):
    state = {k: v.clone() for k, v in random_model.state_dict().items()}
    key = "image_encoder.layers.1.blocks.0.attn.attention_biases"
    state[key] = torch.randn_like(state[key]) * 3
    torch.save(state, tmp_path / "biased.pth")
    changed = build_sam(checkpoint=tmp_path / "biased.pth")
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        assert not torch.allclose(changed.image_encoder(x), random_model.image_encoder(x))


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module_prefix", "with_head", "float16"])
def test_accepted_layouts(random_model, tmp_path, wrap):
    state = random_model.state_dict()
    if wrap in ("model", "state_dict"):
        obj = {wrap: state, "epoch": 3}
    elif wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "with_head":
        obj = dict(state)
        obj["image_encoder.norm_head.weight"] = torch.ones(320)
        obj["image_encoder.norm_head.bias"] = torch.zeros(320)
        obj["image_encoder.head.weight"] = torch.zeros(1000, 320)
        obj["image_encoder.head.bias"] = torch.zeros(1000)
    else:
        obj = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(obj, tmp_path / "ckpt.pth")
    loaded = build_sam(checkpoint=tmp_path / "ckpt.pth")
    if wrap == "float16":
        ref = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
        assert all(torch.equal(loaded.state_dict()[k], ref[k]) for k in ref)
    else:
        assert _same_weights(loaded, random_model)


def test_missing_and_unexpected_keys_are_named(random_model, tmp_path):
    state = dict(random_model.state_dict())
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        build_sam(checkpoint=path)
    message = str(info.value)
    assert str(path) in message and "mask_decoder.iou_token.weight" in message and "mask_decoder.extra.weight" in message
    assert "1 missing" in message and "1 unexpected" in message and "\n" not in message


def test_wrong_shape_is_named(random_model, tmp_path):
    state = dict(random_model.state_dict())
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 256)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape \(mask_decoder.mask_tokens.weight \(5, 256\)!=\(4, 256\)\)"):
        build_sam(checkpoint=tmp_path / "shape.pth")


def test_pickled_module_needs_opt_in(random_model, tmp_path):
    path = tmp_path / "whole_module.pth"
    torch.save(random_model, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        build_sam(checkpoint=path)
    assert _same_weights(build_sam(checkpoint=path, trust_pickle=True), random_model)


def test_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "garbage.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        read_state_dict(tmp_path / "list.pth")


def test_empty_and_truncated_files_are_one_checkpoint_error(random_checkpoint, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        build_sam("vit_t", checkpoint=tmp_path / "empty.pth")
    (tmp_path / "cut.pth").write_bytes(random_checkpoint.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_sam("auto", checkpoint=tmp_path / "cut.pth")


def test_unknown_checkpoint_name_or_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="neither a file nor a known weights name"):
        build_sam(checkpoint=tmp_path / "nope.pth")


def test_save_writes_plain_state_dict(random_model, tmp_path):
    save_checkpoint(random_model, tmp_path / "plain.pth")
    raw = torch.load(tmp_path / "plain.pth", map_location="cpu", weights_only=True)
    extra = {k for k in raw if k.startswith(("image_encoder.head.", "image_encoder.norm_head."))}  # the official layout's unused head
    assert set(raw) - extra == set(random_model.state_dict()) and all(isinstance(v, torch.Tensor) for v in raw.values())


def test_flavour_from_registry_filename(random_checkpoint, tmp_path):
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(random_checkpoint.read_bytes())
    assert build_sam(checkpoint=path).flavour == "sam"
    assert build_sam(checkpoint=path, flavour="tinysam").flavour == "tinysam"
    assert build_sam(checkpoint=random_checkpoint).flavour == "tinysam"
    with pytest.raises(ValueError, match="unknown flavour"):
        build_sam(flavour="bogus")

"""The split decoder (per-image state + per-prompt graph): parity with the plain decoder and the official
fixture, in torch and as IR, and the predictors' policy for when to use it."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")

from tinysam_edge import Predictor, load_image
from tinysam_edge.devices import shared_core
from tinysam_edge.models import TorchPredictor, build_sam
from tinysam_edge.models.modeling import CachedMaskDecoder

ATOL_IOU, ATOL_LOGITS = 1e-3, 2e-3  # the parity fixture's tolerances

PROMPTS = {
    "1 point": ([[[500.0, 300.0], [0.0, 0.0]]], [[1.0, -1.0]]),
    "3 points": ([[[100.0, 200.0], [700.0, 50.0], [0.0, 0.0]]], [[1.0, 0.0, -1.0]]),
    "box": ([[[100.0, 200.0], [600.0, 700.0]]], [[2.0, 3.0]]),
    "box + point + empty slots": (
        [[[300.0, 300.0], [100.0, 200.0], [600.0, 700.0], [0.0, 0.0], [0.0, 0.0]]],
        [[0.0, 2.0, 3.0, -2.0, -2.0]],
    ),
    "batch of 5": (np.random.default_rng(0).uniform(0, 1024, (5, 2, 2)).tolist(), [[1.0, -1.0]] * 5),
}


@pytest.fixture(scope="module")
def parity(parity_dir):
    ref = np.load(parity_dir / "outputs.npz")
    cases = json.loads((parity_dir / "inputs.json").read_text())["cases"]
    return ref, cases, load_image(parity_dir / "image.png")


@pytest.mark.parametrize("name", list(PROMPTS))
def test_torch_split_equals_plain_decoder(parity_dir, parity, name):
    sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt")
    embedding = torch.from_numpy(parity[0]["image_embeddings"])
    coords, labels = (torch.tensor(v) for v in PROMPTS[name])
    cached = CachedMaskDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    with torch.inference_mode():
        low, iou = sam.decode(embedding, coords, labels)
        state = cached.image_state(embedding)
        split_low, split_iou = cached(state, coords, labels)
        _, scores_only = cached(state, coords, labels, with_masks=False)
    assert low.abs().max() > 1  # real logits, not a degenerate output
    np.testing.assert_allclose(split_low.numpy(), low.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(split_iou.numpy(), iou.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(scores_only.numpy(), split_iou.numpy())


def _case_kwargs(case, ref):
    kwargs = {k: None if case[k] is None else np.array(case[k]) for k in ("point_coords", "point_labels", "box")}
    kwargs["mask_input"] = ref[f"case{case['index']}_mask_input"] if case["mask_input_from"] is not None else None
    return kwargs


def _check_fixture_twice(predictor, parity):
    """Every fixture case as a first prompt and again as a repeated one (the split decoder)."""
    ref, cases, image = parity
    predictor.set_image(image)
    for repeat in range(2):
        for case in cases:
            _, scores, low = predictor.predict(**_case_kwargs(case, ref))
            uses_split = case["mask_input_from"] is None and (repeat or case["index"] > 0)
            assert (predictor._state is not None) == (repeat or case["index"] > 0)
            assert ("decoder_state" in predictor.timings) == (predictor._state is not None)
            np.testing.assert_allclose(scores, ref[f"case{case['index']}_iou"], rtol=0, atol=ATOL_IOU, err_msg=f"split={uses_split}")
            np.testing.assert_allclose(
                low, ref[f"case{case['index']}_low_res_logits"], rtol=0, atol=ATOL_LOGITS, err_msg=f"split={uses_split}"
            )


def test_torch_predictor_first_and_repeated_prompts(parity_dir, parity):
    _check_fixture_twice(TorchPredictor(build_sam("vit_t", checkpoint=parity_dir / "weights.pt")), parity)


def test_openvino_first_and_repeated_prompts(parity_model_dir, parity):
    predictor = Predictor(parity_model_dir)
    _check_fixture_twice(predictor, parity)
    state_bytes = sum(t.byte_size for t in predictor._state.tensors)
    assert state_bytes < 100 * 2**20, f"the per-image state takes {state_bytes / 2**20:.0f} MB"


def test_policy_first_click_plain_batches_split_reset_on_new_image(random_model_dir):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    p = Predictor(random_model_dir)
    p.set_image(image)
    click = {"point_coords": np.array([[100, 120]]), "point_labels": np.array([1])}
    _, _, low = p.predict(**click)
    assert p._state is None  # one click on a frame never pays for the state
    _, _, low2 = p.predict(**click)
    assert p._state is not None
    np.testing.assert_allclose(low2, low, rtol=0, atol=1e-3)
    p.set_image(image)
    assert p._state is None
    points = rng.uniform(10, 290, (6, 1, 2))
    batch_low, batch_iou = p.decode_batch(points, np.ones((6, 1)))
    assert p._state is not None and batch_low.shape == (6, 3, 256, 256)
    single = p.decode_batch_scores(points, np.ones((6, 1)), multimask_output=False)
    np.testing.assert_allclose(single[:, 0], batch_iou.max(axis=1), rtol=0, atol=1e-5)
    scores = p.decode_batch_scores(points, np.ones((6, 1)))
    np.testing.assert_allclose(scores, batch_iou, rtol=0, atol=1e-5)
    rows = np.array([4, 1])
    masks_low, masks_iou = p.decode_batch_masks(rows)
    np.testing.assert_allclose(masks_low, batch_low[rows], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(masks_iou, scores[rows])  # the scores pass decides, not the rerun
    one_low, _ = p.decode_batch_masks(np.array([2]))
    np.testing.assert_allclose(one_low, batch_low[[2]], rtol=0, atol=1e-3)
    empty_low, _ = p.decode_batch_masks(np.array([], int))
    assert empty_low.shape == (0, 3, 256, 256)
    with pytest.raises(ValueError, match="rows"):
        p.decode_batch_masks(np.array([6]))
    p.set_image(image)  # a new image forgets the scores of the old one
    with pytest.raises(RuntimeError, match="decode_batch_scores"):
        p.decode_batch_masks(np.array([0]))


def test_low_memory_predictor_compiles_one_graph_per_decoder_on_first_use(random_model_dir):
    image = np.random.default_rng(8).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    click = {"point_coords": np.array([[100, 120]]), "point_labels": np.array([1])}
    clicks = {"point_coords": np.array([[100, 120], [300, 200], [50, 250]]), "point_labels": np.array([1, 0, 1])}
    points = np.random.default_rng(9).uniform(10, 290, (4, 1, 2))
    eager, lean = Predictor(random_model_dir), Predictor(random_model_dir, specialized_graphs=0)
    assert not lean.model.decoders._compiled and lean.model.decoders._image is None  # nothing compiled before it is used
    assert ("plain", 1, 2, 0, 1) in eager.model.decoders._compiled and eager.model.decoders._image is not None
    results = []
    for p in (eager, lean):
        p.set_image(image)
        first, again, several = (p.predict(**prompt)[2] for prompt in (click, click, clicks))
        results.append((first, again, several, p.decode_batch(points, np.ones((4, 1)))[0]))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    assert set(lean.model.decoders._compiled) == {("plain", None, 1), ("prompt", None, 1)} and lean.model.decoders._image is not None
    with pytest.raises(ValueError, match="specialized_graphs"):
        Predictor(random_model_dir, specialized_graphs=-1)


def test_torch_scores_then_masks(random_model):
    p = TorchPredictor(random_model)
    p.set_image(np.random.default_rng(6).integers(0, 256, (200, 260, 3), dtype=np.uint8))
    points = np.random.default_rng(7).uniform(10, 190, (5, 1, 2))
    low, iou = p.decode_batch(points, np.ones((5, 1)))
    scores = p.decode_batch_scores(points, np.ones((5, 1)))
    masks_low, _ = p.decode_batch_masks(np.array([0, 3]))
    np.testing.assert_allclose(scores, iou, rtol=0, atol=1e-5)
    np.testing.assert_allclose(masks_low, low[[0, 3]], rtol=0, atol=1e-4)


def test_static_devices_keep_the_plain_graph(random_model_dir):
    p = Predictor(random_model_dir, static_shapes=True)
    p.set_image(np.zeros((64, 64, 3), np.uint8))
    for _ in range(2):
        p.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    assert p._state is None


def _cpu_has_bf16() -> bool:
    return "BF16" in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.skipif(not _cpu_has_bf16(), reason="this CPU has no bf16 support in OpenVINO")
def test_bf16_split_decoder_close_to_f32(random_model_dir):
    image = np.random.default_rng(4).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    points = np.random.default_rng(5).uniform(10, 290, (8, 1, 2))
    results = []
    for precision in ("f32", "bf16"):
        p = Predictor(random_model_dir, precision=precision)
        p.set_image(image)
        results.append(p.decode_batch(points, np.ones((8, 1))))
    (low32, iou32), (low16, iou16) = results
    assert np.abs(iou16 - iou32).max() < 0.05
    agree = ((low16 > 0) == (low32 > 0)).mean()
    assert agree > 0.95, f"bf16 masks agree with f32 on {agree:.3f} of the pixels"


@pytest.mark.skipif(not _cpu_has_bf16(), reason="this CPU has no bf16 support in OpenVINO")
def test_f32_then_bf16_share_a_cache_dir_without_crashing(parity_model_dir, tmp_path):
    """OpenVINO 2026.4 keys f32 and bf16 blobs alike; the predictor keeps them apart (docs/openvino_cache_bug.md)."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from tinysam_edge import Predictor
        for precision in ("f32", "bf16"):
            p = Predictor({str(parity_model_dir)!r}, precision=precision, cache_dir={str(tmp_path)!r})
            p.set_image(np.zeros((32, 32, 3), np.uint8))
        print("ok")
        """
    )
    for _ in range(2):  # the second run loads every blob from the cache
        done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_official_decoder_agrees_and_macs_drop(parity_dir, parity):
    """segment-anything 1.0's own decoder with these weights gives the fixture's outputs; the split decoder does far fewer MACs."""
    from tinysam_edge.quantize.benchmark.decoder import decoder_macs, load_official_decoder

    sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt")
    official = load_official_decoder(sam)
    if official is None:
        pytest.skip("segment-anything is not installed (the [bench] extra installs it)")
    ref = parity[0]
    coords = np.array([[[500.0, 300.0]]], np.float32)
    low, iou = official(ref["image_embeddings"], coords, np.ones((1, 1), np.float32))
    ours_low, ours_iou = sam.decode(
        torch.from_numpy(ref["image_embeddings"]), torch.tensor([[[500.0, 300.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    )
    np.testing.assert_allclose(low.numpy(), ours_low[:, 1:].detach().numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(iou.numpy(), ours_iou[:, 1:].detach().numpy(), rtol=0, atol=1e-5)
    macs = decoder_macs(sam, official)
    assert macs["split decoder, per prompt"] < 0.6 * macs["plain decoder, per prompt"] < 0.6 * macs["official SAM decoder, per prompt"]
    assert macs["split decoder, per prompt, IoU only"] < 0.6 * macs["split decoder, per prompt"]


def test_bench_decoder_report(random_model_dir, random_checkpoint, tmp_path):
    image = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(image), np.random.default_rng(8).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "tinysam_edge", "bench", "--decoder", str(image), "--model-dir", str(random_model_dir)]
    cmd += ["--checkpoint", str(random_checkpoint), "--rounds", "1", "--out-dir", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "decoder.json").read_text())
    results = report["results"]
    split = next(r for name, r in results.items() if "f32" in name and "split decoder" in name)
    plain = next(r for name, r in results.items() if "f32" in name and "plain decoder" in name)
    assert split["state_ms"] > 0 and plain["state_ms"] != plain["state_ms"]  # only the split decoder builds a state (NaN otherwise)
    assert all(r["repeated_ms"] > 0 for r in results.values())
    assert "| MACs (matmuls and convolutions) | M |" in (out / "decoder.md").read_text()


def test_a_batch_runs_as_two_half_batches_at_once(random_model_dir):
    """batch_streams=2: a batch of 7 prompts runs as 4 + 3 on graphs compiled with two streams, same outputs as one request."""
    image = np.random.default_rng(10).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    points, labels = np.random.default_rng(11).uniform(10, 290, (7, 1, 2)), np.ones((7, 1))
    outputs = []
    for streams in (1, 2):
        p = Predictor(random_model_dir, batch_streams=streams)
        p.set_image(image)
        outputs.append((*p.decode_batch(points, labels), p.decode_batch_scores(points, labels)))
        halves = {k[1] for k in p.model.decoders._compiled if len(k) == 5 and k[0] in ("prompt", "scores") and k[4] == 2}
        assert halves == ({4, 3} if streams == 2 else set())
    key = next(k for k in p.model.decoders._compiled if len(k) == 5 and k[4] == 2)
    assert int(p.model.decoders.compiled(key).get_property("NUM_STREAMS")) == 2
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="batch_streams"):
        Predictor(random_model_dir, batch_streams=0)

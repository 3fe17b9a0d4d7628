"""The public Python API refuses careless arguments with ValueError / TypeError, and decodes what SamPredictor decodes."""

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, require
from tinysam_edge.compiled_model import load_model
from tinysam_edge.predictor import Predictor

CLICK = {"point_coords": np.array([[120.0, 90.0]]), "point_labels": np.array([1])}


@pytest.fixture(scope="module")
def predictor(random_model_dir) -> Predictor:
    p = Predictor(random_model_dir)
    p.set_image(np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return p


@pytest.mark.parametrize("flag", ["no", 0, 1.0, None])
def test_flags_must_be_bools(predictor, flag):
    with pytest.raises(TypeError, match="multimask_output must be True or False"):
        predictor.predict(**CLICK, multimask_output=flag)
    with pytest.raises(TypeError, match="multimask_output"):
        predictor.decode_batch(np.full((1, 1, 2), 10.0), np.ones((1, 1)), multimask_output=flag)
    with pytest.raises(TypeError, match="return_logits"):
        predictor.predict(**CLICK, return_logits=flag)
    assert predictor.predict(**CLICK, multimask_output=np.bool_(False))[0].shape[0] == 1


def test_complex_coordinates_are_refused(predictor):
    with pytest.raises(ValueError, match=r"point_coords must be numeric \(real numbers\)"):
        predictor.predict(point_coords=np.array([[10 + 5j, 20]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match=r"box must be numeric \(real numbers\)"):
        predictor.predict(box=np.array([1, 2, 30 + 1j, 40]))


def test_a_prompt_set_of_only_padding_is_refused(predictor):
    labels = np.array([[1, -1], [-1, -1]])
    with pytest.raises(ValueError, match="prompt set 1 has only padding points"):
        predictor.decode_batch(np.full((2, 2, 2), 10.0), labels)
    boxes = np.array([[0, 0, 50, 50], [10, 10, 60, 60]])
    assert predictor.decode_batch(np.full((2, 2, 2), 10.0), labels, boxes)[0].shape[0] == 2  # a box is a prompt


def test_image_state_and_thread_arguments(predictor, random_model_dir):
    with pytest.raises(TypeError, match="ImageSnapshot"):
        predictor.set_image_state(None)
    with pytest.raises(TypeError, match="num_threads must be an integer"):
        load_model(random_model_dir, num_threads=0.5)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        load_model(random_model_dir, num_threads=0)
    with pytest.raises(TypeError, match="sessions must be an integer"):
        load_model(random_model_dir, sessions=True)


def test_mask_only_prompt_matches_sam_predictor(parity_model_dir):
    """SamPredictor decodes a mask alone (no sparse token); so do the torch reference and the OpenVINO runtime."""
    torch = pytest.importorskip("torch")
    from tinysam_edge.models import TorchPredictor, build_sam
    from tinysam_edge.quantize.benchmark.decoder import official_modules

    sam = build_sam("vit_t", checkpoint=str(require(PARITY / "weights.pt")))
    official = official_modules(sam)
    if official is None:
        pytest.skip("segment-anything 1.0 is not installed (the [bench] extra)")
    image = np.asarray(Image.open(PARITY / "image.png").convert("RGB"))
    reference = TorchPredictor(sam)
    reference.set_image(image)
    mask = reference.predict(**CLICK)[2][:1]  # an earlier prediction's low-res logits, as a user would pass them
    prompt_encoder, mask_decoder = official
    with torch.inference_mode():
        sparse, dense = prompt_encoder(points=None, boxes=None, masks=torch.from_numpy(mask[None]))
        embedding = torch.from_numpy(reference.get_image_embedding())
        expected, expected_iou = mask_decoder(embedding, prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    runtime = Predictor(parity_model_dir)
    runtime.set_image(image)
    for p, tolerance in ((reference, 1e-4), (runtime, 2e-3)):
        masks, iou, low_res = p.predict(mask_input=mask)
        assert masks.shape == (3, *image.shape[:2])
        np.testing.assert_allclose(low_res, expected[0].numpy(), rtol=0, atol=tolerance)
        np.testing.assert_allclose(iou, expected_iou[0].numpy(), rtol=0, atol=tolerance / 2)

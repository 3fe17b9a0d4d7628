"""TorchPredictor contract on a random-init model: shapes, dtypes, mask selection, argument handling."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinysam_edge.models import TorchPredictor


@pytest.fixture(scope="module")
def predictor(random_model):
    p = TorchPredictor(random_model)
    rng = np.random.default_rng(1)
    p.set_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return p


def test_predict_before_set_image(random_model):
    p = TorchPredictor(random_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        p.get_image_embedding()


def test_multimask_and_single(predictor):
    kwargs = {"point_coords": np.array([[100, 120]]), "point_labels": np.array([1])}
    masks, scores, low = predictor.predict(**kwargs)
    assert masks.shape == (3, 240, 320) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert low.shape == (3, 256, 256) and low.dtype == np.float32

    # a repeated prompt runs the split decoder: the same maths, rounded differently
    single, single_score, single_low = predictor.predict(**kwargs, multimask_output=False)
    best = int(np.argmax(scores))
    assert single.shape == (1, 240, 320)
    np.testing.assert_allclose(single_low[0], low[best], rtol=0, atol=1e-4)
    assert single_score[0] == pytest.approx(scores[best], abs=1e-5)

    logits, _, _ = predictor.predict(**kwargs, return_logits=True)
    assert logits.dtype == np.float32
    assert ((logits > 0) != masks).mean() < 1e-3


def test_sam_flavour_uses_token_zero(predictor):
    kwargs = {"box": np.array([10, 20, 200, 220])}
    _, _, multi_low = predictor.predict(**kwargs)
    predictor.flavour = "sam"
    try:
        _, scores, low = predictor.predict(**kwargs, multimask_output=False)
    finally:
        predictor.flavour = "tinysam"
    assert not any(np.array_equal(low[0], m) for m in multi_low)  # a fourth token, not one of 1..3
    assert scores.shape == (1,)


def test_refinement_with_mask_input(predictor):
    _, _, low = predictor.predict(np.array([[50, 60]]), np.array([1]))
    masks, _, low2 = predictor.predict(np.array([[50, 60]]), np.array([1]), mask_input=low[:1])
    assert masks.shape == (3, 240, 320) and not np.array_equal(low, low2)


def test_grayscale_and_bgr_images(random_model):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    a, b = TorchPredictor(random_model), TorchPredictor(random_model)
    a.set_image(rgb)
    b.set_image(np.ascontiguousarray(rgb[:, :, ::-1]), image_format="BGR")
    np.testing.assert_array_equal(a.get_image_embedding(), b.get_image_embedding())
    a.set_image(rgb[:, :, 0])
    assert a.original_size == (64, 48)


def test_prompt_errors_are_value_errors(predictor):
    with pytest.raises(ValueError, match="outside"):
        predictor.predict(np.array([[1000, 10]]), np.array([1]))
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(box=np.array([np.nan, 0, 10, 10]))

"""Property tests for the shared pre/post-processing (resize, coordinates, boxes, mask upscaling)."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinysam_edge.masks import postprocess_masks, select_masks
from tinysam_edge.transforms import (
    IMG_SIZE,
    PIXEL_MEAN,
    PIXEL_STD,
    apply_boxes,
    apply_coords,
    get_preprocess_shape,
    normalize_and_pad,
    resize_longest_side,
)

sizes = st.integers(min_value=1, max_value=8000)


@given(h=sizes, w=sizes)
@example(h=1, w=5000)  # 1-pixel-high panorama
@example(h=4000, w=1)
@example(h=3000, w=4000)  # >4K landscape
@example(h=4320, w=7680)  # 8K
@example(h=534, w=800)
def test_preprocess_shape(h, w):
    new_h, new_w = get_preprocess_shape(h, w)
    assert max(new_h, new_w) == IMG_SIZE
    assert 1 <= min(new_h, new_w) <= IMG_SIZE
    # the short side keeps the aspect ratio to within rounding
    short, long_ = min(h, w), max(h, w)
    assert abs(min(new_h, new_w) - max(1.0, short * IMG_SIZE / long_)) <= 0.5 + 1e-9


@given(h=sizes, w=sizes, fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_coords_scale_into_resized_frame(h, w, fx, fy):
    new_h, new_w = get_preprocess_shape(h, w)
    xy = np.array([[fx * w, fy * h], [0.0, 0.0], [w, h]])
    out = apply_coords(xy, (h, w))
    assert out.dtype == np.float64 and out.shape == xy.shape
    np.testing.assert_allclose(out[1], [0, 0])
    np.testing.assert_allclose(out[2], [new_w, new_h], rtol=1e-12)
    np.testing.assert_allclose(out[0], [fx * new_w, fy * new_h], rtol=1e-9, atol=1e-9)
    assert np.array_equal(xy[1], [0.0, 0.0])  # input not modified in place


@given(h=sizes, w=sizes, data=st.data())
def test_boxes_transform_as_two_points(h, w, data):
    n = data.draw(st.integers(1, 5))
    boxes = np.array(
        [[data.draw(st.floats(0, w)), data.draw(st.floats(0, h)), data.draw(st.floats(0, w)), data.draw(st.floats(0, h))] for _ in range(n)]
    )
    out = apply_boxes(boxes, (h, w))
    assert out.shape == (n, 4)
    np.testing.assert_array_equal(out.reshape(n, 2, 2), apply_coords(boxes.reshape(n, 2, 2), (h, w)))
    np.testing.assert_array_equal(apply_boxes(boxes[0], (h, w)), out[0])


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 1500), w=st.integers(1, 1500))
@example(h=1, w=1)
@example(h=1, w=1500)
def test_resize_and_pad(h, w):
    image = np.random.default_rng(h * 7919 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    resized = resize_longest_side(image)
    assert resized.dtype == np.uint8 and resized.shape == (*get_preprocess_shape(h, w), 3)
    tensor = normalize_and_pad(resized)
    rh, rw = resized.shape[:2]
    assert tensor.shape == (1, 3, IMG_SIZE, IMG_SIZE) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor[0, :, :rh, :rw], ((resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1))
    assert not tensor[0, :, rh:, :].any() and not tensor[0, :, :, rw:].any()


def test_uniform_image_stays_uniform_after_resize():
    image = np.full((37, 3000, 3), (10, 200, 77), dtype=np.uint8)
    assert np.all(resize_longest_side(image) == (10, 200, 77))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 2500), w=st.integers(1, 2500))
@example(h=1, w=2500)
@example(h=3000, w=4000)
def test_postprocess_matches_torch_bilinear(h, w):
    """OpenCV upscaling equals SAM's torch postprocess_masks (bilinear, align_corners=False) to float rounding."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    low = np.random.default_rng(h + 31 * w).normal(0, 3, (2, 256, 256)).astype(np.float32)
    input_size = get_preprocess_shape(h, w)
    got = postprocess_masks(low, input_size, (h, w))
    t = F.interpolate(torch.from_numpy(low)[None], (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    t = t[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)[0].numpy()
    assert got.shape == (2, h, w) and got.dtype == np.float32
    # OpenCV and torch round the interpolation weights differently: ~2e-4 on logits of std 3.
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000))
@example(h=750, w=1000)
@example(h=1500, w=2250)
def test_postprocess_skips_the_padding_bit_exactly(h, w):
    """Upscaling only the low-res rows/columns the crop reads gives the same pixels as upscaling all of them."""
    import cv2

    low = np.random.default_rng(h + 7 * w).normal(0, 3, (2, 256, 256)).astype(np.float32)
    input_size = get_preprocess_shape(h, w)
    full = [cv2.resize(m, (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_LINEAR)[: input_size[0], : input_size[1]] for m in low]
    ref = np.stack([cv2.resize(np.ascontiguousarray(m), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w) for m in full])
    np.testing.assert_array_equal(postprocess_masks(low, input_size, (h, w)), ref)


def test_postprocess_places_regions():
    """A block of positive logits lands in the same relative place of a portrait image."""
    low = np.full((1, 256, 256), -10.0, dtype=np.float32)
    h, w = 2000, 1000  # portrait: resized to 1024x512, i.e. the left half of the low-res grid
    low[0, 64:192, 32:96] = 10.0  # centre of the valid 256x128 area
    mask = postprocess_masks(low, get_preprocess_shape(h, w), (h, w))[0] > 0
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() / h - 0.5) < 0.01 and abs(xs.mean() / w - 0.5) < 0.01
    assert abs(mask.mean() - 0.25) < 0.01


@given(iou=st.lists(st.floats(-5, 5), min_size=4, max_size=4, unique=True))
def test_select_masks(iou):
    iou_arr = np.array([iou], dtype=np.float32)
    low = np.arange(4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 2, 2), np.float32)
    multi_low, multi_iou = select_masks(low, iou_arr, True, "tinysam")
    assert multi_low.shape == (1, 3, 2, 2) and np.array_equal(multi_iou, iou_arr[:, 1:])
    t_low, t_iou = select_masks(low, iou_arr, False, "tinysam")
    best = 1 + int(np.argmax(iou_arr[0, 1:]))
    assert t_low.shape == (1, 1, 2, 2) and t_low[0, 0, 0, 0] == best and t_iou[0, 0] == iou_arr[0, best]
    s_low, s_iou = select_masks(low, iou_arr, False, "sam")
    assert s_low[0, 0, 0, 0] == 0 and s_iou[0, 0] == iou_arr[0, 0]
    with pytest.raises(ValueError, match="unknown flavour"):
        select_masks(low, iou_arr, False, "other")

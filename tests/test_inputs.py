"""Validation of images and prompts: bad input gives a clear ValueError, odd-but-valid input is converted."""

import cv2
import numpy as np
import pytest

from tinysam_edge.errors import TinySamError
from tinysam_edge.image import load_image, save_image, to_rgb_uint8
from tinysam_edge.prompts import check_batch_prompts, check_prompts, encode_prompts
from tinysam_edge.transforms import apply_coords

SIZE = (100, 200)  # h, w


def test_grayscale_rgba_and_bgr_are_converted():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for arr in (gray, gray[:, :, None]):
        out = to_rgb_uint8(arr)
        assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], gray)
    rgba = np.dstack([gray, gray + 1, gray + 2, np.full_like(gray, 255)])
    assert np.array_equal(to_rgb_uint8(rgba), rgba[:, :, :3])
    assert np.array_equal(to_rgb_uint8(rgba[:, :, :3], "BGR"), rgba[:, :, 2::-1])


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((4, 4, 3), np.uint16), "must be uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy array"),
    ],
)
def test_bad_images(image, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(image)
    with pytest.raises(ValueError, match="image_format"):
        to_rgb_uint8(np.zeros((2, 2, 3), np.uint8), "RGBA")


def test_load_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(TinySamError, match="cannot decode"):
        load_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(TinySamError, match="cannot decode"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(TinySamError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_save_image_never_overwrites_by_default(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"user data")
    with pytest.raises(TinySamError, match="exists"):
        save_image(target, np.zeros((2, 2, 3), np.uint8))
    assert target.read_bytes() == b"user data"
    save_image(target, np.zeros((2, 2, 3), np.uint8), overwrite=True)
    assert cv2.imread(str(target)).shape == (2, 2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp file left


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"point_coords": [[10, 10]]}, "together"),
        ({"point_coords": [[np.nan, 10]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[np.inf, 10]], "point_labels": [1]}, "NaN or infinite"),
        ({"point_coords": [[250, 10]], "point_labels": [1]}, "outside the 200x100 image"),
        ({"point_coords": [[-0.5, 10]], "point_labels": [1]}, "outside"),
        ({"point_coords": [10, 10], "point_labels": [1]}, r"shape \(N, 2\)"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "N >= 1"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "point_labels must have shape"),
        ({"point_coords": [[10, 10]], "point_labels": [2]}, "1 \\(positive\\) or 0"),
        ({"point_coords": [["a", "b"]], "point_labels": [1]}, "numeric"),
        ({"box": [10, 10, 5, 20]}, "x0 <= x1"),
        ({"box": [10, 10, 20]}, r"shape \(4,\)"),
        ({"box": [10, 10, 20, 101]}, "outside"),
        ({"mask_input": np.zeros((64, 64))}, "mask_input"),
        ({"mask_input": np.full((1, 256, 256), np.nan)}, "NaN"),
        ({}, "at least one prompt"),
    ],
)
def test_bad_prompts(kwargs, message):
    full = {"point_coords": None, "point_labels": None, "box": None, "mask_input": None} | kwargs
    with pytest.raises(ValueError, match=message):
        check_prompts(**full, original_size=SIZE)


def test_edges_are_inside():
    p = check_prompts([[0, 0], [200, 100]], [1, 0], [0, 0, 200, 100], np.zeros((256, 256)), SIZE)
    assert p.point_labels.dtype == np.int64 and p.point_coords.shape == (1, 2, 2)
    assert p.boxes.shape == (1, 4) and p.mask_input.shape == (1, 256, 256)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"point_coords": np.zeros((2, 2)), "point_labels": np.zeros(2)}, r"shape \(B, N, 2\)"),
        ({"point_coords": np.zeros((2, 3, 2)), "point_labels": np.zeros((2, 2))}, "must have shape"),
        ({"point_coords": np.zeros((2, 1, 2)), "point_labels": np.full((2, 1), 3)}, "-1 \\(padding\\)"),
        ({"boxes": np.zeros(4)}, r"shape \(B, 4\)"),
        (
            {"point_coords": np.zeros((2, 1, 2)), "point_labels": np.ones((2, 1)), "boxes": np.zeros((3, 4))},
            "2 prompt sets but boxes has 3",
        ),
        ({"point_coords": np.full((1, 1, 2), 500.0), "point_labels": np.ones((1, 1))}, "outside"),
        ({}, "give point_coords"),
    ],
)
def test_bad_batch_prompts(kwargs, message):
    full = {"point_coords": None, "point_labels": None, "boxes": None} | kwargs
    with pytest.raises(ValueError, match=message):
        check_batch_prompts(**full, original_size=SIZE)


def test_batch_padding_points_may_lie_anywhere():
    coords = np.array([[[10, 10], [0, 0]], [[20, 30], [999, 999]]])
    p = check_batch_prompts(coords, np.array([[1, -1], [1, -1]]), None, SIZE)
    enc_coords, enc_labels = encode_prompts(p, SIZE)
    assert enc_coords.shape == (2, 3, 2) and enc_labels.tolist() == [[1, -1, -1], [1, -1, -1]]


def test_encode_prompts_layout():
    points = check_prompts([[10, 20], [30, 40]], [1, 0], None, None, SIZE)
    coords, labels = encode_prompts(points, SIZE)
    assert coords.shape == (1, 3, 2) and coords.dtype == np.float32
    assert labels.tolist() == [[1, 0, -1]]  # padding point appended when there is no box
    np.testing.assert_allclose(coords[0, :2], apply_coords(np.array([[10, 20], [30, 40]]), SIZE), rtol=1e-6)

    both = check_prompts([[10, 20]], [1], [1, 2, 150, 90], None, SIZE)
    coords, labels = encode_prompts(both, SIZE)
    assert labels.tolist() == [[1, 2, 3]]  # box corners replace the padding point
    np.testing.assert_allclose(coords[0, 1:], apply_coords(np.array([[1, 2], [150, 90]]), SIZE), rtol=1e-6)

    mask_only = check_prompts(None, None, None, np.zeros((1, 256, 256)), SIZE)
    coords, labels = encode_prompts(mask_only, SIZE)
    assert coords.shape == (1, 1, 2) and labels.tolist() == [[-2]]  # one empty slot: no sparse token, as in SamPredictor


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from tinysam_edge.files import atomic_write

    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_check_writable_probes_before_any_work(tmp_path, monkeypatch):
    from tinysam_edge.files import check_writable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    for fine in (".", "..", "new/folder/out.png", "out.png", tmp_path / "out.png"):
        check_writable(fine)
    with pytest.raises(TinySamError, match="cannot write afile/out.png: afile is not a folder"):
        check_writable("afile/out.png")
    with pytest.raises(TinySamError, match="File name too long"):
        check_writable("x" * 252 + ".png")  # a legal name whose temp file name is not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the probe leaves nothing, creates no folder


def test_error_cause_skips_openvino_source_locations():
    from tinysam_edge.errors import error_cause

    message = "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid(size)' failed at src/core/xml_util.cpp:900:\nIncorrect weights in bin file!\n\n"
    assert error_cause(RuntimeError(message)) == "Incorrect weights in bin file!"
    assert error_cause(IndexError()) == "IndexError"
    assert error_cause(ValueError("a\nb")) == "a b"

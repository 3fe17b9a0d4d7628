"""``Predictor.get_image_state`` / ``set_image_state``: an image's embedding and decoder state moved between predictors."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, require
from tinysam_edge.predictor import Predictor

POINT, LABEL = np.array([[420.0, 240.0]]), np.array([1])


@pytest.fixture(scope="module")
def predictors(parity_model_dir) -> tuple[Predictor, Predictor]:
    first = Predictor(parity_model_dir)
    first.set_image(np.asarray(Image.open(require(PARITY / "image.png")).convert("RGB")))
    return first, Predictor(parity_model_dir)


def test_state_moves_between_predictors_and_outlives_the_next_image(predictors):
    source, target = predictors
    fresh = source.get_image_state()
    assert fresh.decoder_state is None and fresh.prompts == 0 and fresh.nbytes == fresh.features.nbytes
    plain = source.predict(POINT, LABEL)[0]
    split = source.predict(POINT, LABEL)[0]  # the second prompt builds the split decoder's per-image state
    later = source.get_image_state()
    assert later.prompts == 2 and later.decoder_state is not None and later.nbytes > 5 * later.features.nbytes

    target.set_image_state(fresh)
    assert np.array_equal(target.predict(POINT, LABEL)[0], plain)  # first prompt: the plain decoder, as on the source
    other = dataclasses.replace(later, features=later.features[:, ::-1].copy(), decoder_state=None)
    target.set_image_state(other)
    target.predict(POINT, LABEL)  # builds another image's decoder state in the target's requests
    target.set_image_state(later)
    assert np.array_equal(target.predict(POINT, LABEL)[0], split)  # the exported state was a copy, not overwritten
    assert target.get_image_state().decoder_state is later.decoder_state  # unchanged state is not copied again


def test_restored_image_needs_no_encoder(predictors):
    _, target = predictors
    target.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        target.get_image_state()
    target.set_image_state(predictors[0].get_image_state())
    assert target.is_image_set and target.original_size == (534, 800)

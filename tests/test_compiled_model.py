"""``load_model``: one compiled model per model dir and options, cheap sessions on it, and streams that let sessions overlap."""

import asyncio
import threading
import time

import numpy as np
import pytest

from conftest import DATA, require
from tinysam_edge import devices, predictor
from tinysam_edge.compiled_model import CompiledSam, ModelOptions, load_model
from tinysam_edge.predictor import Predictor

IMAGE = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
CLICK = {"point_coords": np.array([[100.0, 80.0]]), "point_labels": np.array([1])}


@pytest.fixture
def compiles(monkeypatch) -> list[str]:
    """Which graphs (``encoder`` / ``decoder``) were compiled while the test runs, in order."""
    seen: list[str] = []
    real = devices.compile_model

    def counting(core, model, device, config):
        seen.append("encoder" if "image" in {name for port in model.inputs for name in port.get_names()} else "decoder")
        return real(core, model, device, config)

    monkeypatch.setattr("tinysam_edge.compiled_model.compile_model", counting)
    monkeypatch.setattr("tinysam_edge.decoder_graphs.compile_model", counting)
    return seen


def test_one_compile_per_model_dir_and_options(random_model_dir, compiles):
    model = load_model(random_model_dir, sessions=2, cache_dir=None)
    encoders = len(compiles)
    sessions = [Predictor(model) for _ in range(3)] + [Predictor(random_model_dir, sessions=2)]
    assert len(compiles) == encoders  # sessions, and the shorthand with the same options, compile nothing
    assert all(p.model is model for p in sessions)
    assert load_model(random_model_dir, sessions=2, precision="bf16") is not model
    with pytest.raises(TypeError, match="load_model"):
        Predictor(model, device="CPU")
    info = model.describe()
    assert info["sessions"] == 2 and info["streams"] == 2 and info["precision_used"] == "f32" and info["flavour"] == "tinysam"


def test_sessions_keep_their_own_image(random_model_dir):
    model = load_model(random_model_dir, sessions=2)
    first, second = Predictor(model), Predictor(model)
    first.set_image(IMAGE)
    second.set_image(IMAGE[::-1].copy())
    expected = [p.predict(**CLICK)[2] for p in (first, second)]
    again = [p.predict(**CLICK)[2] for p in (first, second)]  # repeated clicks: split decoder, state bound per session
    for a, b in zip(expected, again, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    assert not np.allclose(expected[0], expected[1])


def test_lazy_graphs_compile_once_under_concurrent_sessions(random_model_dir, compiles):
    model = CompiledSam(random_model_dir, ModelOptions(sessions=2, specialized_graphs=0))
    before = len(compiles)
    sessions = [Predictor(model) for _ in range(4)]
    for p in sessions:
        p.set_image(IMAGE)
    threads = [threading.Thread(target=p.decode_batch, args=(np.full((3, 1, 2), 50.0), np.ones((3, 1)))) for p in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiles) - before == 2  # the split decoder's image graph and its dynamic prompt graph, once each


def test_two_sessions_encode_at_the_same_time(random_model_dir):
    """With a stream per session, two encodes take about one encode's wall time (one stream would take two)."""
    model = CompiledSam(random_model_dir, ModelOptions(sessions=2))
    a, b = Predictor(model), Predictor(model)
    a.set_image(IMAGE)
    b.set_image(IMAGE)  # warm both requests
    one, both = [], []
    for _ in range(3):
        start = time.perf_counter()
        a.set_image(IMAGE)
        one.append(time.perf_counter() - start)
        threads = [threading.Thread(target=p.set_image, args=(IMAGE,)) for p in (a, b)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both.append(time.perf_counter() - start)
    assert min(both) < 1.5 * min(one), f"two sessions took {min(both):.3f} s, one encode {min(one):.3f} s"


def test_serve_compiles_the_encoder_once_for_workers_and_live_view(random_model_dir, compiles, monkeypatch):
    """``serve --concurrency 2 --source VIDEO``: three predictors (two workers, the live view) on one compiled model."""
    pytest.importorskip("fastapi")
    from tinysam_edge.cli import build_parser
    from tinysam_edge.cli.serve import build_app

    video = require(DATA / "video" / "sam2_bedroom.mp4")
    built: list[Predictor] = []

    class Recorded(Predictor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(predictor, "Predictor", Recorded)
    args = build_parser().parse_args(["serve", "--model-dir", str(random_model_dir), "--concurrency", "2", "--source", str(video)])
    app, _ = build_app(args)

    async def serve_until_built() -> None:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 600
            while len(built) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)

    asyncio.run(serve_until_built())
    assert len(built) == 3 and len({id(p.model) for p in built}) == 1
    assert compiles.count("encoder") == 1
    assert built[0].model.describe()["streams"] >= 2  # a stream per session (OpenVINO caps them at the cores)


def test_graphs_compiled_later_are_read_from_where_the_model_was_loaded(random_model_dir, tmp_path, monkeypatch):
    """A model loaded by a relative path keeps compiling its lazy decoder graphs after the working folder changed."""
    (tmp_path / "here").symlink_to(random_model_dir)
    monkeypatch.chdir(tmp_path)
    predictor = Predictor("here", specialized_graphs=0)
    monkeypatch.chdir(random_model_dir.parent)
    predictor.set_image(np.zeros((40, 60, 3), np.uint8))
    assert predictor.decode_batch(np.array([[[10.0, 10.0]], [[20.0, 20.0]]]), np.ones((2, 1)))[0].shape == (2, 3, 256, 256)

"""Shared fixtures: where ../shared lives, and small random-init checkpoints."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYSAM_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "fixtures" / "parity"
DATA = SHARED / "data"


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when a file from ../shared is not there."""
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs the project's ../shared folder (set TINYSAM_SHARED to use another place)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The official-parity fixture folder."""
    return require(PARITY / "weights.pt").parent


@pytest.fixture(scope="session")
def random_model():
    """A random-init vit_t model in eval mode (seeded, so every run builds the same one)."""
    torch = pytest.importorskip("torch")
    from tinysam_edge.models import build_sam

    torch.manual_seed(0)
    return build_sam("vit_t")


@pytest.fixture(scope="session")
def random_checkpoint(random_model, tmp_path_factory) -> Path:
    """The random model saved as a plain state_dict in the official layout."""
    from tinysam_edge.models import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "random_vit_t.pth"
    save_checkpoint(random_model, path)
    return path


@pytest.fixture(autouse=True)
def _isolated_weights_cache(tmp_path, monkeypatch):
    """Never touch the user's weights cache from tests."""
    monkeypatch.setenv("TINYSAM_EDGE_HOME", str(tmp_path / "weights-cache"))


@pytest.fixture(scope="session")
def random_model_dir(random_model, tmp_path_factory) -> Path:
    """The random model exported to OpenVINO IR, with a small static batch to exercise chunking."""
    pytest.importorskip("openvino")
    from tinysam_edge.quantize.export import export_ir

    out = tmp_path_factory.mktemp("ir_random")
    export_ir(random_model, out, source_name="random_vit_t.pth", source_sha256="0" * 64, point_slots=8, static_batch=4, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def parity_model_dir(parity_dir, tmp_path_factory) -> Path:
    """The parity-fixture weights exported to OpenVINO IR."""
    pytest.importorskip("openvino")
    from tinysam_edge.quantize.export import export_checkpoint

    out = tmp_path_factory.mktemp("ir_parity") / "model"
    export_checkpoint(parity_dir / "weights.pt", out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def int8_dir(parity_model_dir, tmp_path_factory) -> Path:
    """The parity model dir quantized (encoder and decoder W8A8) on three coco_mini images."""
    pytest.importorskip("nncf")
    from tinysam_edge.image import list_images
    from tinysam_edge.quantize.ptq import quantize_model_dir

    images = list_images(require(DATA / "coco_mini" / "images"))[:3]
    out = tmp_path_factory.mktemp("int8") / "model"
    quantize_model_dir(parity_model_dir, images, out, subset_size=3, decoder="int8", log=lambda *_: None)
    return out

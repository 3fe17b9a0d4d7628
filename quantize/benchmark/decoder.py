"""Decoder-stage benchmark: first, second and repeated clicks per variant against the official SAM decoder, and MACs per prompt."""

import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinysam_edge.models import TorchPredictor, build_sam
from tinysam_edge.models.modeling import CachedMaskDecoder, Sam
from tinysam_edge.predictor import PredictorBase
from tinysam_edge.transforms import apply_coords

from .pipeline import openvino_variants
from .rounds import environment, interleaved_rounds, run_header

OfficialDecoder = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def official_modules(sam: Sam) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """segment-anything 1.0's prompt encoder and mask decoder (eval mode) holding ``sam``'s weights, or None without the package."""
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            return None
        # The package's __init__ imports its mask generator and with it torchvision, which the
        # runtime does not use; the modeling subpackage alone needs only torch.
        parent = types.ModuleType("segment_anything")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = parent
    modeling = importlib.import_module("segment_anything.modeling")
    prompt_encoder = modeling.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    transformer = modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    mask_decoder = modeling.MaskDecoder(
        num_multimask_outputs=3, transformer=transformer, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256
    )
    weights = sam.state_dict()
    for name, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
        module.load_state_dict({k[len(name) :]: v for k, v in weights.items() if k.startswith(name)})
        module.eval()
    return prompt_encoder, mask_decoder


def load_official_decoder(sam: Sam) -> OfficialDecoder | None:
    """The official prompt encoder + mask decoder (``official_modules``) as one function, or None without the package.

    The returned function decodes (1, 256, 64, 64) embedding, (B, N, 2) coords in the 1024 frame and
    (B, N) labels (SAM appends its own padding point) into low-res logits and IoU of tokens 1..3.
    """
    modules = official_modules(sam)
    if modules is None:
        return None
    prompt_encoder, mask_decoder = modules

    @torch.inference_mode()
    def decode(embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = prompt_encoder(points=(torch.from_numpy(coords), torch.from_numpy(labels)), boxes=None, masks=None)
        return mask_decoder(torch.from_numpy(embedding), prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)

    return decode


def _macs(fn: Callable[[], object]) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def decoder_macs(sam: Sam, official: OfficialDecoder | None) -> dict[str, int]:
    """Matmul/convolution MACs (torch's flop counter) of one click: plain and split decoder, per-image part, official."""
    embedding = torch.randn(1, 256, 64, 64)
    coords, labels = torch.tensor([[[500.0, 300.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    cached = CachedMaskDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    with torch.inference_mode():
        state = cached.image_state(embedding)
    macs = {
        "plain decoder, per prompt": _macs(lambda: sam.decode(embedding, coords, labels)),
        "split decoder, per prompt": _macs(lambda: cached(state, coords, labels)),
        "split decoder, per prompt, IoU only": _macs(lambda: cached(state, coords, labels, with_masks=False)),
        "split decoder, per image (once)": _macs(lambda: cached.image_state(embedding)),
    }
    if official is not None:
        macs["official SAM decoder, per prompt"] = _macs(lambda: official(embedding.numpy(), coords[:, :1].numpy(), labels[:, :1].numpy()))
    return macs


def _time_clicks(predictor: PredictorBase, image: np.ndarray, points: np.ndarray) -> dict[str, float]:
    """set_image, then one click per point: the first (plain decoder), second (builds the image state), the rest."""
    predictor.set_image(image)
    decoder, upscale = [], []
    for point in points:
        predictor.predict(point_coords=point[None], point_labels=np.array([1]), multimask_output=False)
        decoder.append(1000 * predictor.timings["decoder"])
        upscale.append(1000 * predictor.timings["postprocess"])
    state = 1000 * predictor.timings.get("decoder_state", float("nan"))
    return {
        "first_ms": decoder[0],
        "second_ms": decoder[1],
        "state_ms": state,
        "repeated_ms": statistics.median(decoder[2:]),
        "upscale_ms": statistics.median(upscale),
    }


def _time_official(official: OfficialDecoder, predictor: PredictorBase, points: np.ndarray) -> dict[str, float]:
    embedding = predictor.get_image_embedding()
    times = []
    for point in points:
        coords = apply_coords(point[None, None], predictor.original_size).astype(np.float32)
        start = time.perf_counter()
        official(embedding, coords, np.ones((1, 1), np.float32))
        times.append(1000 * (time.perf_counter() - start))
    return {"first_ms": times[0], "repeated_ms": statistics.median(times[2:])}


def decoder_bench(
    variants: dict[str, PredictorBase], official: OfficialDecoder | None, image: np.ndarray, rounds: int = 5, clicks: int = 8, log=print
) -> dict:
    """Decoder stage (prompt -> low-res logits + IoU, no upscaling) per variant, interleaved round by round.

    Each round sets the image on every variant (rotating the order) and clicks ``clicks`` points;
    the official decoder decodes the same points on the first variant's embedding.
    """
    h, w = image.shape[:2]
    points = np.random.default_rng(0).uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h), (max(clicks, 3), 2))
    official_name = "official SAM decoder, torch eager f32"

    def run(name: str) -> dict[str, float]:
        if name == official_name:
            return _time_official(official, next(iter(variants.values())), points)
        return _time_clicks(variants[name], image, points)

    names = list(variants) + ([official_name] if official is not None else [])
    for name in names:  # warm-up: compiles shapes, allocates
        run(name)
    return {**interleaved_rounds(names, run, rounds, log), "clicks": len(points)}


def format_decoder(report: dict) -> str:
    """Markdown tables of a decoder-stage report: timings with ratios against the official decoder, and MACs."""
    results = report["results"]
    official = next((r for name, r in results.items() if name.startswith("official")), None)
    lines = [
        run_header(report, report),
        "",
        "| variant | first click ms | second click ms (builds image state) | image state ms | repeated click ms | x official | upscale to photo ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        ratio = f"{official['repeated_ms'] / r['repeated_ms']:.2f}" if official else "-"
        second, state, upscale = (
            f"{r[k]:.1f}" if r.get(k, float("nan")) == r.get(k) else "-" for k in ("second_ms", "state_ms", "upscale_ms")
        )
        lines.append(f"| {name} | {r['first_ms']:.1f} | {second} | {state} | {r['repeated_ms']:.1f} | {ratio} | {upscale} |")
    lines += ["", "| MACs (matmuls and convolutions) | M |", "| --- | --- |"]
    lines += [f"| {name} | {macs / 1e6:.0f} |" for name, macs in report["macs"].items()]
    return "\n".join(lines)


def decoder_report(
    model_dirs: dict[str, Path],
    checkpoint: str | Path,
    image: np.ndarray,
    rounds: int = 5,
    device: str = "CPU",
    precisions: tuple[str, ...] = ("f32", "bf16"),
    log=print,
) -> dict:
    """``decoder_bench`` over torch eager and every OpenVINO variant at each of ``precisions``, with the MAC counts."""
    torch.set_num_threads(os.cpu_count() or 1)
    sam = build_sam("vit_t", checkpoint=checkpoint)
    official = load_official_decoder(sam)
    if official is None:
        log("segment-anything is not installed: no official decoder to compare with (pip install 'tinysam-edge[bench]')")
    variants: dict[str, PredictorBase] = {"torch eager f32": TorchPredictor(sam)}
    for label, folder in model_dirs.items():
        variants.update(openvino_variants(folder, device, precisions, label, plain_too=True))
    report = decoder_bench(variants, official, image, rounds=rounds, log=log)
    return {**environment(device), **report, "image_hw": list(image.shape[:2]), "macs": decoder_macs(sam, official)}

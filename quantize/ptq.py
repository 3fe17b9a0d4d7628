"""NNCF W8A8 post-training quantization of an exported model dir (the OpenVINO-IR path of NNCF)."""

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nncf
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
import numpy as np
import openvino as ov
from tqdm import tqdm

from tinysam_edge import Predictor, load_image
from tinysam_edge.errors import TinySamError
from tinysam_edge.manifest import DECODER_OUTPUTS, ENCODER_INPUT, ENCODER_OUTPUT, Manifest
from tinysam_edge.masks import select_masks
from tinysam_edge.object_prompts import image_rng, model_objects, prompts_for_objects
from tinysam_edge.prompts import LOW_RES_SIZE, check_prompts, encode_prompts
from tinysam_edge.transforms import preprocess

from .evaluation.agreement import mask_iou
from .export import check_out_dir, staged_dir

#: Validation and reference runs are pinned to f32 (this CPU would otherwise pick bf16).
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
#: The mask-prompt branch is tiny and calibration has no mask prompts to measure it with.
DECODER_IGNORED = nncf.IgnoredScope(patterns=[".*mask_downscaling.*"], validate=False)


@dataclass
class DecoderSample:
    """Decoder inputs for one prompt, plus the FP32 pipeline's best low-res mask for it."""

    feeds: dict[str, np.ndarray]
    reference: np.ndarray  # (256, 256) bool
    valid: tuple[int, int]  # low-res rows/cols that cover the image (the rest is padding)


@dataclass
class EncoderSample:
    """A preprocessed held-out image and the decoder samples whose masks judge its embedding."""

    input_tensor: np.ndarray
    prompts: list[DecoderSample]


def _encoder_input(path: Path) -> dict[str, np.ndarray]:
    return {ENCODER_INPUT: preprocess(load_image(path))[0]}


def _best_low_res(low_res: np.ndarray, iou: np.ndarray, flavour: str) -> np.ndarray:
    return select_masks(low_res, iou, False, flavour)[0][0, 0] > 0


def _low_res_iou(a: np.ndarray, b: np.ndarray, valid: tuple[int, int]) -> float:
    return mask_iou(a[: valid[0], : valid[1]], b[: valid[0], : valid[1]])


def collect_decoder_samples(
    reference: Predictor, images: list[Path], per_image: int, desc: str, encoder: ov.CompiledModel | None = None
) -> list[list[DecoderSample]]:
    """Run the FP32 pipeline on real images with sampled point/box prompts and record the decoder inputs, per image.

    Prompts: positive interior points, each with a negative point outside its object, and boxes of
    objects that the FP32 model segments for seeded clicks. With ``encoder`` the feeds carry that
    encoder's embeddings (e.g. the INT8 one) while the reference masks stay FP32.
    """
    per_image_samples = []
    for path in tqdm(images, desc=desc, unit="image"):
        image = load_image(path)
        reference.set_image(image)
        embedding = reference.get_image_embedding()
        if encoder is not None:
            embedding = encoder(_encoder_input(path))[encoder.output(ENCODER_OUTPUT)].copy()
        rng = image_rng(path, salt=1)
        objects = model_objects(reference, rng, max(1, -(-per_image // 2)))
        valid = (-(-reference.input_size[0] // 4), -(-reference.input_size[1] // 4))
        samples = []
        for prompt in prompts_for_objects(objects, rng, with_negatives=True)[:per_image]:
            checked = check_prompts(prompt.point_coords, prompt.point_labels, prompt.box, None, reference.original_size)
            coords, labels = encode_prompts(checked, reference.original_size)
            _, _, low = reference.predict(**prompt.kwargs(), multimask_output=False)
            feeds = {
                "image_embeddings": embedding,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": np.zeros((1, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
            samples.append(DecoderSample(feeds, low[0] > 0, valid))
        per_image_samples.append(samples)
    return per_image_samples


def _flat(groups: list[list[DecoderSample]]) -> list[DecoderSample]:
    return [s for group in groups for s in group]


def decoder_metric(flavour: str):
    """``validation_fn`` for NNCF: mean low-res best-mask IoU of a compiled decoder against the FP32 masks."""

    low_name, iou_name = DECODER_OUTPUTS

    def validate(compiled: ov.CompiledModel, samples) -> tuple[float, list[float]]:
        values = []
        for s in samples:
            out = compiled(s.feeds)
            best = _best_low_res(out[compiled.output(low_name)], out[compiled.output(iou_name)], flavour)
            values.append(_low_res_iou(best, s.reference, s.valid))
        return float(np.mean(values)), values

    return validate


def encoder_metric(decoder: ov.CompiledModel, flavour: str):
    """``validation_fn`` for NNCF: the same IoU with a compiled encoder feeding the FP32 decoder."""
    judge = decoder_metric(flavour)

    def validate(compiled: ov.CompiledModel, samples) -> tuple[float, list[float]]:
        values = []
        for s in samples:
            embedding = compiled({ENCODER_INPUT: s.input_tensor})[compiled.output(ENCODER_OUTPUT)]
            prompts = [DecoderSample({**p.feeds, "image_embeddings": embedding}, p.reference, p.valid) for p in s.prompts]
            values.append(judge(decoder, prompts)[0])
        return float(np.mean(values)), values

    return validate


def _quantize(
    model: ov.Model,
    calibration: nncf.Dataset,
    subset_size: int,
    ignored: nncf.IgnoredScope | None,
    validation=None,
    max_drop: float | None = None,
    max_iterations: int | None = None,
) -> ov.Model:
    options = {"subset_size": subset_size, "model_type": nncf.ModelType.TRANSFORMER}
    if ignored is not None:
        options["ignored_scope"] = ignored
    if max_drop is None:
        return nncf.quantize(model, calibration, **options)
    dataset, metric = validation
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=max_iterations or sys.maxsize)
    return nncf.quantize_with_accuracy_control(
        model, calibration, dataset, metric, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer, **options
    )


def quantize_model_dir(
    fp32_dir: str | Path,
    images: list[Path],
    out_dir: str | Path,
    subset_size: int = 128,
    decoder: str = "fp",
    max_drop: float | None = None,
    held_out: int = 0,
    prompts_per_image: int = 4,
    max_iterations: int | None = None,
    overwrite: bool = False,
    log=print,
) -> dict:
    """Write an INT8 model dir next to the FP32 one's contract; returns what was done and measured.

    The encoder is always W8A8; the decoder stays as exported (``"fp"``) or is W8A8 too
    (``"int8"``). With ``max_drop``, the last ``held_out`` images are kept out of calibration and
    NNCF's accuracy control reverts layers (at most ``max_iterations`` per model) until mean
    best-mask IoU against FP32 drops by at most ``max_drop`` end to end (the decoder gets what
    the encoder left of the budget).
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    if decoder not in ("fp", "int8"):
        raise ValueError(f"decoder must be 'fp' or 'int8', got {decoder!r}")
    check_out_dir(out_dir, overwrite)  # before the slow part
    manifest = Manifest.read(fp32_dir)
    if manifest.quantization is not None:
        raise TinySamError(f"{fp32_dir} is already quantized; start from an FP32 model dir")
    if max_drop is not None and held_out < 1:
        raise ValueError("accuracy control needs held-out images (held_out >= 1)")
    calib, validation = (images[:-held_out], images[-held_out:]) if held_out else (images, [])
    if not calib:
        raise ValueError(f"no calibration images left after holding out {held_out}")
    subset_size = min(subset_size, len(calib))
    core = ov.Core()
    reference = Predictor(fp32_dir)
    report: dict = {"encoder": "int8", "decoder": decoder, "calibration_images": len(calib), "held_out_images": len(validation), "subset_size": subset_size}

    log(f"quantizing the encoder on {subset_size} images")
    encoder_fp = core.read_model(fp32_dir / manifest.files["encoder"])
    encoder_validation = held = None
    if max_drop is not None:
        by_image = collect_decoder_samples(reference, validation, prompts_per_image, "held-out prompts")
        tensors = [_encoder_input(p)[ENCODER_INPUT] for p in validation]
        decoder_fp = core.compile_model(fp32_dir / manifest.files["decoder"], "CPU", F32)
        encoder_validation = (nncf.Dataset([EncoderSample(t, s) for t, s in zip(tensors, by_image)]), encoder_metric(decoder_fp, manifest.flavour))
    encoder_int8 = _quantize(encoder_fp, nncf.Dataset(calib, _encoder_input), subset_size, None, encoder_validation, max_drop, max_iterations)
    if encoder_validation is not None:
        int8_encoder = core.compile_model(encoder_int8, "CPU", F32)
        report["encoder_iou_vs_fp32"] = encoder_validation[1](int8_encoder, encoder_validation[0].get_data())[0]
        # held-out prompts on INT8 embeddings with FP32 reference masks: judge the decoder and the final drop
        held = _flat(collect_decoder_samples(reference, validation, prompts_per_image, "held-out prompts (INT8 embeddings)", encoder=int8_encoder))

    models = {"encoder": encoder_int8}
    if decoder == "int8":
        per_image = max(1, -(-subset_size // len(calib)))
        decoder_images = calib[: -(-subset_size // per_image)]
        calib_samples = _flat(collect_decoder_samples(reference, decoder_images, per_image, "decoder calibration"))
        log(f"quantizing the decoder on {min(subset_size, len(calib_samples))} prompts")
        decoder_validation, budget = None, max_drop
        if max_drop is not None:
            budget = max_drop - (1.0 - report["encoder_iou_vs_fp32"])
            decoder_validation = (nncf.Dataset(held), decoder_metric(manifest.flavour))
        if budget is not None and budget <= 0:
            log("the encoder used the whole accuracy budget; keeping the decoder in full precision")
            report["decoder"] = "fp"
        else:
            decoder_fp_model = core.read_model(fp32_dir / manifest.files["decoder"])
            calibration = nncf.Dataset([s.feeds for s in calib_samples])
            decoder_int8 = _quantize(decoder_fp_model, calibration, min(subset_size, len(calib_samples)), DECODER_IGNORED, decoder_validation, budget, max_iterations)
            models["decoder"] = decoder_int8
            for role, shape in manifest.static_shapes.items():
                static = decoder_int8.clone()
                static.reshape({"point_coords": [shape.batch, shape.points, 2], "point_labels": [shape.batch, shape.points], "mask_input": [1, 1, LOW_RES_SIZE, LOW_RES_SIZE]})
                models[role] = static
    if max_drop is not None:
        final_decoder = core.compile_model(models.get("decoder", core.read_model(fp32_dir / manifest.files["decoder"])), "CPU", F32)
        iou = decoder_metric(manifest.flavour)(final_decoder, held)[0]
        report.update(max_drop=max_drop, iou_vs_fp32=iou, drop=1.0 - iou, drop_met=1.0 - iou <= max_drop + 1e-9)
        if not report["drop_met"]:
            log(f"could not keep the drop within {max_drop}: measured {1.0 - iou:.4f} (mean IoU {iou:.4f}); the closest model is written")

    report["method"] = "nncf.quantize" if max_drop is None else "nncf.quantize_with_accuracy_control"
    report.update(model_type="TRANSFORMER", nncf=nncf.__version__, source_model_dir=str(fp32_dir))
    with staged_dir(out_dir, overwrite) as tmp:
        for role, xml in manifest.files.items():
            if role in models:
                ov.save_model(models[role], tmp / xml, compress_to_fp16=False)
            else:
                for name in (xml, str(Path(xml).with_suffix(".bin"))):
                    shutil.copy2(fp32_dir / name, tmp / name)
        Manifest(
            model=manifest.model,
            flavour=manifest.flavour,
            weights_precision="int8",
            quantization=report,
            source=manifest.source,
            versions={**manifest.versions, "nncf": nncf.__version__, "openvino_quantized_with": ov.get_version()},
            files=manifest.files,
            static_shapes=manifest.static_shapes,
        ).write(tmp)
    return report

"""NNCF W8A8 post-training quantization of an exported model dir (the OpenVINO-IR path of NNCF)."""

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters, QuantizationParameters
from tqdm import tqdm

from tinysam_edge import Predictor, load_image
from tinysam_edge.decoder_graphs import prompt_shaped
from tinysam_edge.devices import shared_core
from tinysam_edge.errors import TinySamError, error_cause
from tinysam_edge.files import check_replaceable, replaced_dir
from tinysam_edge.manifest import DECODER_OUTPUTS, ENCODER_INPUT, ENCODER_OUTPUT, PROMPT_POINT_INPUTS, Manifest
from tinysam_edge.masks import select_masks
from tinysam_edge.object_prompts import image_rng, model_objects, prompts_for_objects
from tinysam_edge.prompts import LOW_RES_SIZE, check_prompts, encode_prompts
from tinysam_edge.transforms import preprocess

from .evaluation.agreement import mask_iou

#: Validation and reference runs are pinned to f32 (this CPU would otherwise pick bf16).
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
#: The mask-prompt branch is tiny and calibration has no mask prompts to measure it with.
DECODER_IGNORED = nncf.IgnoredScope(patterns=[".*mask_downscaling.*"], validate=False)
#: Activations quantized per tensor. Left to itself, NNCF gives a depthwise convolution's input a per-channel
#: quantizer and moves it up through the Transpose/Reshape before it, where its axis becomes TinyViT's token
#: axis: OpenVINO's CPU plugin cannot run such a convolution in int8, and 10 of the 15 ran in floating point.
PER_TENSOR = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
#: Graph nodes that never hold activations worth a quantizer of their own.
_NOT_COMPUTE = ("Parameter", "Constant", "Result")


def variance_nodes(model: ov.Model) -> list[str]:
    """Names of the split decoder's nodes that only feed its LayerNorm variances (the ``Sqrt`` of each ``rsqrt``).

    The variance of a low-rank image token is a sum of terms of either sign (a quadratic form
    R (W W^T) R^T and cross terms with per-image products, ``cached_decoder.py``): an 8-bit error
    in one term is not bounded by the variance and could push it to zero and the rsqrt to inf.
    Found by graph structure (every consumer of the node lies on the way to a ``Sqrt``) because
    torch's node numbering is not stable.
    """
    cone = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Sqrt"}
    for op in reversed(model.get_ordered_ops()):  # consumers before producers
        if op.get_friendly_name() in cone or op.get_type_name() in _NOT_COMPUTE:
            continue
        consumers = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        if consumers and all(c in cone for c in consumers):
            cone.add(op.get_friendly_name())
    return sorted(cone)


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


#: What NNCF and OpenVINO raise when a model, dataset or setting cannot be quantized.
QUANTIZE_ERRORS = (
    nncf.errors.ValidationError,
    nncf.errors.InternalError,
    nncf.errors.UnsupportedModelError,
    nncf.errors.UnsupportedDatasetError,
    RuntimeError,
)


def quantize_graph(
    what: str,
    model: ov.Model,
    calibration: nncf.Dataset,
    subset_size: int,
    ignored: nncf.IgnoredScope | None,
    validation: tuple | None = None,
    max_drop: float | None = None,
    max_iterations: int | None = None,
) -> ov.Model:
    """W8A8 ``model`` (plain, or with accuracy control when ``max_drop`` is set); failures are ``TinySamError`` with NNCF's cause."""
    options = {"subset_size": subset_size, "model_type": nncf.ModelType.TRANSFORMER}
    if ignored is not None:
        options["ignored_scope"] = ignored
    try:
        if max_drop is None:
            return nncf.quantize(model, calibration, advanced_parameters=PER_TENSOR, **options)
        dataset, metric = validation
        restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=max_iterations or sys.maxsize)
        return nncf.quantize_with_accuracy_control(
            model,
            calibration,
            dataset,
            metric,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=PER_TENSOR,
            advanced_accuracy_restorer_parameters=restorer,
            **options,
        )
    except QUANTIZE_ERRORS as exc:
        raise TinySamError(f"NNCF could not quantize the {what} ({error_cause(exc)})") from exc


def _check_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_options(
    images: list[Path],
    subset_size: int,
    decoder: str,
    max_drop: float | None,
    held_out: int,
    prompts_per_image: int,
    max_iterations: int | None,
) -> None:
    """Refuse settings ``quantize_model_dir`` cannot honour, before any slow work."""
    _check_count("subset_size", subset_size, 1)
    _check_count("held_out", held_out, 0)
    _check_count("prompts_per_image", prompts_per_image, 1)
    if max_iterations is not None:
        _check_count("max_iterations", max_iterations, 1)
    if decoder not in ("fp", "int8"):
        raise ValueError(f"decoder must be 'fp' or 'int8', got {decoder!r}")
    if max_drop is not None and not (isinstance(max_drop, (int, float)) and not isinstance(max_drop, bool) and 0.0 <= max_drop <= 1.0):
        raise ValueError(f"max_drop must be a number in 0..1 (a drop of mean IoU), got {max_drop!r}")
    if max_drop is not None and held_out < 1:
        raise ValueError("accuracy control needs held-out images (held_out >= 1)")
    if held_out >= len(images):
        raise ValueError(f"no calibration images left among {len(images)} after holding out {held_out}")


@dataclass
class QuantizationJob:
    """One quantization run: the FP32 model dir, its image split and settings, and the FP32 reference pipeline."""

    fp32_dir: Path
    manifest: Manifest
    calib: list[Path]
    validation: list[Path]
    subset_size: int
    max_drop: float | None
    prompts_per_image: int
    max_iterations: int | None
    log: Callable[[str], None]
    core: ov.Core = field(default_factory=shared_core)
    reference: Predictor | None = None

    def read(self, role: str) -> ov.Model:
        """The FP32 ``ov.Model`` of a manifest role."""
        return self.core.read_model(self.fp32_dir / self.manifest.files[role])


def quantize_encoder(job: QuantizationJob, report: dict) -> tuple[ov.Model, list[DecoderSample] | None]:
    """The W8A8 encoder and, with accuracy control, the held-out decoder samples on its embeddings (FP32 reference masks)."""
    job.log(f"quantizing the encoder on {job.subset_size} images")
    validation = None
    if job.max_drop is not None:
        by_image = collect_decoder_samples(job.reference, job.validation, job.prompts_per_image, "held-out prompts")
        tensors = [_encoder_input(p)[ENCODER_INPUT] for p in job.validation]
        decoder_fp = job.core.compile_model(job.read("decoder"), "CPU", F32)
        validation = (
            nncf.Dataset([EncoderSample(t, s) for t, s in zip(tensors, by_image)]),
            encoder_metric(decoder_fp, job.manifest.flavour),
        )
    calibration = nncf.Dataset(job.calib, _encoder_input)
    encoder = quantize_graph(
        "encoder", job.read("encoder"), calibration, job.subset_size, None, validation, job.max_drop, job.max_iterations
    )
    if validation is None:
        return encoder, None
    compiled = job.core.compile_model(encoder, "CPU", F32)
    report["encoder_iou_vs_fp32"] = validation[1](compiled, validation[0].get_data())[0]
    desc = "held-out prompts (INT8 embeddings)"
    return encoder, _flat(collect_decoder_samples(job.reference, job.validation, job.prompts_per_image, desc, encoder=compiled))


def quantize_decoder(job: QuantizationJob, report: dict, held: list[DecoderSample] | None) -> dict[str, ov.Model]:
    """The W8A8 plain decoder and its static variants by role; none when the encoder used the whole accuracy budget."""
    per_image = max(1, -(-job.subset_size // len(job.calib)))
    decoder_images = job.calib[: -(-job.subset_size // per_image)]
    samples = _flat(collect_decoder_samples(job.reference, decoder_images, per_image, "decoder calibration"))
    subset = min(job.subset_size, len(samples))
    job.log(f"quantizing the decoder on {subset} prompts")
    validation, budget = None, job.max_drop
    if job.max_drop is not None:
        budget = job.max_drop - (1.0 - report["encoder_iou_vs_fp32"])
        validation = (nncf.Dataset(held), decoder_metric(job.manifest.flavour))
    if budget is not None and budget <= 0:
        job.log("the encoder used the whole accuracy budget; keeping the decoder in full precision")
        report["decoder"] = "fp"
        return {}
    calibration = nncf.Dataset([s.feeds for s in samples])
    decoder = quantize_graph("decoder", job.read("decoder"), calibration, subset, DECODER_IGNORED, validation, budget, job.max_iterations)
    models = {"decoder": decoder}
    for role, shape in job.manifest.static_shapes.items():
        models[role] = prompt_shaped(decoder, shape.batch, shape.points, masks=1)
    if "decoder_prompt" in job.manifest.files and "decoder_image" in job.manifest.files:
        models["decoder_prompt"] = quantize_prompt_decoder(job, samples, subset)
    return models


def split_feeds(image_graph: ov.CompiledModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Plain-decoder feeds -> the per-prompt graph's: ``decoder_image``'s per-image tensors of the embedding plus the prompt."""
    state = image_graph({"image_embeddings": feeds["image_embeddings"]})
    return {**{out.get_any_name(): state[out] for out in image_graph.outputs}, **{k: feeds[k] for k in PROMPT_POINT_INPUTS}}


def quantize_prompt_decoder(job: QuantizationJob, samples: list[DecoderSample], subset: int) -> ov.Model:
    """The W8A8 per-prompt split decoder (``decoder_prompt``; the runtime cuts its IoU-only graph from it).

    Calibrated on the same prompts as the plain decoder, with the per-image tensors that the FP32
    ``decoder_image`` computes from their embeddings (made per sample as NNCF reads it: about 30 MB
    each); the LayerNorm variances stay in float (``variance_nodes``).
    """
    job.log(f"quantizing the per-prompt decoder on {subset} prompts")
    image_graph = job.core.compile_model(job.read("decoder_image"), "CPU", F32)
    model = job.read("decoder_prompt")
    calibration = nncf.Dataset(samples, lambda s: split_feeds(image_graph, s.feeds))
    ignored = nncf.IgnoredScope(names=variance_nodes(model), validate=False)
    return quantize_graph("per-prompt decoder", model, calibration, subset, ignored)


def measure_drop(job: QuantizationJob, report: dict, models: dict[str, ov.Model], held: list[DecoderSample]) -> None:
    """Record the end-to-end drop of mean best-mask IoU on the held-out prompts and whether it meets ``max_drop``."""
    final_decoder = job.core.compile_model(models.get("decoder", job.read("decoder")), "CPU", F32)
    iou = decoder_metric(job.manifest.flavour)(final_decoder, held)[0]
    report.update(max_drop=job.max_drop, iou_vs_fp32=iou, drop=1.0 - iou, drop_met=1.0 - iou <= job.max_drop + 1e-9)
    if "decoder_prompt" in models:  # quantized without accuracy control: recorded, not held to max_drop
        image_graph = job.core.compile_model(job.read("decoder_image"), "CPU", F32)
        split = (DecoderSample(split_feeds(image_graph, s.feeds), s.reference, s.valid) for s in held)  # 30 MB each: one at a time
        prompt = job.core.compile_model(models["decoder_prompt"], "CPU", F32)
        report["decoder_prompt_iou_vs_fp32"] = decoder_metric(job.manifest.flavour)(prompt, split)[0]
    if not report["drop_met"]:
        job.log(
            f"could not keep the drop within {job.max_drop}: measured {1.0 - iou:.4f} (mean IoU {iou:.4f}); the closest model is written"
        )


def write_model_dir(job: QuantizationJob, models: dict[str, ov.Model], report: dict, out_dir: Path, overwrite: bool) -> None:
    """Stage the quantized IRs (and copies of the untouched FP32 ones) with their manifest, then move them into ``out_dir``."""
    manifest = job.manifest
    with replaced_dir(out_dir, [job.fp32_dir, *job.calib, *job.validation], overwrite) as tmp:
        for role, xml in manifest.files.items():
            if role in models:
                try:
                    ov.save_model(models[role], tmp / xml, compress_to_fp16=False)
                except RuntimeError as exc:
                    raise TinySamError(f"OpenVINO could not save the quantized {role} ({error_cause(exc)})") from exc
            else:
                for name in (xml, str(Path(xml).with_suffix(".bin"))):
                    shutil.copy2(job.fp32_dir / name, tmp / name)
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
    log: Callable[[str], None] = print,
) -> dict:
    """Write an INT8 model dir next to the FP32 one's contract; returns what was done and measured.

    The encoder is always W8A8; the decoders stay as exported (``"fp"``) or the plain one, its
    static variants and the split decoder's per-prompt graph are W8A8 too (``"int8"``; the
    manifest's ``quantization.int8_graphs`` lists the roles). With ``max_drop`` (0..1), the last
    ``held_out`` images are kept out of calibration and NNCF's accuracy control reverts layers (at
    most ``max_iterations`` per model) until mean best-mask IoU against FP32 drops by at most
    ``max_drop`` end to end (the decoder gets what the encoder left of the budget; the per-prompt
    graph is quantized without it and its IoU is recorded). Bad settings raise ``ValueError``
    before any slow work.
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    check_options(images, subset_size, decoder, max_drop, held_out, prompts_per_image, max_iterations)
    check_replaceable(out_dir, [fp32_dir, *images], overwrite)  # before the slow part
    manifest = Manifest.read(fp32_dir)
    if manifest.quantization is not None:
        raise TinySamError(f"{fp32_dir} is already quantized; start from an FP32 model dir")
    calib, validation = (images[:-held_out], images[-held_out:]) if held_out else (images, [])
    job = QuantizationJob(
        fp32_dir, manifest, calib, validation, min(subset_size, len(calib)), max_drop, prompts_per_image, max_iterations, log
    )
    job.reference = Predictor(fp32_dir)
    report: dict = {
        "encoder": "int8",
        "decoder": decoder,
        "calibration_images": len(calib),
        "held_out_images": len(validation),
        "subset_size": job.subset_size,
    }
    encoder, held = quantize_encoder(job, report)
    models = {"encoder": encoder}
    if decoder == "int8":
        models |= quantize_decoder(job, report, held)
    if max_drop is not None:
        measure_drop(job, report, models, held)
    report["int8_graphs"] = sorted(models)  # the roles quantized; the other IRs are the FP32 ones, copied
    report["method"] = "nncf.quantize" if max_drop is None else "nncf.quantize_with_accuracy_control"
    report.update(model_type="TRANSFORMER", activations="per-tensor", nncf=nncf.__version__, source_model_dir=str(fp32_dir))
    write_model_dir(job, models, report, out_dir, overwrite)
    return report

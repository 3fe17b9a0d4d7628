"""The exported model directory: ``manifest.json`` and the IR input/output contract it records."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelDirError, error_cause
from .masks import FLAVOURS

MANIFEST_FILE = "manifest.json"
FORMAT = "tinysam-edge-ir"
FORMAT_VERSION = 1
#: The record of an ONNX export (``export --format onnx``); ``files.model_dir_files`` recognises it too.
ONNX_CONFIG_FILE = "config.json"
ONNX_FORMAT = "tinysam-edge-onnx"

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
ENCODER_CONTRACT = {
    ENCODER_INPUT: "[1,3,1024,1024] f32: RGB resized (longest side 1024, PIL bilinear), (x - mean) / std, zero-padded bottom/right",
    ENCODER_OUTPUT: "[1,256,64,64] f32",
}
DECODER_INPUTS = {
    "image_embeddings": "[1,256,64,64] f32",
    "point_coords": "[B,N,2] f32 (x, y) in the 1024-input frame (before SAM's +0.5 shift, which the graph applies)",
    "point_labels": "[B,N] f32: -2 empty slot (masked out), -1 padding point, 0 negative, 1 positive, 2/3 box top-left/bottom-right",
    "mask_input": "[M,1,256,256] f32 low-res logits of an earlier prediction, M in {1, B}",
    "has_mask_input": "[1] f32: 1 uses mask_input, 0 the learned no-mask embedding",
}
PROMPT_POINT_INPUTS = ("point_coords", "point_labels")
CACHED_DECODER_CONTRACT = {
    "decoder_image": "image_embeddings [1,256,64,64] f32 -> the per-image tensors of the split decoder (no mask prompt)",
    "decoder_prompt": "those tensors + point_coords / point_labels (as for decoder) -> the decoder's outputs; CPU only:"
    " static-shape devices (GPU, NPU) use decoder_static*, which keep the plain graph",
}
#: Inclusive ranges of the static decoders' point slots and prompt batch that ``export`` writes.
POINT_SLOTS = (1, 64)
STATIC_BATCH = (1, 1024)
#: How the weights of a model dir's IRs are stored: exported in fp32 or fp16, or quantized to int8 (W8A8, NNCF).
WEIGHTS_PRECISIONS = ("fp32", "fp16", "int8")
DECODER_OUTPUTS = {
    "low_res_logits": "[B,4,256,256] f32, all four mask tokens (token 0: single-mask output, 1..3: multimask)",
    "iou_predictions": "[B,4] f32",
}


@dataclass(frozen=True)
class VariantShape:
    """Fixed prompt batch and point-slot count of a static decoder."""

    batch: int
    points: int


@dataclass
class Manifest:
    """What an exported model directory holds and how it was made."""

    model: str
    flavour: str
    weights_precision: str  # one of WEIGHTS_PRECISIONS: fp32 / fp16 exports, int8 after ``quantize``
    quantization: dict | None  # None for float models; NNCF settings for INT8 ones
    source: dict  # {"name": ..., "sha256": ...} of the source checkpoint
    versions: dict  # tinysam_edge / openvino / torch (/ nncf) versions that exported it
    files: dict[str, str]  # role -> .xml file name (the .bin sits beside it)
    static_shapes: dict[str, VariantShape] = field(default_factory=dict)

    def write(self, model_dir: str | Path) -> None:
        """Write ``manifest.json`` with the input contract."""
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        data["contract"] = {
            "encoder": ENCODER_CONTRACT,
            "decoder_inputs": DECODER_INPUTS,
            "decoder_outputs": DECODER_OUTPUTS,
            "cached_decoder": CACHED_DECODER_CONTRACT,
        }
        (Path(model_dir) / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def read(cls, model_dir: str | Path) -> "Manifest":
        """Read and validate a model directory's manifest; every problem is one ``ModelDirError``."""
        model_dir = Path(model_dir)
        path = model_dir / MANIFEST_FILE
        if not model_dir.is_dir():
            raise ModelDirError(
                f"model dir {model_dir} does not exist; create one with 'tinysam-edge export --checkpoint NAME --out {model_dir}'"
            )
        if not path.is_file():
            raise ModelDirError(f"{model_dir} is not a tinysam-edge model dir (no {MANIFEST_FILE}); create one with 'tinysam-edge export'")
        try:
            data = json.loads(path.read_text())
        except UnicodeDecodeError as exc:
            raise ModelDirError(f"{path} is malformed (not UTF-8: {error_cause(exc)}); re-export the model") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelDirError(f"{path} is not a {FORMAT} manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelDirError(
                f"{path} has format version {data.get('format_version')}, this tinysam-edge reads version {FORMAT_VERSION}; re-export the model"
            )
        try:
            manifest = cls(
                model=data["model"],
                flavour=data["flavour"],
                weights_precision=data["weights_precision"],
                quantization=data.get("quantization"),
                source=data["source"],
                versions=data["versions"],
                files=dict(data["files"]),
                static_shapes={k: VariantShape(**v) for k, v in data.get("static_shapes", {}).items()},
            )
        except KeyError as exc:
            raise ModelDirError(f"{path} is incomplete or malformed (problem with {exc})") from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{path} is malformed ({error_cause(exc)}); re-export the model") from exc
        manifest._check(path)
        return manifest

    def _check(self, path: Path) -> None:
        """What the runtime relies on, checked before anything is compiled: known flavour and precision, every IR
        (and its .bin) inside the model dir and present, static decoders with a batch and point slots of 1..65536."""
        model_dir = path.parent
        if not isinstance(self.flavour, str) or self.flavour not in FLAVOURS:
            raise ModelDirError(f"{path} gives flavour {self.flavour!r}, not one of {', '.join(FLAVOURS)}; re-export the model")
        if self.weights_precision not in WEIGHTS_PRECISIONS:
            raise ModelDirError(f"{path} has weights_precision {self.weights_precision!r}, not one of {', '.join(WEIGHTS_PRECISIONS)}")
        if (self.weights_precision == "int8") != (self.quantization is not None):
            raise ModelDirError(
                f"{path} is inconsistent: weights_precision {self.weights_precision!r} with quantization {self.quantization!r}"
            )
        for role in ("encoder", "decoder"):
            if role not in self.files:
                raise ModelDirError(f"{path} lists no {role} IR")
        for role, name in self.files.items():
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ModelDirError(f"{path} points {role} outside the model dir ({name}); refusing to read it")
        for role, shape in self.static_shapes.items():
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 for v in (shape.batch, shape.points)):
                raise ModelDirError(
                    f"{path} gives {role} batch {shape.batch!r} and {shape.points!r} point slots (each must be 1..65536); re-export the model"
                )
        missing = [
            name for xml in self.files.values() for name in (xml, str(Path(xml).with_suffix(".bin"))) if not (model_dir / name).is_file()
        ]
        if missing:
            raise ModelDirError(f"model dir {model_dir} is incomplete: missing {', '.join(missing)}; re-export it")

"""SamPredictor-style predictors: the shared contract, and the OpenVINO runtime that implements it."""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

from .devices import STATIC_DEVICES, check_device, compile_config, compile_model, describe, device_family
from .errors import ModelDirError
from .image import to_rgb_uint8
from .manifest import DECODER_OUTPUTS, ENCODER_INPUT, ENCODER_OUTPUT, Manifest, VariantShape
from .masks import MASK_THRESHOLD, postprocess_masks, select_masks
from .prompts import LABEL_EMPTY, LOW_RES_SIZE, check_batch_prompts, check_prompts, encode_prompts
from .transforms import preprocess


class PredictorBase(ABC):
    """Shared pre/post-processing; a backend implements ``_encode`` and ``_decode``.

    Not thread-safe: it holds the current image's embedding and reusable inference requests.
    Use one predictor per thread.
    """

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour
        #: Seconds spent in the stages of the last set_image / predict call.
        self.timings: dict[str, float] = {}
        self.reset_image()

    @abstractmethod
    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        """(1, 3, 1024, 1024) float32 -> (1, 256, 64, 64) float32 image embedding."""

    @abstractmethod
    def _decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Decode (B, N, 2) coords / (B, N) labels -> all 4 tokens' logits (B, 4, 256, 256) and IoU (B, 4)."""

    def reset_image(self) -> None:
        """Forget the current image."""
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image (grayscale/RGBA are converted)."""
        start = time.perf_counter()
        rgb = to_rgb_uint8(image, image_format)
        input_tensor, input_size = preprocess(rgb)
        encode_start = time.perf_counter()
        self.features = self._encode(input_tensor)
        self.timings = {"preprocess": encode_start - start, "encoder": time.perf_counter() - encode_start}
        self.original_size = (rgb.shape[0], rgb.shape[1])
        self.input_size = input_size

    @property
    def is_image_set(self) -> bool:
        """Whether ``set_image`` has been called."""
        return self.features is not None

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, (1, 256, 64, 64) float32."""
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if self.features is None:
            raise RuntimeError("call set_image(...) before predicting")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment with point (N, 2) + labels (N,), box (4,) XYXY and/or mask_input (1, 256, 256) prompts.

        Returns (masks (C, H, W) bool, or float logits with ``return_logits``; scores (C,) float32;
        low-res logits (C, 256, 256) float32) with C=3 for ``multimask_output`` and C=1 otherwise
        (see ``tinysam_edge.masks.select_masks`` for how the single mask is chosen).
        """
        self._require_image()
        prompts = check_prompts(point_coords, point_labels, box, mask_input, self.original_size)
        coords, labels = encode_prompts(prompts, self.original_size)
        mask = None if prompts.mask_input is None else prompts.mask_input[None]
        start = time.perf_counter()
        low_res, iou = self._decode(self.features, coords, labels, mask)
        post_start = time.perf_counter()
        low_res, iou = select_masks(low_res, iou, multimask_output, self.flavour)
        masks = self.upscale(low_res[0])
        if not return_logits:
            masks = masks > MASK_THRESHOLD
        self.timings.update(decoder=post_start - start, postprocess=time.perf_counter() - post_start)
        return masks, iou[0].astype(np.float32), low_res[0].astype(np.float32)

    def decode_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode B prompt sets on the current image in one go: points (B, N, 2) + labels (B, N) and/or boxes (B, 4).

        Labels are 1/0, with -1 padding sets that have fewer points. Returns low-res logits
        (B, C, 256, 256) and scores (B, C); ``upscale`` turns chosen logits into full-size ones.
        """
        self._require_image()
        prompts = check_batch_prompts(point_coords, point_labels, boxes, self.original_size)
        coords, labels = encode_prompts(prompts, self.original_size)
        low_res, iou = self._decode(self.features, coords, labels, None)
        return select_masks(low_res, iou, multimask_output, self.flavour)

    def upscale(self, low_res_logits: np.ndarray) -> np.ndarray:
        """(C, 256, 256) low-res logits of the current image -> (C, H, W) float32 logits."""
        self._require_image()
        return postprocess_masks(low_res_logits, self.input_size, self.original_size)


class Predictor(PredictorBase):
    """OpenVINO predictor for an exported model directory (``tinysam-edge export``).

    ``device``: CPU, GPU, NPU or AUTO (``GPU.1`` etc. work too). ``precision``: inference precision
    hint (f32 / bf16 / f16); ``None`` pins f32 on CPU and GPU, so results never silently drop to
    bf16/f16. CPU uses the dynamic decoder; GPU, NPU and AUTO use the static-shape ones, which pad
    prompts to fixed slots (override with ``static_shapes``). ``device_used`` and ``precision_used``
    report what OpenVINO actually runs. Compiled blobs are cached in ``cache_dir`` (default: the
    weights cache's ``ov-cache``).
    """

    #: How many exact (batch, points, masks) decoder shapes a CPU predictor compiles on first use.
    MAX_SPECIALIZED = 8

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "CPU",
        precision: str | None = None,
        cache_dir: str | Path | None = None,
        num_threads: int | None = None,
        performance_hint: str = "LATENCY",
        static_shapes: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        self.device = device
        core = ov.Core()
        check_device(core, device)
        config = compile_config(device, precision, num_threads, cache_dir, performance_hint)
        self.static_shapes = device_family(device) in STATIC_DEVICES if static_shapes is None else static_shapes

        self._encoder = compile_model(core, self._read(core, "encoder"), device, config)
        self._core, self._config = core, config
        self._decoders: dict[object, ov.CompiledModel] = {}
        if self.static_shapes:
            for role in ("decoder_static", "decoder_static_batch"):
                if role not in self.manifest.files:
                    raise ModelDirError(f"{self.model_dir} has no {role} IR, which {device} needs; re-export the model")
                self._decoders[self.manifest.static_shapes[role]] = compile_model(core, self._read(core, role), device, config)
            self._interactive, self._batched = (self.manifest.static_shapes[r] for r in ("decoder_static", "decoder_static_batch"))
        else:
            self._dynamic_decoder = self._read(core, "decoder")
            self._decoders[None] = compile_model(core, self._dynamic_decoder, device, config)
        self._requests = {key: model.create_infer_request() for key, model in self._decoders.items()}
        if not self.static_shapes:
            self._specialized((1, 2), 0)  # one click (point + padding point): ready before the first click
        self._encoder_request = self._encoder.create_infer_request()
        self._encoder_queue: ov.AsyncInferQueue | None = None
        self.device_used, self.precision_used = describe(self._encoder)
        super().__init__(self.manifest.flavour)

    def set_image_async(self, image: np.ndarray, image_format: str = "RGB") -> Callable[[], None]:
        """Start embedding ``image`` in the background (OpenVINO ``AsyncInferQueue``) and return a function
        that waits for it and makes it the current image. Until then the previous image stays current,
        so a video loop can decode and draw frame N while frame N+1 is being encoded.
        """
        start = time.perf_counter()
        rgb = to_rgb_uint8(image, image_format)
        input_tensor, input_size = preprocess(rgb)
        preprocess_s = time.perf_counter() - start
        if self._encoder_queue is None:
            self._encoder_queue = ov.AsyncInferQueue(self._encoder, 1)
        self._encoder_queue.start_async({ENCODER_INPUT: input_tensor})
        encode_start = time.perf_counter()

        def finish() -> None:
            self._encoder_queue.wait_all()
            request = self._encoder_queue[0]
            self.features = request.get_tensor(self._encoder.output(ENCODER_OUTPUT)).data.copy()
            self.original_size, self.input_size = (rgb.shape[0], rgb.shape[1]), input_size
            self.timings = {"preprocess": preprocess_s, "encoder": time.perf_counter() - encode_start}

        return finish

    def _read(self, core: ov.Core, role: str) -> ov.Model:
        path = self.model_dir / self.manifest.files[role]
        try:
            return core.read_model(path)
        except RuntimeError as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
            raise ModelDirError(f"cannot read {path} (corrupt or from an incompatible OpenVINO): {first}") from exc

    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        result = self._encoder_request.infer({ENCODER_INPUT: input_tensor}, share_inputs=True)
        return result[self._encoder.output(ENCODER_OUTPUT)].copy()

    def _decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        has_mask = np.ones(1, np.float32) if mask_input is not None else np.zeros(1, np.float32)
        if not self.static_shapes:
            # An empty mask batch skips the mask branch of the graph; the flag says which prompt to use.
            mask = mask_input if mask_input is not None else np.zeros((0, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32)
            return self._infer(self._specialized(coords.shape, mask.shape[0]), embedding, coords, labels, mask, has_mask)
        shape = self._interactive if coords.shape[0] == 1 else self._batched
        if coords.shape[1] > shape.points:
            raise ValueError(
                f"{coords.shape[1]} prompt points (padding and box corners included) exceed the {shape.points} slots of the static decoder "
                f"used on {self.device}; re-export with more --point-slots"
            )
        mask = mask_input if mask_input is not None else np.zeros((1, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32)
        if mask.shape[0] != 1:
            raise ValueError(f"the static decoders used on {self.device} take one mask_input for all prompts, got {mask.shape[0]}")
        pad = shape.points - coords.shape[1]
        coords = np.pad(coords, ((0, 0), (0, pad), (0, 0)))
        labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=LABEL_EMPTY)
        outputs = []
        for start in range(0, coords.shape[0], shape.batch):
            chunk_coords, chunk_labels = coords[start : start + shape.batch], labels[start : start + shape.batch]
            n = chunk_coords.shape[0]
            if n < shape.batch:  # fill the fixed batch with empty prompts and drop their outputs
                chunk_coords = np.pad(chunk_coords, ((0, shape.batch - n), (0, 0), (0, 0)))
                chunk_labels = np.pad(chunk_labels, ((0, shape.batch - n), (0, 0)), constant_values=LABEL_EMPTY)
            low, iou = self._infer(shape, embedding, chunk_coords, chunk_labels, mask, has_mask)
            outputs.append((low[:n], iou[:n]))
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def _specialized(self, coords_shape: tuple[int, ...], masks: int) -> tuple[int, int, int] | None:
        """Key of a decoder compiled for exactly these shapes (CPU runs static shapes ~10% faster).

        Up to ``MAX_SPECIALIZED`` shapes are compiled on first use (a few hundred ms each, cached in
        CACHE_DIR across runs); rarer shapes run on the dynamic decoder.
        """
        key = (coords_shape[0], coords_shape[1], masks)
        if key not in self._decoders and len(self._decoders) <= self.MAX_SPECIALIZED:
            model = self._dynamic_decoder.clone()
            b, n, m = key
            model.reshape({"point_coords": [b, n, 2], "point_labels": [b, n], "mask_input": [m, 1, LOW_RES_SIZE, LOW_RES_SIZE]})
            self._decoders[key] = compile_model(self._core, model, self.device, self._config)
            self._requests[key] = self._decoders[key].create_infer_request()
        return key if key in self._decoders else None

    def _infer(self, key: VariantShape | None, embedding, coords, labels, mask, has_mask) -> tuple[np.ndarray, np.ndarray]:
        compiled = self._decoders[key]
        inputs = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels, "mask_input": mask, "has_mask_input": has_mask}
        # share_inputs: the 4 MB embedding is read in place instead of being copied on every click
        result = self._requests[key].infer({k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}, share_inputs=True)
        low_name, iou_name = DECODER_OUTPUTS
        return result[compiled.output(low_name)].copy(), result[compiled.output(iou_name)].copy()

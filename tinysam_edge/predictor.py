"""SamPredictor-style predictors: the shared contract, and the OpenVINO runtime that implements it."""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from .compiled_model import CompiledSam, load_model
from .decoder_graphs import DecoderState
from .image import to_rgb_uint8
from .manifest import ENCODER_INPUT, ENCODER_OUTPUT
from .masks import MASK_THRESHOLD, postprocess_masks, select_masks, select_tokens
from .prompts import LOW_RES_SIZE, check_batch_prompts, check_flag, check_prompts, encode_prompts
from .transforms import preprocess


@dataclass(frozen=True)
class ImageSnapshot:
    """One image's state in a predictor, detached from it (``get_image_state`` / ``set_image_state``)."""

    features: np.ndarray  # (1, 256, 64, 64) float32 embedding
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w) inside the 1024 x 1024 encoder input
    decoder_state: object | None  # the backend's per-image decoder state, if built
    prompts: int  # prompts decoded on the image so far (chooses the plain or the split decoder)
    nbytes: int  # memory held by the embedding and the decoder state


class PredictorBase(ABC):
    """Shared pre/post-processing; a backend implements ``_encode`` and ``_decode``.

    A backend may also implement ``_image_state`` / ``_decode_cached``: the decoder split into a
    per-image part and a cheaper per-prompt part. The split is used from the second prompt on an
    image and for every batch, never for a first single click (the per-image part costs about as
    much as one or two prompts), and never with ``mask_input``.

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
    def _decode(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode (B, N, 2) coords / (B, N) labels -> all 4 tokens' logits (B, 4, 256, 256) and IoU (B, 4)."""

    def _image_state(self, embedding: np.ndarray) -> object | None:
        """The per-image part of the decoder for (1, 256, 64, 64) ``embedding``; None where the backend has none."""
        return None

    def _decode_cached(
        self, state: object, coords: np.ndarray, labels: np.ndarray, exact_shape: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``_decode`` without mask_input, from an ``_image_state``; ``exact_shape=False`` for batch sizes that vary."""
        raise NotImplementedError

    def _score_cached(self, state: object, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """IoU predictions (B, 4) from an ``_image_state``, skipping the mask branch."""
        raise NotImplementedError

    def _export_state(self, state: object) -> tuple[object, int]:
        """A copy of an ``_image_state`` that outlives the next image, and its size in bytes."""
        raise NotImplementedError

    def _import_state(self, exported: object) -> object:
        """An ``_export_state`` copy made usable by this predictor."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the backend, device and precision this predictor runs on."""
        return type(self).__name__

    def get_image_state(self) -> ImageSnapshot:
        """The current image's embedding, sizes and decoder state, to restore later with ``set_image_state``
        (here or in another predictor of the same model dir) without running the encoder again."""
        self._require_image()
        exported, nbytes = None, 0
        if self._state is not None:
            exported, nbytes = self._export_state(self._state)
            self._state = exported  # unchanged state is not copied again
        nbytes += self.features.nbytes
        return ImageSnapshot(self.features, self.original_size, self.input_size, exported, self._prompts_on_image, nbytes)

    def set_image_state(self, snapshot: ImageSnapshot) -> None:
        """Make a ``get_image_state`` snapshot the current image; prompts then decode as they would have on it."""
        if not isinstance(snapshot, ImageSnapshot):
            raise TypeError(f"set_image_state takes an ImageSnapshot from get_image_state, got {type(snapshot).__name__}")
        self._set_features(snapshot.features, snapshot.original_size, snapshot.input_size)
        if snapshot.decoder_state is not None:
            self._state = self._import_state(snapshot.decoder_state)
        self._prompts_on_image = snapshot.prompts

    def reset_image(self) -> None:
        """Forget the current image (and its decoder state)."""
        self._set_features(None, None, None)

    def _set_features(self, features: np.ndarray | None, original_size: tuple[int, int] | None, input_size: tuple[int, int] | None) -> None:
        self.features = features
        self.original_size = original_size
        self.input_size = input_size
        self._state: object | None = None
        self._scored: tuple | None = None
        self._prompts_on_image = 0

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image (grayscale/RGBA are converted)."""
        start = time.perf_counter()
        rgb = to_rgb_uint8(image, image_format)
        input_tensor, input_size = preprocess(rgb)
        encode_start = time.perf_counter()
        features = self._encode(input_tensor)
        self.timings = {"preprocess": encode_start - start, "encoder": time.perf_counter() - encode_start}
        self._set_features(features, (rgb.shape[0], rgb.shape[1]), input_size)

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
        multimask_output, return_logits = check_flag(multimask_output, "multimask_output"), check_flag(return_logits, "return_logits")
        prompts = check_prompts(point_coords, point_labels, box, mask_input, self.original_size)
        coords, labels = encode_prompts(prompts, self.original_size)
        mask = None if prompts.mask_input is None else prompts.mask_input[None]
        start = time.perf_counter()
        low_res, iou = self._decode_prompts(coords, labels, mask, batch=False)
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
        multimask_output = check_flag(multimask_output, "multimask_output")
        coords, labels = self._batch_inputs(point_coords, point_labels, boxes)
        low_res, iou = self._decode_prompts(coords, labels, None, batch=True)
        return select_masks(low_res, iou, multimask_output, self.flavour)

    def decode_batch_scores(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> np.ndarray:
        """The scores (B, C) that ``decode_batch`` would return, without computing any mask.

        Where the backend has the split decoder this skips the mask branch (about 40% of a prompt);
        ``decode_batch_masks`` then decodes only the prompts a caller keeps. That pays when under
        about 40% of the prompts are kept; above, one ``decode_batch`` is cheaper.
        """
        multimask_output = check_flag(multimask_output, "multimask_output")
        coords, labels = self._batch_inputs(point_coords, point_labels, boxes)
        if self._split_state() is None:
            low_res, iou = self._decode(self.features, coords, labels, None)
        else:
            low_res, iou = None, self._score_cached(self._state, coords, labels)
        self._scored = (coords, labels, iou, low_res)
        return np.take_along_axis(iou, select_tokens(iou, multimask_output, self.flavour), axis=1)

    def decode_batch_masks(self, rows: np.ndarray, multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Low-res logits (R, C, 256, 256) and scores (R, C) of prompts ``rows`` of the last ``decode_batch_scores`` call."""
        multimask_output = check_flag(multimask_output, "multimask_output")
        if self._scored is None:
            raise RuntimeError("call decode_batch_scores(...) on this image before decode_batch_masks")
        coords, labels, iou, low_res = self._scored
        rows = np.asarray(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be integer prompt indices, got dtype {rows.dtype}")
        rows = rows.astype(np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(iou)):
            raise ValueError(f"rows must index the {len(iou)} prompts of the last decode_batch_scores call, got {rows.min()}..{rows.max()}")
        if rows.size == 0:  # nothing to decode: never hand OpenVINO an empty batch
            low_res = np.zeros((0, iou.shape[1], LOW_RES_SIZE, LOW_RES_SIZE), np.float32)
        elif low_res is not None:
            low_res = low_res[rows]
        else:
            low_res, _ = self._decode_cached(self._state, coords[rows], labels[rows], exact_shape=rows.size == 1)
        # the scores pass decides, so the rerun's rounding cannot flip a caller's filter
        return select_masks(low_res, iou[rows], multimask_output, self.flavour)

    def _batch_inputs(self, point_coords, point_labels, boxes) -> tuple[np.ndarray, np.ndarray]:
        self._require_image()
        prompts = check_batch_prompts(point_coords, point_labels, boxes, self.original_size)
        return encode_prompts(prompts, self.original_size)

    def _split_state(self) -> object | None:
        """The current image's split-decoder state, computed on first use; None where the backend has none."""
        if self._state is None:
            start = time.perf_counter()
            self._state = self._image_state(self.features)
            if self._state is not None:
                self.timings["decoder_state"] = time.perf_counter() - start
        return self._state

    def _decode_prompts(
        self, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, batch: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode on the current image: the split decoder for batches and repeated prompts, else ``_decode``."""
        self._prompts_on_image += 1
        if mask is None and (batch or self._prompts_on_image > 1) and self._split_state() is not None:
            return self._decode_cached(self._state, coords, labels)
        return self._decode(self.features, coords, labels, mask)

    def upscale(self, low_res_logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(C, 256, 256) low-res logits of the current image -> (C, H, W) float32 logits (written into ``out`` if given)."""
        self._require_image()
        low_res_logits = np.asarray(low_res_logits)
        if (
            low_res_logits.ndim != 3
            or low_res_logits.shape[1:] != (LOW_RES_SIZE, LOW_RES_SIZE)
            or not np.issubdtype(low_res_logits.dtype, np.floating)
        ):
            raise ValueError(
                f"low_res_logits must be (C, {LOW_RES_SIZE}, {LOW_RES_SIZE}) float logits, got {low_res_logits.shape} {low_res_logits.dtype}"
            )
        return postprocess_masks(low_res_logits, self.input_size, self.original_size, out)


class Predictor(PredictorBase):
    """A session on a ``CompiledSam`` (``load_model``): its own inference requests and current image.

    ``Predictor(model)`` is cheap; ``Predictor("model_dir", device=..., ...)`` is the shorthand for
    ``Predictor(load_model("model_dir", ...))`` and shares the compiled model with every other
    predictor asking for the same options. One predictor per thread.
    """

    def __init__(self, model: CompiledSam | str | Path, **options: object) -> None:
        if isinstance(model, CompiledSam):
            if options:
                raise TypeError(f"options {', '.join(options)} belong to load_model; a compiled model's options are fixed")
        else:
            model = load_model(model, **options)
        self.model = model
        self._decoders = model.decoders.session()
        self._encoder_request = model.encoder.create_infer_request()
        self._encoder_queue: ov.AsyncInferQueue | None = None
        super().__init__(model.flavour)

    @property
    def device_used(self) -> str:
        """The execution devices OpenVINO actually runs the encoder on."""
        return self.model.device_used

    @property
    def precision_used(self) -> str:
        """The inference precision OpenVINO actually runs."""
        return self.model.precision_used

    def describe(self) -> str:
        """One line naming the backend, device and precision this predictor runs on."""
        return str(self.model)

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
            self._encoder_queue = ov.AsyncInferQueue(self.model.encoder, 1)
        self._encoder_queue.start_async({ENCODER_INPUT: input_tensor})
        encode_start = time.perf_counter()

        def finish() -> None:
            self._encoder_queue.wait_all()
            request = self._encoder_queue[0]
            features = request.get_tensor(self.model.encoder.output(ENCODER_OUTPUT)).data.copy()
            self._set_features(features, (rgb.shape[0], rgb.shape[1]), input_size)
            self.timings = {"preprocess": preprocess_s, "encoder": time.perf_counter() - encode_start}

        return finish

    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        result = self._encoder_request.infer({ENCODER_INPUT: input_tensor}, share_inputs=True)
        return result[self.model.encoder.output(ENCODER_OUTPUT)].copy()

    def _decode(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._decoders.plain(embedding, coords, labels, mask_input)

    def _image_state(self, embedding: np.ndarray) -> DecoderState | None:
        return self._decoders.image_state(embedding) if self.model.decoders.has_split else None

    def _decode_cached(
        self, state: DecoderState, coords: np.ndarray, labels: np.ndarray, exact_shape: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._decoders.prompt(state, coords, labels, exact_shape)

    def _score_cached(self, state: DecoderState, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self._decoders.scores(state, coords, labels)

    def _export_state(self, state: DecoderState) -> tuple[DecoderState, int]:
        detached = state.detach()
        return detached, detached.nbytes

    def _import_state(self, exported: DecoderState) -> DecoderState:
        if not isinstance(exported, DecoderState):
            raise TypeError(f"decoder_state must come from get_image_state of an OpenVINO predictor, got {type(exported).__name__}")
        return exported

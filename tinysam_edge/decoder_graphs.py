"""The decoder IRs of a model dir, compiled: the plain decoder, its static variants, and the split decoder.

The split decoder (``decoder_image`` + ``decoder_prompt``) computes the prompt-independent part once
per image and then decodes prompts for a fraction of the plain decoder's work; its IoU-only form is
the same graph cut after the IoU head. CPU compiles each decoder for the exact prompt shapes it sees
(static shapes run faster); GPU/NPU take the static IRs, which keep the plain graph. On CPU a batch of
prompts on the split decoder runs as two half-batches at once, on a graph compiled with two streams:
these small graphs are bound by per-node overhead, and two single-thread requests beat one request on
two threads (docs/benchmarks.md).
"""

import threading
import weakref
from collections.abc import Callable

import numpy as np
import openvino as ov

from .devices import compile_model
from .errors import ModelDirError
from .manifest import DECODER_OUTPUTS, Manifest, VariantShape
from .prompts import LABEL_EMPTY, LOW_RES_SIZE

SPLIT_ROLES = ("decoder_image", "decoder_prompt")
DECODER_OUTPUTS_LOGITS, DECODER_OUTPUTS_IOU = DECODER_OUTPUTS


def prompt_shaped(decoder: ov.Model, batch: int, points: int, masks: int | None = None) -> ov.Model:
    """A copy of a decoder graph with static prompt shapes: (batch, points, 2) coords, (batch, points) labels.

    ``masks`` also fixes the plain decoder's ``mask_input`` to (masks, 1, 256, 256) (0: no mask
    prompt); leave it None for graphs without that input (the split decoder's prompt graph).
    """
    if batch < 1 or points < 1 or (masks is not None and masks < 0):
        raise ValueError(f"a decoder needs at least one prompt of one point, got batch {batch}, points {points}, masks {masks}")
    shapes = {"point_coords": [batch, points, 2], "point_labels": [batch, points]}
    if masks is not None:
        shapes["mask_input"] = [masks, 1, LOW_RES_SIZE, LOW_RES_SIZE]
    model = decoder.clone()
    model.reshape(shapes)
    return model


def _checked_static(model: ov.Model, role: str, shape: VariantShape) -> ov.Model:
    """A static decoder IR whose prompt inputs have the manifest's shape (anything else never reaches the compiler)."""
    expected = {"point_coords": [shape.batch, shape.points, 2], "point_labels": [shape.batch, shape.points]}
    for name, dims in expected.items():
        try:
            actual = model.input(name).get_partial_shape()
        except RuntimeError as exc:
            raise ModelDirError(f"the {role} IR has no {name} input; re-export the model") from exc
        if actual.is_dynamic or [d.get_length() for d in actual] != dims:
            raise ModelDirError(f"the {role} IR's {name} is {actual}, the manifest says {dims}; re-export the model")
    return model


class DecoderState:
    """One image's split-decoder tensors (the ``decoder_image`` outputs) that the prompt graphs read.

    A state made by ``DecoderSession.image_state`` lives in that session's request and is overwritten by
    its next image; ``detached`` copies outlive it and may be used by any session of the same model.
    """

    __slots__ = ("__weakref__", "detached", "tensors")

    def __init__(self, tensors: list[ov.Tensor], detached: bool = False) -> None:
        self.tensors, self.detached = tensors, detached

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        return sum(t.byte_size for t in self.tensors)

    def detach(self) -> "DecoderState":
        """A copy that no request overwrites (itself if it is one already)."""
        if self.detached:
            return self
        copies = []
        for tensor in self.tensors:
            copies.append(ov.Tensor(tensor.element_type, tensor.shape))
            tensor.copy_to(copies[-1])
        return DecoderState(copies, detached=True)


class DecoderGraphs:
    """The compiled decoders of one model dir for one device and config, shared by every session of a model.

    ``read(role)`` returns the ``ov.Model`` of a manifest role. ``split=False`` leaves the split decoder
    out. With ``bf16`` its per-image tensors stay in bf16 between the graphs (no per-prompt conversion).
    ``batch_streams > 1`` compiles the split decoder's batch graphs with that many streams (see the module).
    On CPU each graph (about 20-90 MB compiled) is compiled on first use, under a lock, by whichever
    session needs it first; ``specialize`` caps how many are compiled for one exact prompt shape
    (faster), other shapes run the dynamic graphs. With ``specialize > 0`` the graphs of a first and of
    a repeated click are compiled up front, so no click waits for a compile; ``specialize=0`` keeps
    memory low (one graph serves every prompt). Inference requests belong to ``DecoderSession``.
    """

    #: Default cap on graphs compiled for one exact (graph, batch, points, masks) shape.
    MAX_SPECIALIZED = 12

    def __init__(
        self,
        core: ov.Core,
        read: Callable[[str], ov.Model],
        manifest: Manifest,
        device: str,
        config: dict,
        static: bool,
        bf16: bool,
        split: bool = True,
        specialize: int = MAX_SPECIALIZED,
        batch_streams: int = 1,
    ) -> None:
        self._core, self.device, self._config, self.static = core, device, config, static
        #: Requests a batch of prompts on the split decoder is spread over (graphs compiled with that many streams).
        self.batch_streams = batch_streams
        self._compiled: dict[object, ov.CompiledModel] = {}
        self._image: ov.CompiledModel | None = None
        self._lock = threading.Lock()
        self._specialize, self._specialized = specialize, 0
        self._read, self._bf16 = read, bf16
        #: Whether the split (per-image state) decoder is available (never with the static IRs).
        self.has_split = not static and split and all(role in manifest.files for role in SPLIT_ROLES)
        if static:
            for role in ("decoder_static", "decoder_static_batch"):
                if role not in manifest.files:
                    raise ModelDirError(f"model dir has no {role} IR, which {device} needs; re-export the model")
                shape = manifest.static_shapes.get(role)
                if shape is None:
                    raise ModelDirError(f"the manifest gives no static shape for {role}; re-export the model")
                self._compiled[shape] = compile_model(core, _checked_static(read(role), role, shape), device, config)
            self.interactive, self.batched = (manifest.static_shapes[r] for r in ("decoder_static", "decoder_static_batch"))
            return
        if specialize > 0:  # ready before the first click (point + padding point) and the second one
            self.specialized("plain", 1, 2, 0)
            if self.has_split:
                self.image_graph()
                self.specialized("prompt", 1, 2)
        else:  # nothing compiled yet: an unreadable IR still fails here, not at the first click
            for role in ("decoder", *SPLIT_ROLES) if self.has_split else ("decoder",):
                read(role)

    def session(self) -> "DecoderSession":
        """Inference requests of one thread's own on these graphs."""
        return DecoderSession(self)

    def compiled(self, key: object) -> ov.CompiledModel:
        """The compiled graph of a key from ``specialized`` / ``dynamic`` (or a static ``VariantShape``)."""
        return self._compiled[key]

    def _graph(self, name: str) -> ov.Model:
        """The ``ov.Model`` of ``plain``, ``image``, ``prompt`` or ``scores``, read afresh for each compile:
        holding it would keep its mapped weights resident next to the compiled copy (about 20 MB)."""
        if name == "plain":
            return self._read("decoder")
        model = self._read("decoder_image" if name == "image" else "decoder_prompt")
        if self._bf16:
            model = _state_in_bf16(model, into=name != "image")
        if name == "scores":
            return ov.Model([model.output(DECODER_OUTPUTS_IOU)], model.get_parameters(), "decoder_scores")
        return model

    def _compile(self, name: str, batch: int | None = None, points: int = 0, masks: int = 0, streams: int = 1) -> ov.CompiledModel:
        model = self._graph(name)
        if batch is not None:
            model = prompt_shaped(model, batch, points, masks if name == "plain" else None)
        config = self._config | ({"NUM_STREAMS": str(streams)} if streams > 1 else {})
        return compile_model(self._core, model, self.device, config)

    def image_graph(self) -> ov.CompiledModel:
        """The split decoder's per-image graph (compiled on first use)."""
        if self._image is None:
            with self._lock:
                if self._image is None:
                    self._image = self._compile("image")
        return self._image

    def specialized(self, graph: str, batch: int, points: int, masks: int = 0, streams: int = 1) -> object:
        """Key of ``graph`` compiled for exactly this shape (up to ``specialize`` shapes), else of its dynamic form."""
        key = (graph, batch, points, masks, streams)
        if key not in self._compiled and self._specialized < self._specialize:
            with self._lock:
                if key not in self._compiled and self._specialized < self._specialize:
                    self._compiled[key] = self._compile(graph, batch, points, masks, streams)
                    self._specialized += 1
        return key if key in self._compiled else self.dynamic(graph, streams)

    def dynamic(self, graph: str, streams: int = 1) -> tuple[str, None, int]:
        """Key of ``graph`` compiled with dynamic prompt shapes (compiled on first use)."""
        key = (graph, None, streams)
        if key not in self._compiled:
            with self._lock:
                if key not in self._compiled:
                    self._compiled[key] = self._compile(graph, streams=streams)
        return key


class DecoderSession:
    """One thread's inference requests on shared ``DecoderGraphs``, and which image state each request holds."""

    def __init__(self, graphs: DecoderGraphs) -> None:
        self.graphs = graphs
        self._requests: dict[object, ov.InferRequest] = {}
        self._bound: dict[object, weakref.ref] = {}  # request key -> the DecoderState bound to its inputs
        self._image: ov.InferRequest | None = None

    def _request(self, key: object, slot: int = 0) -> ov.InferRequest:
        if (key, slot) not in self._requests:
            self._requests[(key, slot)] = self.graphs.compiled(key).create_infer_request()
        return self._requests[(key, slot)]

    def image_state(self, embedding: np.ndarray) -> DecoderState:
        """The split decoder's per-image tensors for a (1, 256, 64, 64) embedding.

        They live in this session's request and are overwritten by the next call (``DecoderState.detach`` keeps them).
        """
        if self._image is None:
            self._image = self.graphs.image_graph().create_infer_request()
        self._image.infer({0: embedding}, share_inputs=True)
        return DecoderState([self._image.get_output_tensor(i) for i in range(len(self._image.model_outputs))])

    def prompt(
        self, state: DecoderState, coords: np.ndarray, labels: np.ndarray, exact_shape: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Split-decoder outputs for (B, N, 2) coords / (B, N) labels: logits (B, 4, 256, 256), IoU (B, 4).

        ``exact_shape=False`` runs the dynamic graph: for batches whose size changes every call (the
        survivors of an IoU filter), where compiling each size (about 0.5 s) would cost more.
        """
        return self._split_batch("prompt", state, coords, labels, DECODER_OUTPUTS, exact_shape)

    def scores(self, state: DecoderState, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """IoU predictions (B, 4) only: the split decoder cut after the IoU head (no mask branch)."""
        return self._split_batch("scores", state, coords, labels, (DECODER_OUTPUTS_IOU,), True)[0]

    def _split_batch(self, graph: str, state: DecoderState, coords, labels, outputs, exact_shape: bool) -> list[np.ndarray]:
        """``graph``'s ``outputs`` for the batch, spread over ``batch_streams`` requests that run at once."""
        graphs = self.graphs
        streams = min(graphs.batch_streams, coords.shape[0])
        parts = np.array_split(np.arange(coords.shape[0]), streams)
        points = coords.shape[1]
        keys = [
            graphs.specialized(graph, len(p), points, streams=streams) if exact_shape else graphs.dynamic(graph, streams) for p in parts
        ]
        requests = [self._bind(state, key, slot) for slot, key in enumerate(keys)]
        n = len(state.tensors)
        for request, part in zip(requests, parts):
            inputs = {n: np.ascontiguousarray(coords[part], np.float32), n + 1: np.ascontiguousarray(labels[part], np.float32)}
            request.start_async(inputs, share_inputs=True)
        for request in requests:
            request.wait()
        return [np.concatenate([request.get_tensor(name).data for request in requests]) for name in outputs]

    def _bind(self, state: DecoderState, key: object, slot: int) -> ov.InferRequest:
        request = self._request(key, slot)
        bound = self._bound.get((key, slot))
        if bound is None or bound() is not state:
            for i, tensor in enumerate(state.tensors):
                request.set_input_tensor(i, tensor)
            self._bound[(key, slot)] = weakref.ref(state)
        return request

    def plain(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The plain decoder: all 4 tokens' logits (B, 4, 256, 256) and IoU (B, 4)."""
        has_mask = np.ones(1, np.float32) if mask_input is not None else np.zeros(1, np.float32)
        if not self.graphs.static:
            # An empty mask batch skips the mask branch of the graph; the flag says which prompt to use.
            mask = mask_input if mask_input is not None else np.zeros((0, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32)
            key = self.graphs.specialized("plain", coords.shape[0], coords.shape[1], mask.shape[0])
            return self._infer(key, embedding, coords, labels, mask, has_mask)
        return self._static(embedding, coords, labels, mask_input, has_mask)

    def _static(self, embedding, coords, labels, mask_input, has_mask) -> tuple[np.ndarray, np.ndarray]:
        shape = self.graphs.interactive if coords.shape[0] == 1 else self.graphs.batched
        if coords.shape[1] > shape.points:
            raise ValueError(
                f"{coords.shape[1]} prompt points (padding and box corners included) exceed the {shape.points} slots of the static decoder "
                f"used on {self.graphs.device}; re-export with more --point-slots"
            )
        mask = mask_input if mask_input is not None else np.zeros((1, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32)
        if mask.shape[0] != 1:
            raise ValueError(f"the static decoders used on {self.graphs.device} take one mask_input for all prompts, got {mask.shape[0]}")
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

    def _infer(self, key: VariantShape | tuple, embedding, coords, labels, mask, has_mask) -> tuple[np.ndarray, np.ndarray]:
        inputs = {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask,
            "has_mask_input": has_mask,
        }
        # share_inputs: the 4 MB embedding is read in place instead of being copied on every click
        request = self._request(key)
        request.infer({k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}, share_inputs=True)
        return request.get_tensor(DECODER_OUTPUTS_LOGITS).data.copy(), request.get_tensor(DECODER_OUTPUTS_IOU).data.copy()


def _state_in_bf16(model: ov.Model, into: bool) -> ov.Model:
    """The split decoder's image graph with bf16 outputs, or (``into``) its prompt graph with bf16 per-image inputs:
    the per-image tensors pass between the two graphs without a conversion per prompt."""
    steps = ov.preprocess.PrePostProcessor(model)
    if into:
        for i, parameter in enumerate(model.inputs):
            if parameter.get_any_name() not in ("point_coords", "point_labels"):
                steps.input(i).tensor().set_element_type(ov.Type.bf16)
    else:
        for i in range(len(model.outputs)):
            steps.output(i).tensor().set_element_type(ov.Type.bf16)
    return steps.build()

"""An exported model dir compiled once per process and configuration, shared by the predictors (sessions) on it."""

import os
import threading
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import openvino as ov

from .decoder_graphs import DecoderGraphs
from .devices import STATIC_DEVICES, check_count, check_device, compile_config, compile_model, describe, device_family, shared_core
from .errors import ModelDirError, error_cause
from .manifest import MANIFEST_FILE, Manifest


@dataclass(frozen=True)
class ModelOptions:
    """How a model dir is compiled; ``load_model`` compiles each distinct set once per process.

    ``device``: CPU, GPU, NPU or AUTO (``GPU.1`` etc. work too). ``precision``: inference precision
    hint (f32 / bf16 / f16); ``None`` pins f32 on CPU and GPU, so results never silently drop to
    bf16/f16. ``sessions``: predictors that run at the same time; it sets the streams, and
    ``num_threads`` (default: all cores) is shared between them. GPU, NPU and AUTO use the
    static-shape decoders (override with ``static_shapes``); on CPU repeated prompts and batches take
    the split decoder (``split_decoder=False`` turns it off, for comparisons). ``specialized_graphs``
    caps the CPU decoder graphs compiled for one exact prompt shape (each about 20-90 MB; the first-
    and repeated-click ones are compiled up front); 0 compiles one dynamic graph per decoder on first
    use (the live loop's choice). ``batch_streams``: requests a batch of prompts on the CPU split
    decoder is spread over at once (None: 2 when one session has at least two threads and
    ``specialized_graphs`` is not 0, whose one graph per decoder this would double; else 1).
    Compiled blobs are cached in ``cache_dir`` (default: the weights cache's ``ov-cache``).
    """

    device: str = "CPU"
    precision: str | None = None
    num_threads: int | None = None
    sessions: int = 1
    cache_dir: str | Path | None = None
    static_shapes: bool | None = None
    split_decoder: bool = True
    specialized_graphs: int = DecoderGraphs.MAX_SPECIALIZED
    batch_streams: int | None = None

    def __post_init__(self) -> None:
        value = self.specialized_graphs
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"specialized_graphs must be an integer >= 0, got {value!r}")
        check_count("num_threads", self.num_threads)  # here, before load_model looks for a model compiled alike
        check_count("sessions", self.sessions)
        check_count("batch_streams", self.batch_streams)

    def streams_for_batches(self) -> int:
        """``batch_streams``, or its default: two requests per batch on CPU for one session with two threads or more,
        unless ``specialized_graphs=0`` asks for the least memory."""
        if self.batch_streams is not None:
            return self.batch_streams
        threads = self.num_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        parallel = device_family(self.device) == "CPU" and self.sessions == 1 and threads >= 2 and self.specialized_graphs > 0
        return 2 if parallel else 1


class CompiledSam:
    """The encoder and decoder graphs of one model dir, compiled for one ``ModelOptions``.

    Thread-safe: hand each thread its own ``Predictor(model)``; each holds its own inference requests
    and image, and up to ``options.sessions`` of them run at once. Build it with ``load_model``.
    """

    def __init__(self, model_dir: str | Path, options: ModelOptions) -> None:
        self.options = options
        self.manifest = Manifest.read(Path(model_dir))
        self.model_dir = Path(model_dir).resolve()  # decoder graphs are read on first use, maybe from another working folder
        self.flavour = self.manifest.flavour
        core = shared_core()
        check_device(core, options.device)
        self.config = compile_config(options.device, options.precision, options.num_threads, options.cache_dir, options.sessions)
        static = options.static_shapes
        self.static_shapes = device_family(options.device) in STATIC_DEVICES if static is None else static
        self.encoder = compile_model(core, self._read(core, "encoder"), options.device, self.config)
        self.device_used, self.precision_used = describe(self.encoder)
        self.decoders = DecoderGraphs(
            core,
            lambda role: self._read(core, role),
            self.manifest,
            options.device,
            self.config,
            self.static_shapes,
            self.precision_used == "bf16",
            options.split_decoder,
            options.specialized_graphs,
            options.streams_for_batches(),
        )

    def _read(self, core: ov.Core, role: str) -> ov.Model:
        path = self.model_dir / self.manifest.files[role]
        try:
            return core.read_model(path)
        except RuntimeError as exc:
            raise ModelDirError(f"cannot read {path} (corrupt or from an incompatible OpenVINO): {error_cause(exc)}") from exc

    def describe(self) -> dict[str, object]:
        """What this model is and runs on: model dir, flavour, weights, device and precision asked for and used, streams."""
        try:
            streams = int(self.encoder.get_property("NUM_STREAMS"))
        except (RuntimeError, TypeError, ValueError):
            streams = None
        return {
            "model_dir": str(self.model_dir),
            "flavour": self.flavour,
            "weights": self.manifest.weights_precision,
            **asdict(self.options),
            "device_used": self.device_used,
            "precision_used": self.precision_used,
            "streams": streams,
        }

    def __str__(self) -> str:
        sessions = f", {self.options.sessions} sessions" if self.options.sessions > 1 else ""
        return f"OpenVINO on {self.device_used}, {self.precision_used}{sessions}"


_models: "weakref.WeakValueDictionary[tuple, CompiledSam]" = weakref.WeakValueDictionary()
_loading = threading.Lock()


def load_model(model_dir: str | Path, **options: object) -> CompiledSam:
    """The model dir compiled with ``ModelOptions(**options)``, shared with every other caller in this process.

    A model stays compiled while any predictor or caller holds it; a re-exported model dir (its
    manifest changed) is compiled afresh.
    """
    settings = ModelOptions(**options)
    path = Path(model_dir)
    try:
        stat = (path / MANIFEST_FILE).stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, settings)
    except OSError:  # Manifest.read names the problem
        return CompiledSam(path, settings)
    with _loading:
        model = _models.get(key)
        if model is None:
            model = CompiledSam(path, settings)
            _models[key] = model
        return model

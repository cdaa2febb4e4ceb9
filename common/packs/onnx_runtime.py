"""onnxruntime session settings of one process: execution providers, threads, graph optimisation, memory arena.

Providers come from ``FECAPASS_ORT_PROVIDERS``, checked against what the installed onnxruntime has, so that a
GPU deployment on an image without onnxruntime-gpu stops at start-up with a clear message instead of quietly
running on the CPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime

from common.metrics import ModelRole, forward_pass
from common.packs.base import ModelPackError
from common.settings import ModelSettings

CPU = "CPUExecutionProvider"
# Short names operators write, for onnxruntime's own.
PROVIDER_NAMES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
GRAPH_OPTIMIZATION = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Where the GPU providers come from, for the error message.
INSTALL_HINT = (
    "CUDA and TensorRT come with onnxruntime-gpu (pip install 'fecapass[gpu]', or the GPU image: DEPLOYMENT.md, "
    "GPU), OpenVINO with onnxruntime-openvino"
)


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """The providers to hand onnxruntime, in the order asked, CPU last as the fallback for operators another
    provider does not run. ModelPackError naming what is installed when one asked for is not."""
    chosen: list[str] = []
    for word in (part.strip() for part in requested.split(",")):
        if not word:
            continue
        name = PROVIDER_NAMES.get(word.lower(), word)
        if name not in PROVIDER_NAMES.values() and name not in available:
            known = ", ".join(PROVIDER_NAMES)
            raise ModelPackError(f"FECAPASS_ORT_PROVIDERS: unknown execution provider {word!r} (known: {known})")
        if name not in available:
            raise ModelPackError(
                f"FECAPASS_ORT_PROVIDERS asks for {name}, which the installed onnxruntime "
                f"{onnxruntime.__version__} does not have; it has {', '.join(available) or 'none'}. {INSTALL_HINT}"
            )
        if name not in chosen:
            chosen.append(name)
    if CPU in chosen:
        chosen.remove(CPU)
    return [*chosen, CPU]


def session_options(settings: ModelSettings, threads: int | None = None) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION[settings.ort_graph_optimization]
    options.enable_cpu_mem_arena = settings.ort_memory_arena
    # Some packs declare a fixed batch of 1 yet run any batch; onnxruntime warns on every call otherwise.
    options.log_severity_level = 3
    threads = settings.ort_threads if threads is None else threads
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class MeteredSession(onnxruntime.InferenceSession):  # type: ignore[misc]  # onnxruntime ships no types
    """A session whose forward passes count in the process's metrics as ``model``'s (common.metrics.forward_pass):
    a stage's CPU then splits into its model's and the rest, in production and in `fecapass bench` alike."""

    def __init__(self, model_file: str | bytes, model: ModelRole, **options: Any) -> None:
        super().__init__(model_file, **options)
        self.model: ModelRole = model

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None) -> Any:
        with forward_pass(self.model):
            return super().run(output_names, input_feed, run_options)


def probe_session(path: Path, settings: ModelSettings) -> onnxruntime.InferenceSession:
    """A one-thread CPU session only to read a file's inputs and outputs: finding a pack's files must not start a
    GPU, nor count in the metrics."""
    return onnxruntime.InferenceSession(str(path), sess_options=session_options(settings, threads=1), providers=[CPU])


def build_session(path: Path, settings: ModelSettings, model: ModelRole) -> MeteredSession:
    """A session for ``path`` with this process's settings, its forward passes counted as ``model``'s."""
    providers = choose_providers(settings.ort_providers, onnxruntime.get_available_providers())
    if providers != [CPU]:
        # onnxruntime-gpu with pip's CUDA and cuDNN (the gpu extra) finds those libraries only once they are
        # loaded (onnxruntime >= 1.21; older builds rely on the system's libraries).
        preload = getattr(onnxruntime, "preload_dlls", None)
        if preload is not None:
            preload()
        graph: str | bytes = str(path)
    else:
        graph = cpu_graph(path)
    return MeteredSession(graph, model, sess_options=session_options(settings), providers=providers)


def cpu_graph(path: Path) -> str | bytes:
    """The model for onnxruntime's CPU kernels: its PReLUs rewritten (common/packs/onnx_graph.py), else the file
    as it is. GPU providers get the file as it is: their PReLU is one fast kernel, and the rewrite adds two."""
    # Imported here: onnx (with ml_dtypes) costs ~1 s of start-up, and only a process building a CPU session
    # needs it, not one that only reads a pack's inputs and outputs (the API, `fecapass models list`).
    import onnx

    from common.packs.onnx_graph import prelu_as_convolutions

    rewritten, count = prelu_as_convolutions(onnx.load(str(path)))
    return rewritten.SerializeToString() if count else str(path)

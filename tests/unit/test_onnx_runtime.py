"""FECAPASS_ORT_PROVIDERS and the onnxruntime session options built from ModelSettings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from common.packs import ModelPackError
from common.packs.insightface_files import find_pack
from common.packs.library import warmed_library
from common.packs.onnx_runtime import (
    CPU,
    PROVIDER_NAMES,
    build_session,
    choose_providers,
    cpu_graph,
    session_options,
)
from common.packs.scrfd import FaceDetector
from common.settings import ModelSettings
from tests.shared_data import MODEL_ROOT, PACK, require_pack

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]


def test_cpu_is_the_default_and_needs_nothing_installed() -> None:
    assert choose_providers(ModelSettings().ort_providers, [CPU]) == [CPU]


def test_providers_keep_the_order_asked_with_cpu_last() -> None:
    assert choose_providers("tensorrt, cuda", GPU_BUILD) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose_providers("cpu,cuda", GPU_BUILD) == ["CUDAExecutionProvider", CPU]  # CPU only as the fallback
    assert choose_providers("CUDA,cuda,CUDAExecutionProvider", GPU_BUILD) == ["CUDAExecutionProvider", CPU]


def test_onnxruntime_names_are_accepted_as_they_are() -> None:
    assert choose_providers("AzureExecutionProvider", ["AzureExecutionProvider", CPU]) == [
        "AzureExecutionProvider",
        CPU,
    ]


def test_a_provider_that_is_not_installed_names_what_is() -> None:
    with pytest.raises(ModelPackError) as raised:
        choose_providers("cuda", ["AzureExecutionProvider", CPU])
    message = str(raised.value)
    assert "CUDAExecutionProvider" in message
    assert "AzureExecutionProvider, CPUExecutionProvider" in message
    assert "onnxruntime-gpu" in message


def test_an_unknown_provider_is_refused_by_name() -> None:
    with pytest.raises(ModelPackError, match="unknown execution provider 'gpu'"):
        choose_providers("gpu", GPU_BUILD)


def test_the_providers_of_this_onnxruntime_are_what_is_checked() -> None:
    missing = next(name for name in ("tensorrt", "cuda", "openvino", "coreml") if not _installed(name))
    with pytest.raises(ModelPackError, match="does not have"):
        choose_providers(missing, onnxruntime.get_available_providers())


def _installed(short: str) -> bool:
    return PROVIDER_NAMES[short] in onnxruntime.get_available_providers()


def test_session_options_follow_the_settings() -> None:
    settings = ModelSettings(ort_threads=2, ort_graph_optimization="basic", ort_memory_arena=False)
    options = session_options(settings)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_cpu_mem_arena is False
    defaults = session_options(ModelSettings())
    assert defaults.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert defaults.enable_cpu_mem_arena is True
    assert defaults.intra_op_num_threads == 0  # onnxruntime chooses


def test_settings_read_providers_and_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FECAPASS_ORT_PROVIDERS", "cuda,cpu")
    monkeypatch.setenv("FECAPASS_ORT_GRAPH_OPTIMIZATION", "extended")
    monkeypatch.setenv("FECAPASS_ORT_MEMORY_ARENA", "false")
    settings = ModelSettings()
    assert settings.ort_providers == "cuda,cpu"
    assert settings.ort_graph_optimization == "extended" and settings.ort_memory_arena is False
    monkeypatch.setenv("FECAPASS_ORT_GRAPH_OPTIMIZATION", "fastest")
    with pytest.raises(ValueError):
        ModelSettings()


def test_a_missing_provider_stops_the_session_before_the_model_loads(tmp_path: Path) -> None:
    missing = next(name for name in PROVIDER_NAMES if not _installed(name))
    with pytest.raises(ModelPackError, match="FECAPASS_ORT_PROVIDERS"):
        build_session(tmp_path / "never-read.onnx", ModelSettings(ort_providers=missing), "detector")


def test_a_stage_asking_for_a_missing_provider_fails_at_start_up() -> None:
    require_pack()
    missing = next(name for name in PROVIDER_NAMES if not _installed(name))
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_providers=missing)
    with pytest.raises(ModelPackError, match="does not have"):
        warmed_library(settings, "detect", warm_detector=True)


def test_the_detector_keeps_the_providers_its_session_was_built_with() -> None:
    """insightface's prepare(ctx_id=-1) would reset the session to the CPU provider behind the setting's back."""
    require_pack()
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT)
    files = find_pack(settings)
    session = build_session(files.detector, settings, "detector")
    calls: list[object] = []
    original = session.set_providers
    session.set_providers = lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs)  # type: ignore[method-assign]
    FaceDetector(session, files.detector)
    assert calls == []


def test_the_cpu_recognizer_runs_rewritten_and_answers_as_the_file_does() -> None:
    """The recognizer's PReLUs become convolutions on the CPU (common/packs/onnx_graph.py); its outputs stay those
    of the file, one crop or a batch. The detector has no PReLU and is loaded as it is."""
    require_pack()
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_threads=1)
    files = find_pack(settings)
    assert isinstance(cpu_graph(files.recognizer), bytes)
    assert cpu_graph(files.detector) == str(files.detector)
    ours = build_session(files.recognizer, settings, "recognizer")
    plain = onnxruntime.InferenceSession(str(files.recognizer), providers=[CPU])
    name = plain.get_inputs()[0].name
    crops = np.random.default_rng(5).uniform(-1, 1, (4, 3, files.crop_size, files.crop_size)).astype(np.float32)
    for batch in (crops[:1], crops):
        expected, got = plain.run(None, {name: batch})[0], ours.run(None, {name: batch})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() > 0.99999

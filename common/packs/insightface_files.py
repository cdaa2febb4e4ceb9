"""Find the files of an insightface-layout model pack (``<root>/models/<pack>/*.onnx``) without downloading.

insightface silently tries to download a pack that is not on disk; in production that means a request
hanging on the internet. Here a missing pack is a start-up error that says where it looked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from common.metrics import ModelRole
from common.packs.base import ModelPackError
from common.packs.onnx_runtime import MeteredSession, build_session, probe_session
from common.settings import ModelSettings


@dataclass(frozen=True)
class PackFiles:
    name: str
    directory: Path
    detector: Path
    recognizer: Path
    dim: int  # embedding dimension
    crop_size: int  # side of the square aligned crop the recognizer takes


def pack_directory(settings: ModelSettings, name: str | None = None) -> Path:
    return settings.model_root.expanduser() / "models" / (name or settings.model_pack)


def _is_detector(session: onnxruntime.InferenceSession) -> bool:
    # SCRFD/RetinaFace graphs have score/box(/keypoint) outputs per stride: 6, 9, 10 or 15 of them.
    return len(session.get_outputs()) >= 5


def _is_recognizer(session: onnxruntime.InferenceSession) -> bool:
    shape = session.get_inputs()[0].shape
    return (
        len(session.get_outputs()) == 1
        and isinstance(shape[2], int)
        and shape[2] == shape[3]
        and shape[2] >= 112
        and shape[2] % 16 == 0
    )


def _embedding_shape(session: onnxruntime.InferenceSession) -> tuple[int, int]:
    """(dimension, crop side) of a recognizer; one forward pass where the export left the output symbolic."""
    crop = int(session.get_inputs()[0].shape[2])
    dim = session.get_outputs()[0].shape[1]
    if not isinstance(dim, int):
        blank = np.zeros((1, 3, crop, crop), dtype=np.float32)
        dim = int(session.run(None, {session.get_inputs()[0].name: blank})[0].shape[1])
    return int(dim), crop


def find_pack(settings: ModelSettings, name: str | None = None) -> PackFiles:
    """Locate the pack's detector and recognizer, as FaceAnalysis would (first file per task by name)."""
    name = name or settings.model_pack
    directory = pack_directory(settings, name)
    if not directory.is_dir():
        raise ModelPackError(
            f"model pack {name!r} not found at {directory}; set FECAPASS_MODEL_ROOT to the folder "
            f"holding models/{name}/ or FECAPASS_MODEL_PACK to a pack that is there (`fecapass models list`)"
        )
    detector: Path | None = None
    recognizer: Path | None = None
    shape = (0, 0)
    for path in sorted(directory.glob("*.onnx")):
        if detector is not None and recognizer is not None:
            break
        try:
            session = probe_session(path, settings)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelPackError(f"cannot load {path}: {exc}") from exc
        if detector is None and _is_detector(session):
            detector = path
        elif recognizer is None and _is_recognizer(session):
            recognizer = path
            shape = _embedding_shape(session)
    if detector is None or recognizer is None:
        missing = "detector" if detector is None else "recognizer"
        raise ModelPackError(f"model pack {name!r} at {directory} has no {missing} .onnx file")
    return PackFiles(name, directory, detector, recognizer, dim=shape[0], crop_size=shape[1])


def is_pack_folder(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("*.onnx"))


def load_session(path: Path, settings: ModelSettings, model: ModelRole) -> MeteredSession:
    return build_session(path, settings, model)


def pull_pack(settings: ModelSettings, name: str | None = None) -> Path:
    """Download an insightface pack (buffalo_l, ...) into the model root; a clear error without internet."""
    name = name or settings.model_pack
    directory = pack_directory(settings, name)
    if is_pack_folder(directory):
        return directory
    from insightface.utils.storage import ensure_available

    try:
        ensure_available("models", name, root=str(settings.model_root.expanduser()))
    except Exception as exc:  # requests/zipfile errors: no network, unknown pack, a partial download
        raise ModelPackError(
            f"could not download model pack {name!r} into {directory}: {exc}. Without internet, copy "
            f"the pack folder there by hand"
        ) from exc
    return directory

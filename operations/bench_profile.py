"""``python -m operations.bench_profile``: where the detect, align and embed handlers spend their CPU, one
photo at a time on a real S3 server and Valkey (a search's photo and crops are transient: Valkey holds them), under
cProfile. A developer's tool beside ``fecapass bench`` (which measures throughput): its per-function figures are what
BENCHMARKS.md's "profile" paragraphs summarise."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr

from common import clients
from common.errors import JobFailed
from common.handlers import Outcome
from common.job_bytes import JobBytes
from common.objects import ObjectStore
from common.packs.library import PackLibrary
from common.settings import ModelSettings, S3Settings
from common.transient import TransientStore, photo_blob_key
from detector.stages import AlignHandler, DetectHandler
from embedder.stage import EmbedHandler
from operations.bench import photo_files
from operations.services import LocalServices
from schemas.streams import AlignedMessage, DetectedMessage, JobKind, JobMessage

MAX_PIXELS = 50_000_000


def _objects(services: LocalServices) -> JobBytes:
    settings = S3Settings(
        s3_endpoint=services.s3_endpoint,
        s3_access_key=SecretStr(services.credentials.s3_access_key),
        s3_secret_key=SecretStr(services.credentials.s3_secret_key),
        s3_bucket=services.bucket,
    )
    transient = TransientStore(redis.Redis.from_url(services.redis_url), ttl_seconds=3600)
    return JobBytes(ObjectStore(clients.minio_client(settings), services.bucket), transient)


class Profiled:
    """One cProfile per stage, and its CPU seconds, over many calls."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.cpu = 0.0

    def __call__(self, call: Callable[[], Any]) -> Any:
        started = time.process_time()
        self.profile.enable()
        try:
            return call()
        finally:
            self.profile.disable()
            self.cpu += time.process_time() - started

    def top(self, count: int) -> str:
        out = io.StringIO()
        pstats.Stats(self.profile, stream=out).sort_stats("tottime").print_stats(count)
        return out.getvalue()


def profile(photos_dir: Path, model_root: Path, pack: str, count: int, top: int) -> str:
    settings = ModelSettings(model_pack=pack, model_root=model_root, ort_threads=1)
    packs = PackLibrary(settings)
    stages = {name: Profiled() for name in ("detect", "align", "embed")}
    with tempfile.TemporaryDirectory() as tmp, LocalServices(Path(tmp), durable=False) as services:
        objects = _objects(services)
        detect, align = DetectHandler(objects, packs, MAX_PIXELS), AlignHandler(objects, packs, MAX_PIXELS)
        embed = EmbedHandler(objects, packs, settings.embed_batch)
        paths = photo_files(photos_dir, count)
        for warm_up in (True, False):  # the first pass loads the models: not part of the profile
            for path in paths[:2] if warm_up else paths:
                job_id = uuid.uuid4().hex
                photo = photo_blob_key(job_id)  # where the API puts a search's photo
                objects.transient.put(photo, path.read_bytes())
                message = JobMessage(job_id=job_id, kind=JobKind.SEARCH, image_key=photo, pack=pack)

                def run(name: str, call: Callable[..., Any], argument: Any, warm_up: bool = warm_up) -> Any:
                    return call(argument) if warm_up else stages[name](partial(call, argument))

                try:
                    detected = run("detect", detect.handle, message)
                except JobFailed:  # no face: the photo costs the detect stage only
                    continue
                assert isinstance(detected, Outcome) and isinstance(detected.forward, DetectedMessage)
                aligned = run("align", align.handle, detected.forward)
                assert isinstance(aligned.forward, AlignedMessage)
                run("embed", embed.handle_batch, [aligned.forward])
    lines = [f"{len(paths)} photos of {photos_dir}, pack {pack}, one onnxruntime thread"]
    for name, stage in stages.items():
        lines += [f"== {name}: {stage.cpu * 1000 / len(paths):.1f} ms CPU a photo", stage.top(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos-dir", type=Path, default=Path("../shared/faces/basic"))
    parser.add_argument("--model-root", type=Path, default=Path("../shared"))
    parser.add_argument("--pack", default="buffalo_sc_lite")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--top", type=int, default=15)
    arguments = parser.parse_args()
    print(profile(arguments.photos_dir, arguments.model_root, arguments.pack, arguments.photos, arguments.top))


if __name__ == "__main__":
    main()

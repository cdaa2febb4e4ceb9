"""Fault injection with real processes and servers: every accepted upload ends done or failed with a reason,
exactly once in the database, whatever breaks."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time

import psutil
import pytest
from PIL import Image

from common.objects import original_key
from operations.services import free_port
from schemas.jobs import job_key
from schemas.streams import PIPELINE, DetectedMessage, FaceBox, JobKind, JobMessage, Stage
from tests.api.test_errors import png_bomb
from tests.reliability.conftest import JOBS, PG_OUTAGE_SECONDS
from tests.reliability.harness import MAX_DELIVERIES, REDELIVERY_SECONDS, Cluster, Ledger, in_background, wait_until
from tests.shared_data import BASIC, PACK

pytestmark = pytest.mark.reliability


def handled(cluster: Cluster, name: str) -> int:
    """Entries a process finished, from its JSON log."""
    text = (cluster.log_dir / f"{name}.log").read_text()
    return text.count('"stage.handled"') + text.count('"stage.job_failed"')


def assert_nothing_lost(cluster: Cluster, ledger: Ledger) -> None:
    assert ledger.accepted, "no upload was accepted"
    assert ledger.lost == 0 and ledger.duplicates == 0 and ledger.missing == 0, ledger
    forgiven = cluster.forgive_refused_upload_orphans(ledger)  # Redis or S3 down after a put: see there
    assert forgiven <= sum(ledger.refused.values()), (forgiven, ledger.refused)
    assert ledger.orphans - forgiven == 0 and not ledger.resurrected and not ledger.rewritten, ledger.counts
    assert ledger.states["done"] == len(ledger.accepted), ledger.states
    assert not any(cluster.wait_no_pending().values())


def test_kill_9_each_stage_mid_work(cluster: Cluster, ledger: Ledger) -> None:
    redis_client = cluster.redis()
    stop_loading = threading.Event()

    def keep_loading() -> None:
        while not stop_loading.is_set() and ledger.submitted < 20 * JOBS:
            cluster.submit(ledger, 4, concurrency=2)

    load = in_background(keep_loading)
    killed = []
    for stage in PIPELINE:
        [victim] = cluster.stage_processes(stage)

        def holding_work(stage: Stage = stage) -> bool:
            return int(redis_client.xpending(stage.stream, stage.group)["pending"]) > 0

        # Uploads keep coming, so the stage is at work; look often, the index stage holds an entry ~10 ms.
        wait_until(holding_work, 120, f"{stage} to hold an entry", every=0.002)
        held = int(redis_client.xpending(stage.stream, stage.group)["pending"])
        cluster.signal(victim, signal.SIGKILL)
        cluster.processes[victim].wait(10)
        cluster.start_stage(stage)
        killed.append(f"{stage.value} holding {held}")
    stop_loading.set()
    load.join()
    ledger.notes.append(f"SIGKILL while a stage held unacknowledged entries, then a new process: {', '.join(killed)}.")
    cluster.settle(ledger)
    assert_nothing_lost(cluster, ledger)


def test_redis_restart(cluster: Cluster, ledger: Ledger) -> None:
    load = in_background(lambda: cluster.submit(ledger, JOBS, concurrency=3))
    wait_until(lambda: len(ledger.accepted) >= JOBS // 3, 60, "some uploads")
    cluster.services.stop_service("valkey")
    time.sleep(2)
    cluster.services.start_valkey()
    load.join()
    cluster.settle(ledger)
    ledger.notes.append("Valkey stopped with SIGTERM for 2 s while uploads ran; uploads meanwhile got 503.")
    assert_nothing_lost(cluster, ledger)


def test_postgres_outage(cluster: Cluster, ledger: Ledger) -> None:
    cluster.submit(ledger, JOBS)
    cluster.services.stop_service("postgres")
    started = time.monotonic()
    ready_during = cluster.ready()
    refused = Ledger("during")
    cluster.submit(refused, 3)  # enrolling needs the user row: refused while the database is down
    time.sleep(max(0.0, PG_OUTAGE_SECONDS - (time.monotonic() - started)))
    cluster.services.start_postgres()
    cluster.settle(ledger)
    retries = sum(
        (cluster.log_dir / f"{name}.log").read_text().count("stage.dependency_unavailable")
        for name in cluster.processes
    )
    ledger.notes.append(
        f"PostgreSQL stopped {PG_OUTAGE_SECONDS:.0f} s; /health/ready answered {ready_during} meanwhile; uploads "
        f"during the outage: {dict(refused.refused)}; the stages retried in place {retries} times with backoff."
    )
    assert ready_during == 503
    assert set(refused.refused) == {503} and not refused.accepted
    # The API's pool reconnects on its own backoff (it kept trying through the outage): ready again within
    # seconds, not necessarily by the time the stages have caught up.
    wait_until(lambda: cluster.ready() == 200, 30, "/health/ready to answer 200 after the outage", every=0.5)
    assert_nothing_lost(cluster, ledger)


def test_s3_outage(cluster: Cluster, ledger: Ledger) -> None:
    redis_client = cluster.redis()
    load = in_background(lambda: cluster.submit(ledger, JOBS, concurrency=3))
    wait_until(lambda: len(ledger.accepted) >= JOBS // 3, 60, "some uploads")
    cluster.services.stop_service("s3")
    load.join()
    queued = redis_client.xlen(Stage.DETECT.stream)
    during = Ledger("during")
    with cluster.client() as client:
        response = client.post(
            f"/v1/users/{cluster.users[0]}/faces", files={"file": ("a.jpg", (BASIC / "obama_1.jpg").read_bytes())}
        )
    cluster.submit(during, 2)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert redis_client.xlen(Stage.DETECT.stream) == queued  # nothing enqueued without its object
    time.sleep(2)
    cluster.services.start_s3()
    cluster.settle(ledger)
    ledger.notes.append(
        f"S3 stopped for the rest of the uploads and 2 s more; refused meanwhile: {dict(ledger.refused)}."
    )
    assert_nothing_lost(cluster, ledger)


def test_poison_messages(cluster: Cluster, ledger: Ledger) -> None:
    redis_client = cluster.redis()

    def inject(stage: Stage, job_id: str, message: JobMessage | dict[str, str]) -> None:
        redis_client.hset(job_key(job_id), mapping={"kind": "search", "state": "queued", "image_key": "x"})
        fields = message.to_fields() if isinstance(message, JobMessage) else message
        redis_client.xadd(stage.stream, fields)

    inject(Stage.DETECT, "poison-malformed", {"v": "1", "job_id": "poison-malformed", "kind": "paint"})
    inject(
        Stage.DETECT,
        "poison-missing",
        JobMessage(job_id="poison-missing", kind=JobKind.SEARCH, image_key="originals/never-uploaded"),
    )
    from common import clients
    from common.objects import ObjectStore
    from common.settings import S3Settings

    store = ObjectStore(
        clients.minio_client(
            S3Settings(
                s3_endpoint=cluster.services.s3_endpoint,
                s3_access_key=cluster.services.credentials.s3_access_key,
                s3_secret_key=cluster.services.credentials.s3_secret_key,
            )
        ),
        cluster.services.bucket,
    )
    store.put(original_key("poison-undecodable"), b"\xff\xd8\xff\xe0 truncated jpeg")
    inject(
        Stage.DETECT,
        "poison-undecodable",
        JobMessage(job_id="poison-undecodable", kind=JobKind.SEARCH, image_key=original_key("poison-undecodable")),
    )
    store.put(original_key("poison-raises"), (BASIC / "obama_1.jpg").read_bytes())
    three_points = FaceBox(box=(1, 1, 50, 50), keypoints=[(1, 1)] * 3, score=0.9)  # alignment needs five
    inject(
        Stage.ALIGN,
        "poison-raises",
        DetectedMessage(
            job_id="poison-raises",
            kind=JobKind.SEARCH,
            image_key=original_key("poison-raises"),
            faces=[three_points],
            faces_seen=1,
            pack=PACK,
            crop_size=112,
        ),
    )
    cluster.submit(ledger, JOBS // 2)  # healthy work alongside
    cluster.settle(ledger)

    def state(job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in redis_client.hgetall(job_key(job_id)).items()}

    wait_until(
        lambda: all(
            state(j).get("state") == "failed"
            for j in ("poison-malformed", "poison-missing", "poison-undecodable", "poison-raises")
        ),
        REDELIVERY_SECONDS,
        "poison jobs to fail",
    )
    assert state("poison-malformed")["error_code"] == "malformed_message"
    assert state("poison-missing")["error_code"] == "too_many_deliveries"
    assert "missing" in state("poison-missing")["error_message"]
    assert state("poison-undecodable")["error_code"] == "undecodable_image"
    assert state("poison-raises")["error_code"] == "too_many_deliveries"
    dead = {
        fields[b"job_id"].decode(): fields
        for stage in (Stage.DETECT, Stage.ALIGN)
        for _, fields in redis_client.xrange(stage.dead_letter_stream)
        if b"job_id" in fields
    }
    assert {"poison-malformed", "poison-missing", "poison-raises"} <= set(dead)
    assert "poison-undecodable" not in dead  # a bad photo fails its job; it is not an operator's problem
    assert int(dead["poison-missing"][b"dead_deliveries"]) > MAX_DELIVERIES
    assert b"ValueError" in dead["poison-raises"][b"dead_error"]
    ledger.notes.append(
        "Injected: a malformed entry (dead-lettered at once), a missing object and a handler that "
        f"raises (dead-lettered after {MAX_DELIVERIES} deliveries), an undecodable photo (job failed, not dead)."
    )
    assert all(cluster.processes[name].poll() is None for stage in Stage for name in cluster.stage_processes(stage))
    assert_nothing_lost(cluster, ledger)


def test_sigterm_drains_a_busy_stage(cluster: Cluster, ledger: Ledger) -> None:
    load = in_background(lambda: cluster.submit(ledger, JOBS))
    victim = cluster.stage_processes(Stage.EMBED)[0]
    before = handled(cluster, victim)
    wait_until(lambda: handled(cluster, victim) > before, 60, "embed to be busy")
    process = cluster.processes[victim]
    started = time.monotonic()
    cluster.signal(victim, signal.SIGTERM)
    code = process.wait(30)
    took = time.monotonic() - started
    prefix = f"{socket.gethostname()}-{process.pid}-"
    consumers = cluster.redis().xinfo_consumers(Stage.EMBED.stream, Stage.EMBED.group)
    assert code == 0 and took < 15, (code, took)
    assert not [c for c in consumers if c["name"].decode().startswith(prefix)]  # left its group, nothing pending
    assert "stage.draining" in (cluster.log_dir / f"{victim}.log").read_text()
    cluster.start_stage(Stage.EMBED)
    load.join()
    cluster.settle(ledger)
    ledger.notes.append(f"embed stopped {took:.1f} s after SIGTERM, exit code {code}, its consumer gone.")
    assert_nothing_lost(cluster, ledger)


def test_backpressure_refuses_with_429(cluster: Cluster, ledger: Ledger) -> None:
    for name in cluster.stage_processes(Stage.DETECT):
        cluster.signal(name, signal.SIGTERM)
        cluster.processes[name].wait(30)
    port = free_port()
    strict = cluster.spawn("api-strict", ["api"], {"FECAPASS_API_PORT": str(port), "FECAPASS_MAX_BACKLOG": "5"})
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base), 30, "the strict API")
    cluster.submit(ledger, 12, concurrency=1, base_url=base)
    with cluster.client(base) as client:
        refused = client.post(
            f"/v1/users/{cluster.users[0]}/faces", files={"file": ("a.jpg", (BASIC / "obama_1.jpg").read_bytes())}
        )
    strict.send_signal(signal.SIGTERM)
    cluster.start_stage(Stage.DETECT)
    cluster.settle(ledger)
    ledger.notes.append("detect stopped, FECAPASS_MAX_BACKLOG=5: uploads past the backlog got 429.")
    assert refused.status_code == 429 and refused.json()["code"] == "backlog_full" and refused.headers["retry-after"]
    assert 5 <= len(ledger.accepted) < 12 and set(ledger.refused) == {429}
    assert_nothing_lost(cluster, ledger)


def _answers(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_bad_files(cluster: Cluster, ledger: Ledger) -> None:
    photo = Image.open(BASIC / "obama_1.jpg").convert("RGB")
    original = (BASIC / "obama_1.jpg").read_bytes()
    exif = Image.Exif()
    exif[0x9286] = "x" * 60_000  # UserComment: a huge EXIF block
    sixteen = Image.fromarray(__import__("numpy").asarray(photo.convert("L")).astype("uint16") * 257)
    frames = [photo, Image.new("RGB", photo.size)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    bomb_header = png_bomb(50_000, 50_000)
    corpus: dict[str, tuple[bytes, object]] = {
        "truncated.jpg": (original[: len(original) // 2], 422),
        "empty.jpg": (b"", 415),
        "text.jpg": (b"just text renamed to .jpg\n" * 10, 415),
        "bomb.png": (bomb_header, 422),
        "cmyk.jpg": (_encoded(photo.convert("CMYK"), "JPEG"), "done"),
        "sixteen-bit.png": (_encoded(sixteen, "PNG"), "done"),
        "animated.gif": (gif.getvalue(), "done"),
        "huge-exif.jpg": (_encoded(photo, "JPEG", exif=exif.tobytes()), "done"),
        "grayscale.jpg": (_encoded(photo.convert("L"), "JPEG"), "done"),
        "one-pixel.png": (_encoded(Image.new("RGB", (1, 1)), "PNG"), "failed:no_face"),
    }
    outcomes = {}
    with cluster.client() as client:
        for name, (data, _) in corpus.items():
            ledger.submitted += 1
            response = client.post(f"/v1/users/{cluster.users[0]}/faces", files={"file": (name, data)})
            if response.status_code == 202:
                ledger.accepted.append(response.json()["job_id"])
                final = client.get(response.json()["status_url"], params={"wait": 30}).json()
                outcomes[name] = "done" if final["state"] == "done" else f"failed:{final['error']['code']}"
            else:
                ledger.refused[response.status_code] += 1
                outcomes[name] = response.status_code
                assert response.headers["content-type"] == "application/problem+json"
    cluster.settle(ledger)
    assert outcomes == {name: expected for name, (_, expected) in corpus.items()}
    for name, process in cluster.processes.items():
        if process.poll() is None:
            rss = psutil.Process(process.pid).memory_info().rss
            assert rss < 1.5 * 2**30, (name, rss)
    crashed = [n for n, p in cluster.processes.items() if p.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM)]
    assert not crashed
    ledger.notes.append("Bad files: " + json.dumps(outcomes) + "; every process alive, each under 1.5 GiB resident.")
    assert ledger.lost == 0 and ledger.duplicates == 0 and ledger.missing == 0

"""Uploads through the client against the real API (no stage runs: jobs stay queued): typed jobs, the photo
refusals as exceptions, idempotent retries after a lost answer counted in Redis, S3 and PostgreSQL, and
``wait_for_job`` giving up with JobTimeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fecapass_client import (
    AsyncFecapass,
    Fecapass,
    Job,
    JobTimeout,
    PayloadTooLarge,
    UnsupportedMedia,
)

from common.transient import photo_blob_key
from tests.api.conftest import new_email, photo
from tests.client.conftest import MAX_UPLOAD_BYTES, AsyncRecording, ClientInstallation, Recording


def test_an_enroll_is_a_typed_job_read_back_by_id(
    base_url: str, client_installation: ClientInstallation, tmp_path: Path
) -> None:
    path = tmp_path / "ada.png"
    path.write_bytes(photo(seed=1, fmt="PNG"))
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        user = api.create_user(new_email("enroll"))
        job = api.enroll(user.id, path)
        assert isinstance(job, Job)
        assert (job.kind, job.state, job.user_id, job.result, job.error) == ("enroll", "queued", user.id, None, None)
        assert not job.finished and job.status_url.endswith(f"/v1/jobs/{job.job_id}")
        assert job.raw["job_id"] == job.job_id
        assert api.get_job(job.job_id) == job
        searched = api.search(photo(seed=2), threshold=0.5, limit=3)
        assert (searched.kind, searched.state) == ("search", "queued")
        verified = api.verify(photo(seed=3), second_photo=photo(seed=4))
        detected = api.detect(photo(seed=5))
        assert (verified.kind, detected.kind) == ("verify", "detect")
    # The API stored each photo: an enroll's in S3 (a face row will point at it), the others in Redis (transient).
    assert f"originals/{job.job_id}" in client_installation.store.keys("originals/")
    transient = [photo_blob_key(searched.job_id), photo_blob_key(detected.job_id), photo_blob_key(verified.job_id)]
    transient.append(photo_blob_key(verified.job_id, 1))
    assert client_installation.redis.exists(*transient) == 4


def test_photo_refusals_are_exceptions(base_url: str, client_installation: ClientInstallation) -> None:
    before = client_installation.queued()
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        with pytest.raises(PayloadTooLarge) as too_large:
            api.search(b"\xff" * (MAX_UPLOAD_BYTES + 1))
        assert (too_large.value.status, too_large.value.code) == (413, "upload_too_large")
        with pytest.raises(UnsupportedMedia) as not_a_photo:
            api.detect(b"%PDF-1.7 not a photo", filename="paper.pdf")
        assert (not_a_photo.value.status, not_a_photo.value.code) == (415, "unsupported_media_type")
    assert client_installation.queued() == before


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_job(
    base_url: str, client_installation: ClientInstallation
) -> None:
    transport = Recording(lose_answers=1)
    queued, hashes, originals = (
        client_installation.queued(),
        client_installation.job_hashes(),
        client_installation.originals(),
    )
    with Fecapass(base_url, client_installation.keys["write"], transport=transport) as api:
        user = api.create_user(new_email("lost"))  # its answer is lost: retried with the same key
        job = api.enroll(user.id, photo(seed=21))
        again = api.enroll(user.id, photo(seed=21))  # a new call: a new key, a second job
    assert transport.statuses == [201, 201, 202, 202]
    sent_keys = [request.headers.get("Idempotency-Key") for request in transport.requests]
    assert sent_keys[0] == sent_keys[1] and sent_keys[2] != sent_keys[3]
    assert len({key for key in sent_keys if key}) == 3
    # One user in PostgreSQL for the two creations; two jobs, hashes and photos for three uploads.
    assert client_installation.users_with_email(user.email) == 1
    assert job.job_id != again.job_id
    assert client_installation.queued() - queued == 2
    assert client_installation.job_hashes() - hashes == 2
    assert client_installation.originals() - originals == 2


def test_the_same_key_given_twice_gets_the_first_job(base_url: str, client_installation: ClientInstallation) -> None:
    queued = client_installation.queued()

    async def scenario() -> list[Job]:
        transport = AsyncRecording(lose_answers=2)  # both first answers are lost as well
        async with AsyncFecapass(base_url, client_installation.keys["read"], transport=transport) as api:
            return list(
                await asyncio.gather(*(api.search(photo(seed=31), idempotency_key="same-photo-1") for _ in range(3)))
            )

    jobs = asyncio.run(scenario())
    assert len({job.job_id for job in jobs}) == 1
    assert client_installation.queued() - queued == 1


def test_wait_for_job_gives_up_with_job_timeout(base_url: str, client_installation: ClientInstallation) -> None:
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["read"], transport=transport) as api:
        job = api.detect(photo(seed=41))
        transport.requests.clear()
        with pytest.raises(JobTimeout) as timed_out:
            api.wait_for_job(job.job_id, timeout=1.0)
    assert timed_out.value.job_id == job.job_id and timed_out.value.state == "queued"
    assert timed_out.value.code == "job_timeout"
    polls = transport.requests
    # Long polls that ask for what is left of the timeout; the server (wait capped at 0 here) answers at once,
    # so the client pauses between polls instead of asking in a tight loop.
    assert 1 <= len(polls) <= 4, [str(request.url) for request in polls]
    assert all(0 < float(request.url.params["wait"]) <= 1.0 for request in polls[:1])


def test_me_and_health(base_url: str, client_installation: ClientInstallation) -> None:
    with Fecapass(base_url, client_installation.keys["admin"]) as api:
        assert api.me().scope == "admin"
        health = api.health()
    assert health.checks.keys() >= {"main_db", "vector_db", "s3", "redis"}
    assert health.ok == all(value == "ok" for value in health.checks.values())

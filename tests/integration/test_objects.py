"""The object store on a real S3 server: deletes in one request, missing keys are fine."""

from __future__ import annotations

import uuid

from common.objects import ObjectStore, crop_key, discard_job_objects, original_key


def test_discarding_a_job_removes_its_photo_and_crops_and_nothing_else(object_store: ObjectStore) -> None:
    store = object_store
    kept, listed, known = (uuid.uuid4().hex for _ in range(3))
    for job in (kept, listed, known):
        store.put(original_key(job), b"photo")
        for index in range(3):
            store.put(crop_key(job, index), b"crop")
    discard_job_objects(store, listed)  # crops found by listing their prefix
    discard_job_objects(store, known, [crop_key(known, i) for i in range(3)])  # one delete request
    remaining = set(store.keys("originals/")) | set(store.keys("crops/"))
    for job in (listed, known):
        assert not any(job in key for key in remaining)
    assert {original_key(kept), *(crop_key(kept, i) for i in range(3))} <= remaining
    store.delete_many([original_key(listed), f"crops/{uuid.uuid4().hex}/0.png"])  # already gone: fine

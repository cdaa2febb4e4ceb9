"""Corrections through the whole product (the API, two workers per stage, real models, the index processes' binary
codes): a merge and a move are what the very next search answers, with no re-embedding. Skipped without ../shared."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import RunningPipeline, create_user, search, upload


def enroll(client: httpx.Client, user_id: int, photo: str) -> int:
    response = upload(client, f"/v1/users/{user_id}/faces", photo, {"wait": 60})
    assert response.status_code == 200 and response.json()["state"] == "done", response.text
    return int(response.json()["result"]["face_id"])


def matches(client: httpx.Client, photo: str, collection: str) -> dict[int, int]:
    """User id -> the face id it matched with, for every face of the photo, among the people of the collection."""
    found = search(client, photo, collection=collection)["result"]["faces"]
    return {match["user_id"]: match["face_id"] for face in found for match in face["matches"]}


def test_a_merge_and_a_move_are_what_the_very_next_search_answers(
    pipeline: RunningPipeline, own_collection: str
) -> None:
    # A collection of its own: these photos are ones test_pipeline.py searches for its own people.
    with pipeline.client() as client:
        # One person enrolled twice, as two people.
        first, duplicate = (
            create_user(client, "kit-first", own_collection),
            create_user(client, "kit-duplicate", own_collection),
        )
        enroll(client, first, "kit_harington_1.jpeg")
        duplicate_face = enroll(client, duplicate, "kit_harington_2.jpeg")
        assert {first, duplicate} <= set(matches(client, "kit_harington_3.jpg", own_collection))

        merged = client.post(f"/v1/users/{first}/merge", json={"from_user_id": duplicate})
        assert merged.status_code == 200 and merged.json()["id"] == first, merged.text

        found = matches(client, "kit_harington_3.jpg", own_collection)
        assert first in found and duplicate not in found
        assert client.get(f"/v1/faces/{duplicate_face}").json()["user_id"] == first  # the same face, moved

        # A photo of someone else enrolled for the wrong person, then given to the right one.
        wrong, right = create_user(client, "not-rose", own_collection), create_user(client, "rose", own_collection)
        enroll(client, wrong, "kit_harington_1.jpeg")
        rose_face = enroll(client, wrong, "rose_leslie_1.jpg")
        assert matches(client, "rose_leslie_2.jpg", own_collection).get(wrong) == rose_face

        moved = client.post(f"/v1/faces/{rose_face}/move", json={"user_id": right})
        assert moved.status_code == 200 and moved.json()["user_id"] == right, moved.text

        found = matches(client, "rose_leslie_2.jpg", own_collection)
        assert found.get(right) == rose_face and wrong not in found
        assert wrong in matches(client, "kit_harington_3.jpg", own_collection)  # their own face stays theirs

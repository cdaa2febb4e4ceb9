"""Clustering real embeddings at the documented parameters (common/clustering.py, CALIBRATION.md): the LFW photos
of three people, kept as unknown faces in the order a camera might see them (interleaved), group into one cluster
per person and no cluster holds two people. Embedded with each pack found in ../shared; skipped without them."""

from __future__ import annotations

import csv
import uuid
from collections import Counter

import numpy as np
import pytest

from common.clustering import parameters_for
from common.db.main_repository import MainRepository
from common.db.unknown_faces import UnknownFaces, UnseenFace
from common.db.vector_repository import VectorRepository
from common.objects import ObjectStore, crop_key
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from operations.calibrate import embed_crop
from tests.shared_data import LFW, MODEL_ROOT, require_pack

# The three people with the most photos in ../shared/faces/lfw_gray (14, 14 and 12).
PEOPLE = ("Tony_Blair", "Silvio_Berlusconi", "David_Beckham")
# A person's photos span years, poses and lighting: the calibration clusters 97 % (buffalo_sc_lite) and 89 %
# (mbf128_lite) of the photos of people with 3 or more; the rest wait, unclustered, never in another's cluster.
MIN_SHARE_CLUSTERED = 0.75


@pytest.fixture(scope="module")
def unknown(repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore) -> UnknownFaces:
    return UnknownFaces(*repositories, object_store)


def photos() -> list[tuple[str, str]]:
    """(file, person) of PEOPLE, interleaved: one photo of each in turn."""
    if not (LFW / "identities.csv").is_file():
        pytest.skip(f"LFW photos not found at {LFW} (../shared is not beside this checkout)")
    with (LFW / "identities.csv").open() as handle:
        rows = [(row["file"], row["identity"]) for row in csv.DictReader(handle) if row["identity"] in PEOPLE]
    by_person = {person: sorted(file for file, who in rows if who == person) for person in PEOPLE}
    interleaved = []
    for index in range(max(len(files) for files in by_person.values())):
        interleaved += [(files[index], person) for person, files in by_person.items() if index < len(files)]
    return interleaved


@pytest.mark.parametrize("pack_name", ["buffalo_sc_lite", "mbf128_lite"])
def test_lfw_photos_of_a_person_cluster_together_and_people_stay_apart(
    pack_name: str, unknown: UnknownFaces, object_store: ObjectStore
) -> None:
    require_pack(pack_name)
    pack = PackLibrary(ModelSettings(model_pack=pack_name, model_root=MODEL_ROOT, ort_threads=1)).get()
    collection = unknown.main.create_collection(f"lfw-{uuid.uuid4().hex[:10]}")
    people: dict[int, str] = {}  # unknown face id -> person
    for file, person in photos():
        embedding = embed_crop(pack, LFW / "images" / file)
        if embedding is None:
            continue
        job_id = uuid.uuid4().hex
        object_store.put(crop_key(job_id, 0), b"crop")
        face = UnseenFace(0, crop_key(job_id, 0), [0, 0, 1, 1], 0.9, np.asarray(embedding, dtype=np.float32), 112)
        (row,) = unknown.keep(collection.id, job_id, pack_name, [face], retention_hours=24)
        people[row.id] = person
    unknown.settle(collection_id=collection.id)
    clusters: dict[int, list[str]] = {}
    for row in unknown.main.collection_unknown_faces(collection.id):
        if row.cluster_id is not None:
            clusters.setdefault(row.cluster_id, []).append(people[row.id])
    parameters = parameters_for(pack_name)
    described = f"{pack_name} at max_distance {parameters.max_distance}, min_faces {parameters.min_faces}: {clusters}"
    assert all(len(set(members)) == 1 for members in clusters.values()), described
    per_person = Counter(members[0] for members in clusters.values())
    assert per_person == Counter(PEOPLE), described  # one cluster each
    photos_of = Counter(people.values())
    for members in clusters.values():
        assert len(members) >= MIN_SHARE_CLUSTERED * photos_of[members[0]], described

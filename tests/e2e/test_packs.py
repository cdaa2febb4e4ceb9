"""The same end-to-end identity test for every model pack: enroll one photo per person over HTTP, then each
other photo of them must find them first, and strangers must find nobody."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from common.packs.catalog import DLIB, gallery_threshold
from operations.services import LocalServices
from tests.e2e.conftest import (
    RunningPipeline,
    create_user,
    fresh_installation,
    search,
    start_cluster,
    stop_cluster,
    upload,
)
from tests.shared_data import MODEL_ROOT, iou, labels, require_basic, require_pack

pytestmark = pytest.mark.e2e

# Each runs in an installation of its own (databases, Redis database, bucket); buffalo_l is skipped where it
# has not been pulled into ../shared/models (it needs internet once).
PACKS = {DLIB: 2, "buffalo_sc_lite": 3, "mbf128_lite": 4, "buffalo_l": 5}  # pack -> Redis database


@pytest.fixture(scope="module", params=list(PACKS))
def pack_cluster(
    request: pytest.FixtureRequest, services: LocalServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPipeline]:
    pack: str = request.param
    require_basic()
    if pack == "buffalo_l" and not (MODEL_ROOT / "models" / pack).is_dir():
        pytest.skip(f"buffalo_l is downloaded once with internet: `fecapass models pull buffalo_l` into {MODEL_ROOT}")
    if pack != DLIB:  # dlib comes with the Python install
        require_pack(pack)
    env = fresh_installation(services, f"pack_{pack}", PACKS[pack])
    running = start_cluster(env, tmp_path_factory.mktemp(f"{pack}-logs"), pack=pack, workers_per_stage=1)
    running.env["PACK"] = pack
    yield running
    stop_cluster(running)


def test_every_photo_of_an_enrolled_person_finds_them_and_strangers_find_nobody(
    pack_cluster: RunningPipeline,
) -> None:
    pack = pack_cluster.env["PACK"]
    photos: dict[str, list[str]] = defaultdict(list)
    for row in labels():
        if row.role in ("single", "variant"):
            photos[row.identity].append(row.file)
    users: dict[str, int] = {}
    with pack_cluster.client() as client:
        ready = client.get("/health/ready").json()
        assert ready["model_pack"]["name"] == pack and ready["model_pack"]["dim"] in (128, 512)
        for identity, files in sorted(photos.items()):
            first = sorted(name for name in files if not name.startswith("variant"))[0]
            users[identity] = create_user(client, identity)
            enrolled = upload(client, f"/v1/users/{users[identity]}/faces", first, {"wait": 90})
            assert enrolled.status_code == 200, enrolled.text
            assert enrolled.json()["result"]["model_pack"] == pack
            photos[identity].remove(first)
        for identity, files in photos.items():
            for name in files:
                job = search(client, name, wait=90)
                assert job["model_pack"] == job["result"]["model_pack"] == pack
                # The default threshold knows the gallery: at most 0.1 expected false matches per search of it.
                result = job["result"]
                size = result["gallery_size"]  # recounted every few seconds: the last enrolls may not be in it yet
                assert result["threshold_source"] == "gallery" and 1 <= size <= len(users)
                assert result["threshold"] == pytest.approx(gallery_threshold(pack, size, 0.1), abs=1e-3)
                best = max(job["result"]["faces"], key=lambda face: face["box"][2] - face["box"][0])
                assert best["matches"], f"{pack}: {name} matched nobody"
                assert best["matches"][0]["user_id"] == users[identity], (pack, name, best["matches"])
        faces = search(client, "multi_two_people.jpg", wait=90)["result"]["faces"]
        for row in labels():
            if row.file == "multi_two_people.jpg" and row.box is not None:
                face = max(faces, key=lambda f: iou(f["box"], row.box or (0, 0, 0, 0)))
                assert iou(face["box"], row.box) > 0.3, (pack, row.identity, faces)
                assert face["matches"][0]["user_id"] == users[row.identity], (pack, row.identity, face)
        strangers = search(client, "multi_group_t1.jpg", wait=90)["result"]["faces"]
        assert len(strangers) >= 4, pack  # six people, none of them enrolled
        assert all(face["matches"] == [] for face in strangers), (pack, strangers)

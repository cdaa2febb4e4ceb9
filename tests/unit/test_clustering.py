"""The clustering rules (common/clustering.py) on synthetic vectors: no model, no server."""

from __future__ import annotations

import numpy as np

from common.clustering import (
    CLUSTER_PARAMETERS,
    ClusterParameters,
    Found,
    Join,
    Nearby,
    Wait,
    cluster_matrix,
    parameters_for,
    place,
)

PARAMETERS = ClusterParameters(max_distance=0.3, min_faces=3)


def test_a_face_near_a_cluster_joins_the_nearest_clustered_one() -> None:
    nearby = [Nearby(1, 0.10, None), Nearby(2, 0.25, 7), Nearby(3, 0.20, 9), Nearby(4, 0.35, 5)]
    assert place(nearby, PARAMETERS) == Join(9)  # 4 is nearer than nothing but beyond max_distance


def test_a_face_with_enough_unclustered_neighbours_founds_a_cluster_counting_itself() -> None:
    assert place([Nearby(5, 0.1, None), Nearby(2, 0.29, None)], PARAMETERS) == Found((2, 5))
    # One neighbour: two faces, fewer than min_faces.
    assert place([Nearby(5, 0.1, None)], PARAMETERS) == Wait()
    # A neighbour beyond max_distance does not count.
    assert place([Nearby(5, 0.1, None), Nearby(2, 0.31, None)], PARAMETERS) == Wait()
    assert place([], PARAMETERS) == Wait()


def _people(rng: np.random.Generator, centres: int, each: int, spread: float) -> tuple[np.ndarray, list[int]]:
    """Unit vectors around ``centres`` random directions (nearly orthogonal in 64 dimensions)."""
    directions = rng.normal(size=(centres, 64))
    rows, who = [], []
    for person, direction in enumerate(directions):
        for _ in range(each):
            vector = direction / np.linalg.norm(direction) + spread * rng.normal(size=64) / 8
            rows.append(vector / np.linalg.norm(vector))
            who.append(person)
    order = rng.permutation(len(rows))  # arrival order mixes the people
    return np.array(rows, dtype=np.float32)[order], [who[i] for i in order]


def test_clustering_groups_each_person_and_keeps_people_apart() -> None:
    embeddings, who = _people(np.random.default_rng(7), centres=4, each=6, spread=0.5)
    labels = cluster_matrix(embeddings, PARAMETERS)
    assert None not in labels
    for person in range(4):
        assert len({label for label, p in zip(labels, who, strict=True) if p == person}) == 1
    assert len(set(labels)) == 4


def test_lone_faces_wait_and_a_pair_is_not_a_cluster() -> None:
    embeddings, _ = _people(np.random.default_rng(3), centres=3, each=1, spread=0.5)
    pair, _ = _people(np.random.default_rng(4), centres=1, each=2, spread=0.5)
    labels = cluster_matrix(np.vstack([embeddings, pair]), PARAMETERS)
    assert labels == [None] * 5


def test_settle_places_a_face_that_waited_beside_a_later_cluster() -> None:
    # d arrives first, near only a; a, b, c arrive later and c founds the cluster {a, b, c} without d (d is not
    # c's neighbour): only the settle pass (placing d again) makes d join it.
    a = np.array([1.0, 0.0, 0.0])
    d = np.array([np.cos(0.7), np.sin(0.7), 0.0])  # distance to a: 1 - cos 0.7 = 0.24
    b = np.array([np.cos(0.3), -np.sin(0.3), 0.0])
    c = np.array([np.cos(0.6), -np.sin(0.6), 0.0])  # to d: 1 - cos 1.3 = 0.73
    labels = cluster_matrix(np.vstack([d, a, b, c]), PARAMETERS)
    assert labels[0] is not None and labels == [labels[0]] * 4


def test_every_calibrated_pack_has_parameters_and_others_borrow_buffalo() -> None:
    for pack, parameters in CLUSTER_PARAMETERS.items():
        assert 0 < parameters.max_distance < 1 and parameters.min_faces >= 2, pack
    assert parameters_for("buffalo_l") == CLUSTER_PARAMETERS["buffalo_sc_lite"]

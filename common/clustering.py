"""Incremental clustering of unknown faces (faces of searches that matched nobody), after Immich's incremental
DBSCAN. No I/O: the caller reads the faces near the one being placed and applies the placement.

A face being placed, with the unknown faces of its collection and pack within ``max_distance`` (cosine distance,
1 - similarity):
- joins the cluster of the nearest of them that is in a cluster;
- else, if it and the unclustered ones number at least ``min_faces`` (the face counts itself, as Immich's
  ``minFaces`` does), they all form a new cluster (the face is a DBSCAN core point);
- else it waits: a later face may make it part of a group, and the settle pass places it again (a face that waited
  beside a face which has since been clustered joins that cluster then: DBSCAN's border points).
Clusters are never merged automatically: two clusters of one person are named as the same person instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.packs.catalog import DLIB


@dataclass(frozen=True)
class ClusterParameters:
    max_distance: float  # cosine distance (1 - similarity) within which two faces are neighbours
    min_faces: int  # faces (the new one included) that make a new cluster

    @property
    def min_similarity(self) -> float:
        return 1.0 - self.max_distance


# Per pack, measured by `fecapass calibrate --clusters` on ../shared/faces/lfw_gray (CALIBRATION.md, "Clustering of
# unknown faces"): the largest max_distance (to 0.01) at which none of the ~1.1 million pairs of photos of two
# different people are neighbours and clustering every LFW photo puts no two people in one cluster. Clusters grow by
# single links, so one stranger pair within reach can join two people: the margin is in max_distance, not min_faces.
CLUSTER_PARAMETERS: dict[str, ClusterParameters] = {
    "buffalo_sc_lite": ClusterParameters(max_distance=0.58, min_faces=3),
    "mbf128_lite": ClusterParameters(max_distance=0.44, min_faces=3),
    DLIB: ClusterParameters(max_distance=0.037, min_faces=3),
}
# Packs not calibrated here: the insightface recognizers share buffalo_sc_lite's training and scale.
UNCALIBRATED_PARAMETERS = CLUSTER_PARAMETERS["buffalo_sc_lite"]


def parameters_for(pack: str) -> ClusterParameters:
    return CLUSTER_PARAMETERS.get(pack, UNCALIBRATED_PARAMETERS)


@dataclass(frozen=True)
class Nearby:
    """An unknown face near the one being placed."""

    face_id: int
    distance: float
    cluster_id: int | None


@dataclass(frozen=True)
class Join:
    cluster_id: int


@dataclass(frozen=True)
class Found:
    """A new cluster of the face being placed and these unclustered neighbours."""

    face_ids: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    pass


Placement = Join | Found | Wait


def place(nearby: Sequence[Nearby], parameters: ClusterParameters) -> Placement:
    """Where the face goes, given the unknown faces near it (any order; those beyond max_distance are ignored)."""
    close = [n for n in nearby if n.distance <= parameters.max_distance]
    clustered = [n for n in close if n.cluster_id is not None]
    if clustered:
        nearest = min(clustered, key=lambda n: (n.distance, n.face_id))
        assert nearest.cluster_id is not None
        return Join(nearest.cluster_id)
    if len(close) + 1 >= parameters.min_faces:
        return Found(tuple(sorted(n.face_id for n in close)))
    return Wait()


def cluster_matrix(embeddings: np.ndarray, parameters: ClusterParameters) -> list[int | None]:
    """Every row placed in order, then one settle pass over those waiting; a cluster label per row (None: still
    waiting). The same rules as the index stage and the settle pass, over vectors in memory (calibration, tests)."""
    count = len(embeddings)
    labels: list[int | None] = [None] * count
    if count == 0:
        return labels
    distances = 1.0 - embeddings @ embeddings.T
    next_label = 0

    def place_row(row: int, placed: int) -> None:
        nonlocal next_label
        close = np.flatnonzero(distances[row, :placed] <= parameters.max_distance)
        nearby = [Nearby(int(other), float(distances[row, other]), labels[other]) for other in close if other != row]
        placement = place(nearby, parameters)
        if isinstance(placement, Join):
            labels[row] = placement.cluster_id
        elif isinstance(placement, Found):
            for member in (row, *placement.face_ids):
                labels[member] = next_label
            next_label += 1

    for row in range(count):
        place_row(row, row)
    for row in range(count):
        if labels[row] is None:
            place_row(row, count)
    return labels

"""``fecapass calibrate --clusters``: choose a pack's unknown-face clustering parameters (common/clustering.py) on
LFW-style photos: max_distance so that two different people almost never become neighbours, then check it by
clustering every photo the way the index stage does. Writes the pack's clustering section of CALIBRATION.md."""

from __future__ import annotations

import csv
import itertools
import math
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.clustering import ClusterParameters, cluster_matrix
from common.packs.catalog import FmrCurve, fmr_curve
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from operations.calibrate import embed_crop
from operations.reports import merged

MIN_FACES = 3


@dataclass(frozen=True)
class ClusterRun:
    max_distance: float
    stranger_rate: float  # different-person pairs within max_distance / all different-person pairs
    same_rate: float  # same-person pairs within max_distance / all same-person pairs
    clusters: int
    mixed_clusters: int  # clusters holding photos of more than one person
    clustered_share: float  # of the photos of people with at least MIN_FACES photos, those in a cluster
    whole_people: int  # people with at least MIN_FACES photos whose clustered photos are all in one cluster
    people: int  # people with at least MIN_FACES photos


@dataclass(frozen=True)
class ClusterCalibration:
    pack: str
    photos: int
    chosen: ClusterRun
    runs: list[ClusterRun]
    seconds: float
    step: float  # the grid max_distance was chosen on
    cached: bool  # the embeddings were read from an earlier run's cache

    @property
    def digits(self) -> int:
        return round(-math.log10(self.step))


def embed_folder(settings: ModelSettings, folder: Path, cache: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Embeddings of every photo of identities.csv where a face is found, and who each is; with ``cache`` (an
    .npz file), read from there when it exists, else written there (embedding is most of a run's time)."""
    if cache is not None and cache.exists():
        stored = np.load(cache)
        return stored["embeddings"], [str(person) for person in stored["people"]]
    pack = PackLibrary(settings).get()
    with (folder / "identities.csv").open() as handle:
        rows = [(row["file"], row["identity"]) for row in csv.DictReader(handle)]
    vectors, people = [], []
    for name, identity in sorted(rows):
        vector = embed_crop(pack, folder / "images" / name)
        if vector is not None:
            vectors.append(vector)
            people.append(identity)
    embeddings = np.vstack(vectors).astype(np.float32)
    if cache is not None:
        np.savez(cache, embeddings=embeddings, people=np.array(people))
    return embeddings, people


def run_at(embeddings: np.ndarray, people: list[str], max_distance: float) -> ClusterRun:
    names = np.array(people)
    same_person = names[:, None] == names[None, :]
    upper = np.triu(np.ones(same_person.shape, dtype=bool), k=1)
    distances = 1.0 - embeddings @ embeddings.T
    near = distances <= max_distance
    stranger_rate = float(near[upper & ~same_person].mean())
    same_pairs = upper & same_person
    same_rate = float(near[same_pairs].mean()) if same_pairs.any() else 0.0
    labels = cluster_matrix(embeddings, ClusterParameters(max_distance, MIN_FACES))
    members: dict[int, set[str]] = {}
    for label, person in zip(labels, people, strict=True):
        if label is not None:
            members.setdefault(label, set()).add(person)
    counts = Counter(people)
    frequent = {person for person, count in counts.items() if count >= MIN_FACES}
    in_cluster = [label for label, person in zip(labels, people, strict=True) if person in frequent]
    whole = 0
    for person in frequent:
        theirs = {label for label, who in zip(labels, people, strict=True) if who == person and label is not None}
        whole += len(theirs) == 1
    return ClusterRun(
        max_distance=max_distance,
        stranger_rate=stranger_rate,
        same_rate=same_rate,
        clusters=len(members),
        mixed_clusters=sum(1 for who in members.values() if len(who) > 1),
        clustered_share=sum(label is not None for label in in_cluster) / max(1, len(in_cluster)),
        whole_people=whole,
        people=len(frequent),
    )


def step_for(nearest_stranger: float) -> float:
    """The grid max_distance is chosen on: a tenth of the nearest stranger distance's order of magnitude (0.01 on
    ArcFace's scale, where strangers are ~0.6 apart; 0.001 on dlib's, ten times narrower)."""
    return float(10.0 ** (math.floor(math.log10(max(nearest_stranger, 1e-6))) - 1))


def choose(embeddings: np.ndarray, people: list[str]) -> tuple[ClusterRun, list[ClusterRun], float]:
    """The largest max_distance (on the step_for grid) below the nearest pair of photos of two different people (a
    single stranger pair within max_distance can join two people's clusters: clusters grow by single links) at
    which clustering makes no mixed cluster; the runs around it for the report; the grid's step."""
    names = np.array(people)
    upper = np.triu(np.ones((len(names), len(names)), dtype=bool), k=1)
    strangers = (1.0 - embeddings @ embeddings.T)[upper & (names[:, None] != names[None, :])]
    nearest = float(strangers.min())
    step = step_for(nearest)
    digits = round(-math.log10(step))
    candidate = round(math.floor((nearest - 1e-9) / step) * step, digits)
    runs: dict[float, ClusterRun] = {}
    while candidate > 0:
        run = runs[candidate] = run_at(embeddings, people, candidate)
        if run.mixed_clusters == 0 and run.stranger_rate == 0:
            break
        candidate = round(candidate - step, digits)
    chosen = runs[candidate]
    for offset in (-5, -2, 2, 5, 10):
        other = round(candidate + offset * step, digits)
        if 0 < other < 2 and other not in runs:
            runs[other] = run_at(embeddings, people, other)
    return chosen, [runs[key] for key in sorted(runs)], step


def calibrate_clusters(settings: ModelSettings, folder: Path, cache: Path | None = None) -> ClusterCalibration:
    started = time.perf_counter()
    cached = cache is not None and cache.exists()
    embeddings, people = embed_folder(settings, folder, cache)
    chosen, runs, step = choose(embeddings, people)
    seconds = time.perf_counter() - started
    return ClusterCalibration(settings.model_pack, len(people), chosen, runs, seconds, step, cached)


def rate_at(curve: FmrCurve, similarity: float) -> float | None:
    """The per-pair false-match rate the pack's curve gives at ``similarity`` (log-linear between its points);
    None outside the curve."""
    for (high_rate, low_t), (low_rate, high_t) in itertools.pairwise(curve):
        if low_t <= similarity <= high_t:
            part = (similarity - low_t) / (high_t - low_t) if high_t > low_t else 1.0
            return math.exp(math.log(high_rate) + part * (math.log(low_rate) - math.log(high_rate)))
    return None


def report(result: ClusterCalibration, folder: Path) -> str:
    chosen, digits = result.chosen, result.digits
    lines = [
        f"## Clustering of unknown faces: `{result.pack}`",
        "",
        f"Data: every photo of `{folder}/identities.csv` with a face found ({result.photos} photos), embedded as",
        f"for the threshold above. Written by `fecapass calibrate --clusters` on {platform.node() or 'this machine'}"
        f" ({platform.machine()}), {result.seconds:.0f} s"
        + (" (the embeddings read from an earlier run's --embeddings-cache)." if result.cached else "."),
        "Each row clusters all the photos, in file order, with the index stage's rules (common/clustering.py) at",
        f"min_faces {MIN_FACES}, then one settle pass. Stranger pairs: pairs of photos of two different people within",
        "max_distance; people: those with at least min_faces photos.",
        "",
        "| max_distance (similarity) | stranger pairs | same-person pairs | clusters | mixed clusters"
        " | photos of people clustered | people in one cluster |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result.runs:
        mark = "**" if run is chosen else ""
        lines.append(
            f"| {mark}{run.max_distance:.{digits}f}{mark} ({1 - run.max_distance:.{digits}f}) | {run.stranger_rate:.2e}"
            f" | {run.same_rate * 100:.1f} % | {run.clusters} | {run.mixed_clusters}"
            f" | {run.clustered_share * 100:.1f} % | {run.whole_people} of {run.people} |"
        )
    lines += [
        "",
        f"Chosen for `{result.pack}`: **max_distance {chosen.max_distance:.{digits}f}, min_faces {MIN_FACES}**: the",
        f"largest max_distance (to {result.step:g}) at which no pair of photos of two different people is within it"
        " and no cluster holds two people (clusters grow by single links: one stranger pair within max_distance",
        "can join two people's clusters, as the rows above show).",
    ]
    curve = fmr_curve(result.pack)
    rate = rate_at(curve, 1 - chosen.max_distance) if curve else None
    if rate is not None:
        lines += [
            "",
            "On the pack's false-match curve (above) a pair of photos of two different people is that similar at a"
            f" rate of about {rate:.0e}: a collection holding N unknown faces holds about N^2/2 x {rate:.0e} such"
            f" pairs ({1000**2 / 2 * rate:.1f} at 1,000 faces, {10_000**2 / 2 * rate:.0f} at 10,000), each of which"
            " can join two people's clusters. Keep the retention short for busy collections.",
        ]
    return "\n".join(lines)


def main(settings: ModelSettings, folder: Path, output: Path, cache: Path | None = None) -> None:
    result = calibrate_clusters(settings, folder, cache)
    existing = output.read_text() if output.exists() else ""
    from operations.calibrate import HEADER

    output.write_text(merged(existing, HEADER, f"clusters-{result.pack}", report(result, folder)))
    print(
        f"wrote {output}: {result.pack} max_distance {result.chosen.max_distance:.{result.digits}f},"
        f" min_faces {MIN_FACES},"
        f" {result.chosen.mixed_clusters} mixed clusters"
    )

"""``fecapass calibrate``: measure a pack's same/different-person cosine similarities on LFW-style pairs, choose
the verify threshold, and measure the false-match rate per comparison down to the rates a million-face gallery
needs (the curve search thresholds are chosen from, by gallery size). Writes CALIBRATION.md and the pack's curve
in common/packs/fmr_curves.json. Needs a folder with ``pairs.tsv`` and ``images/``."""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.imaging import decode
from common.packs import Face, ModelPack
from common.packs.catalog import CURVES_FILE, FMR_POINTS, FmrCurve
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from operations.reports import merged

# Tight LFW crops must be padded or SCRFD finds no face in them.
PAD_FRACTION = 0.5
# The impostor tail is modelled from the highest scores: this fraction of all different-person pairs (~1,100 of
# LFW's 1.1M), high enough to be the tail, and enough exceedances for a stable fit.
TAIL_FRACTION = 1e-3
# A rate read from the data needs at least this many accepted pairs behind it; rarer rates come from the fit.
MIN_EXCEEDANCES = 100


@dataclass(frozen=True)
class ImpostorTail:
    """Generalised Pareto fit to the scores of different-person pairs above ``start`` (peaks over threshold):
    P(score >= t) = rate * (1 + shape (t - start) / scale) ** (-1 / shape). The shape is fitted by moments and
    then clamped at 0 (the exponential tail): cosine scores are bounded, so fits often find a negative shape that
    would predict the tail ends, and promise fewer false matches than can be shown. The clamp can only raise the
    predicted rate, hence the threshold: extrapolation errs towards missing a person, never towards a stranger."""

    start: float
    rate: float  # fraction of all different-person pairs above ``start``
    scale: float
    fitted_shape: float
    exceedances: int

    @property
    def shape(self) -> float:
        return max(self.fitted_shape, 0.0)

    @classmethod
    def fit(cls, scores: np.ndarray) -> ImpostorTail:
        ordered = np.sort(scores.astype(np.float64))
        top = max(MIN_EXCEEDANCES, int(len(ordered) * TAIL_FRACTION))
        start = float(ordered[-top - 1])
        excess = ordered[-top:] - start
        mean, variance = float(excess.mean()), float(excess.var())
        # Method of moments for the GPD (Hosking & Wallis 1987); variance 0 only for identical scores.
        ratio = mean * mean / variance if variance > 0 else 1.0
        return cls(start, top / len(ordered), 0.5 * mean * (ratio + 1), 0.5 * (1 - ratio), top)

    def threshold_for(self, fmr: float) -> float:
        """The score that a different-person pair reaches with probability ``fmr`` (below ``rate``)."""
        if self.shape < 1e-6:
            return self.start + self.scale * math.log(self.rate / fmr)
        return self.start + self.scale / self.shape * (math.pow(self.rate / fmr, self.shape) - 1)


@dataclass(frozen=True)
class Calibration:
    pack: str
    pairs: int
    same: np.ndarray
    different: np.ndarray
    missing_faces: list[str]
    seconds: float
    # Every pair of photos of two different people among the calibration photos (not only the listed pairs):
    # enough pairs to see the rare high similarities that make false matches in a large gallery.
    all_different: np.ndarray

    def false_match_rate(self, threshold: float) -> float:
        return float(np.mean(self.all_different >= threshold)) if len(self.all_different) else 0.0

    def accuracy_at(self, threshold: float) -> float:
        correct = np.sum(self.same >= threshold) + np.sum(self.different < threshold)
        return float(correct / (len(self.same) + len(self.different)))

    def best_accuracy(self) -> tuple[float, float]:
        candidates = np.unique(np.concatenate([self.same, self.different]))
        scores = [(self.accuracy_at(t), -t) for t in candidates]
        accuracy, negative = max(scores)
        return -negative, accuracy

    def auc(self) -> float:
        # Probability that a random same pair outscores a random different pair (Mann-Whitney U).
        greater = (self.same[:, None] > self.different[None, :]).sum()
        ties = (self.same[:, None] == self.different[None, :]).sum()
        return float((greater + 0.5 * ties) / (len(self.same) * len(self.different)))

    def strict_threshold(self) -> float:
        """Lowest threshold with no false accept on these pairs, rounded up to 0.01, for 1:N search."""
        return float(np.ceil((self.different.max() + 1e-9) * 100) / 100)

    def gallery_threshold(self) -> float:
        """Lowest threshold (to 0.01) at which a search of GALLERY_FACES enrolled faces expects at most one
        false match, from the rate over all different-person photo pairs."""
        if not len(self.all_different):
            return self.strict_threshold()
        quantile = float(np.quantile(self.all_different, 1 - 1 / GALLERY_FACES))
        return float(np.ceil((quantile + 1e-9) * 100) / 100)

    def search_threshold(self) -> float:
        """The default for search: no listed different pair accepted, and at most one false match per search of
        GALLERY_FACES faces. A search compares the query with every enrolled face, so the pair-level rule alone
        lets false matches grow with the gallery. Both are read on the pack's own scale (ArcFace spreads pairs
        over ~0.6 of the cosine range, dlib over ~0.1), so no fixed margin is added."""
        return max(self.strict_threshold(), self.gallery_threshold())

    def rates(self, threshold: float) -> tuple[float, float]:
        return float(np.mean(self.same >= threshold)), float(np.mean(self.different >= threshold))

    def tail(self) -> ImpostorTail:
        return ImpostorTail.fit(self.all_different)

    def fmr_curve(self) -> FmrCurve:
        """(false-match rate per comparison, threshold) for each rate of FMR_POINTS: read from the pairs where at
        least MIN_EXCEEDANCES different-person pairs are that high, from the tail fit below, whichever is higher
        (so the fit never lowers a threshold the data shows), thresholds rounded up to 0.001."""
        tail = self.tail()
        ordered = np.sort(self.all_different)
        points: list[tuple[float, float]] = []
        for fmr in FMR_POINTS:
            modelled = tail.threshold_for(fmr) if fmr < tail.rate else -1.0
            measured = -1.0
            if fmr * len(ordered) >= MIN_EXCEEDANCES:
                measured = float(ordered[math.floor(len(ordered) * (1 - fmr))])
            threshold = min(1.0, math.ceil(max(measured, modelled) * 1000 - 1e-6) / 1000)
            # Rarer rates never get a lower threshold than commoner ones.
            points.append((fmr, max(threshold, points[-1][1]) if points else threshold))
        return tuple(points)


def _closest_to_centre(pack: ModelPack, image: np.ndarray) -> Face | None:
    faces = pack.detect(image)
    if not faces:
        return None
    centre = np.array([image.shape[1] / 2, image.shape[0] / 2])
    return min(faces, key=lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))


# The gallery size the default threshold is chosen for: one false match per search at most.
GALLERY_FACES = 1_000


def embed_crop(pack: ModelPack, path: Path) -> np.ndarray | None:
    """The embedding of the face nearest the centre of a tight LFW-style crop, padded first; None without one."""
    image = decode(path.read_bytes(), 50_000_000)
    pad = int(image.shape[1] * PAD_FRACTION)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
    face = _closest_to_centre(pack, padded)
    return None if face is None else pack.embed([pack.align(padded, face)])[0]


def calibrate(settings: ModelSettings, folder: Path) -> Calibration:
    pack = PackLibrary(settings).get()
    with (folder / "pairs.tsv").open() as handle:
        pairs = [(row["image1"], row["image2"], row["same"] == "1") for row in csv.DictReader(handle, delimiter="\t")]
    started = time.perf_counter()
    embeddings: dict[str, np.ndarray | None] = {}
    for name in sorted({name for a, b, _ in pairs for name in (a, b)}):
        embeddings[name] = embed_crop(pack, folder / "images" / name)
    same: list[float] = []
    different: list[float] = []
    for a, b, is_same in pairs:
        ea, eb = embeddings[a], embeddings[b]
        # A pair with an undetected face counts as "not the same": what the product would answer.
        score = -1.0 if ea is None or eb is None else float(ea @ eb)
        (same if is_same else different).append(score)
    return Calibration(
        pack=settings.model_pack,
        pairs=len(pairs),
        same=np.array(same),
        different=np.array(different),
        missing_faces=sorted(name for name, value in embeddings.items() if value is None),
        seconds=time.perf_counter() - started,
        all_different=_different_people_pairs(embeddings),
    )


def _different_people_pairs(embeddings: dict[str, np.ndarray | None]) -> np.ndarray:
    found = {name: vector for name, vector in embeddings.items() if vector is not None}
    if not found:
        return np.zeros(0, dtype=np.float32)
    people = np.array([name.rsplit("_", 1)[0] for name in found])  # LFW: Person_Name_0001.jpg
    matrix = np.vstack(list(found.values()))
    sims = matrix @ matrix.T
    upper = np.triu(np.ones(sims.shape, dtype=bool), k=1)
    different: np.ndarray = sims[upper & (people[:, None] != people[None, :])].astype(np.float32)
    return different


def report(result: Calibration, folder: Path) -> str:
    best_t, best_acc = result.best_accuracy()
    strict = result.strict_threshold()
    chosen = result.search_threshold()
    lines = [
        f"## `{result.pack}`",
        "",
        f"Data: `{folder}` ({result.pairs} pairs: {len(result.same)} same person, {len(result.different)} different),",
        f"images padded by {int(PAD_FRACTION * 100)} % of their width before detection, face nearest the centre.",
        f"Written by `fecapass calibrate` on {platform.node() or 'this machine'} ({platform.machine()}),",
        f"{result.seconds:.0f} s. Faces not found: {', '.join(result.missing_faces) or 'none'}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| AUC | {result.auc():.4f} |",
        f"| best accuracy | {best_acc * 100:.2f} % at similarity >= {best_t:.3f} |",
        f"| same-person similarity: min / median | {result.same.min():.3f} / {np.median(result.same):.3f} |",
        f"| different-person similarity: median / max | {np.median(result.different):.3f}"
        f" / {result.different.max():.3f} |",
    ]
    steps = (-0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2)
    lines += [
        "",
        f"Accepted at each threshold: the listed same and different pairs, and all {len(result.all_different):,}"
        " pairs of photos of two different people; the last column is what that rate means for one search in a",
        "gallery of 100,000 enrolled faces (each compared with the query).",
        "",
        "| threshold | same pairs | different pairs | all different-person pairs | false matches per search of 100k |",
        "|---|---|---|---|---|",
    ]
    candidates = {round(best_t, 3), chosen, *(round(strict + step, 2) for step in steps)}
    candidates |= {round(chosen + step, 2) for step in (-0.02, 0.02, 0.05)}
    for threshold in sorted(value for value in candidates if value <= 1.0):
        tar, far = result.rates(threshold)
        rate = result.false_match_rate(threshold)
        lines.append(
            f"| {threshold:.3f} | {tar * 100:.1f} % | {far * 100:.2f} % | {rate * 100:.4f} % | {rate * 100_000:.1f} |"
        )
    lines += [
        "",
        f"Chosen default threshold of `{result.pack}` for search: **{chosen:.2f}**: the lowest value (to 0.01)",
        f"at which no listed different-person pair is accepted ({strict:.2f}) and a search of {GALLERY_FACES:,}",
        f"enrolled faces expects at most one false match ({result.gallery_threshold():.2f}). It is the threshold of",
        "1:1 verify, and of search only for a pack without a curve below: search chooses its threshold from the",
        "gallery's size (README, Search threshold).",
        "",
        *curve_report(result),
    ]
    return "\n".join(lines)


def curve_report(result: Calibration) -> list[str]:
    tail = result.tail()
    pairs = len(result.all_different)
    lines = [
        "### False-match rate per comparison, down to a million-face gallery",
        "",
        f"Rates down to {MIN_EXCEEDANCES / pairs:.1e} are read from the {pairs:,} different-person pairs",
        f"(at least {MIN_EXCEEDANCES} pairs at or above the threshold); rarer rates come from a generalised Pareto",
        f"fit to the top {tail.exceedances:,} scores (above {tail.start:.3f}, rate {tail.rate:.1e}): scale",
        f"{tail.scale:.4f}, fitted shape {tail.fitted_shape:+.3f}, used {tail.shape:+.3f} (a negative shape is",
        "clamped to 0, the exponential tail,",
        "which predicts more false matches, never fewer). Where both exist the higher threshold is kept. A search of",
        "N faces expects N x rate false matches; the default search threshold is the one whose rate is at most",
        "FECAPASS_FALSE_MATCHES_PER_SEARCH / N (default 0.1 / N).",
        "",
        "| false-match rate per comparison | threshold | from | same pairs accepted | gallery for 0.1 false matches |",
        "|---|---|---|---|---|",
    ]
    for fmr, threshold in result.fmr_curve():
        source = "pairs" if fmr * pairs >= MIN_EXCEEDANCES else "tail fit"
        tar, _ = result.rates(threshold)
        lines.append(f"| {fmr:.0e} | {threshold:.3f} | {source} | {tar * 100:.1f} % | {0.1 / fmr:,.0f} |")
    return lines


def write_curve(pack: str, curve: FmrCurve, path: Path = CURVES_FILE) -> None:
    """Replace ``pack``'s curve in the curves file, keeping the other packs'."""
    curves = json.loads(path.read_text()) if path.exists() else {}
    curves[pack] = [[fmr, threshold] for fmr, threshold in curve]
    path.write_text(json.dumps(dict(sorted(curves.items())), indent=1) + "\n")


HEADER = """# Similarity threshold calibration

Similarity is the cosine of the angle between two L2-normalised face embeddings (-1..1); a search
match is a stored face whose similarity to the query face is at least the threshold. Each pack has its
own scale, so each has its own default (`common/packs/catalog.py`), measured here by `fecapass calibrate`
(FECAPASS_MODEL_PACK picks the pack; each run replaces that pack's section). These are grayscale LFW
crops: calibrate again on photos like your own before production, and set FECAPASS_SIMILARITY_THRESHOLD.
"""


def main(settings: ModelSettings, folder: Path, output: Path) -> None:
    result = calibrate(settings, folder)
    existing = output.read_text() if output.exists() else ""
    output.write_text(merged(existing, HEADER, result.pack, report(result, folder)))
    write_curve(result.pack, result.fmr_curve())
    print(f"wrote {output} and {CURVES_FILE}: verify threshold {result.search_threshold():.2f}, AUC {result.auc():.4f}")

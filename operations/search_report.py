"""``fecapass bench-search``'s measurements as data, and the report sections rendered from them.

The figures live in a JSON file beside the report (``BENCHMARKS-search.json`` beside ``BENCHMARKS.md``): one run
per size and index configuration, each with its machine, its time and one record per storage, m,
ef_construction and ef_search measured. The report's search sections and its "search target" summary are
rendered from that file only, so a figure is never read back from a sentence.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict

from operations.reports import BENCHMARKS_HEADER, merged

# The target: at a million embeddings, match recall >= 0.99 with p99 under 10 ms.
TARGET_SIZE = 1_000_000
TARGET_RECALL = 0.99
TARGET_P99_MS = 10.0
TARGET_SECTION = "search-target"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Measurement(_Record):
    """One ef_search on one index build, against the exact search of the same data."""

    storage: str  # vector or halfvec
    m: int
    ef_construction: int
    ef_search: int
    build_seconds: float
    index_mib: float
    person_recall: float  # share of the query person's stored photos the index returns
    match_recall: float  # share of the exact candidates at or above the threshold the index returns
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    queries_per_second: float


class BinaryMeasurement(_Record):
    """The binary-code index (indexer/binary_index.py) on the same data: an exact Hamming scan of every stored
    face's sign bits in memory, then PostgreSQL ranks ``candidates`` codes by the full vectors."""

    candidates: int
    load_seconds: float  # every code read from PostgreSQL into memory (a process's start)
    memory_mib: float  # codes and ids held in memory
    cold_first_query_ms: float  # the first search after the load
    person_recall: float
    match_recall: float
    recall_at_10: float
    p50_ms: float  # whole search: scan and PostgreSQL's ranking
    p99_ms: float
    scan_p50_ms: float  # the in-memory scan alone
    rank_p50_ms: float  # PostgreSQL's ranking alone
    queries_per_second: float
    findable_ms: float  # a face published on the feed: time until the next search has found it


class FilteredMeasurement(_Record):
    """A search in a collection holding a small share of the gallery (the product's: the binary index scans that
    collection's codes; HNSW filters by collection with pgvector's iterative scan), against the exact search of the
    collection."""

    index: str  # "binary" or "hnsw"
    configuration: str  # e.g. "candidates 200", "halfvec m 32 ef_search 100"
    person_recall: float  # share of the query person's stored photos returned
    match_recall: float  # share of the collection's exact candidates at or above the threshold returned
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    queries_per_second: float


class GeneratedEmbeddings(_Record):
    """The model the embeddings were drawn from, fitted to a pack's real embeddings of LFW photos."""

    pack: str
    dim: int
    fitted_to: str  # the LFW folder
    real_embeddings: int
    people: int
    real_same: float  # median cosine of two photos of one person
    generated_same: float
    real_different: float  # of two people
    generated_different: float
    photos_per_person: int


class SearchRun(_Record):
    """One size of one ``fecapass bench-search`` run: one section of the report."""

    size: int
    storages: tuple[str, ...]
    m_values: tuple[int, ...]
    ef_construction: int
    finished_at: AwareDatetime
    machine: str
    embeddings: GeneratedEmbeddings
    queries: int
    limit: int  # people asked for per face
    candidates_per_result: int  # faces read per person asked for
    threshold: float  # the pack's, which match recall counts from
    shared_buffers: str | None  # None: not recorded (runs before the report stated it)
    maintenance_work_mem: str | None
    warmed: bool  # each ef_search's queries ran once untimed before they were timed
    load_seconds: float
    exact_scan_ms: float  # median, no index, parallel workers
    own_share: float  # of the exact candidates at or above the threshold, photos of the query's person
    run_seconds: float
    measurements: tuple[Measurement, ...]
    binary: tuple[BinaryMeasurement, ...] = ()  # runs before the binary index have none
    # A collection holding this share of the gallery's people (runs before collections have none), its faces, and
    # the searches in it.
    collection_share: float | None = None
    collection_faces: int | None = None
    filtered: tuple[FilteredMeasurement, ...] = ()

    @property
    def section(self) -> str:
        """The report's section, one per size and index configuration: a rerun of it replaces it."""
        if not self.measurements and self.binary:
            return f"search-{self.size}-binary-c{'-'.join(str(row.candidates) for row in self.binary)}"
        return (
            f"search-{self.size}-{'-'.join(self.storages)}-m{'-'.join(map(str, self.m_values))}"
            f"-efc{self.ef_construction}"
        )


class SearchResults(_Record):
    runs: tuple[SearchRun, ...] = ()

    def with_run(self, run: SearchRun) -> SearchResults:
        """These results with ``run`` in place of an earlier run of its section (or added last)."""
        if any(earlier.section == run.section for earlier in self.runs):
            return SearchResults(
                runs=tuple(run if earlier.section == run.section else earlier for earlier in self.runs)
            )
        return SearchResults(runs=(*self.runs, run))


def results_path(report: Path) -> Path:
    """Where a report's measurements are kept: ``BENCHMARKS-search.json`` beside ``BENCHMARKS.md``."""
    return report.with_name(f"{report.stem}-search.json")


def load_results(path: Path) -> SearchResults:
    return SearchResults.model_validate_json(path.read_text()) if path.is_file() else SearchResults()


def save_results(path: Path, results: SearchResults) -> None:
    path.write_text(results.model_dump_json(indent=2) + "\n")


# -- rendering ----------------------------------------------------------------------------------------------


def rendered(report: str, results: SearchResults) -> str:
    """``report`` with a section for every run and the target summary rewritten from ``results``; the other
    sections are kept as they are."""
    for run in results.runs:
        report = merged(report, BENCHMARKS_HEADER, run.section, "\n".join(section_lines(run)))
    target = target_lines([run for run in results.runs if run.size == TARGET_SIZE])
    return merged(report, BENCHMARKS_HEADER, TARGET_SECTION, "\n".join(target)) if target else report


def section_lines(run: SearchRun) -> list[str]:
    fit = run.embeddings
    binary_only = not run.measurements and bool(run.binary)
    warm = "20 queries" if binary_only else "each ef_search's queries"
    if binary_only:
        title = f"## Search at scale: {run.size:,} embeddings, binary-code scan and re-rank"
    else:
        title = (
            f"## Search at scale: {run.size:,} embeddings, {' and '.join(run.storages)},"
            f" m {' and '.join(map(str, run.m_values))}, ef_construction {run.ef_construction}"
        )
    lines = [
        title,
        "",
        f"Written by `fecapass bench-search` on {run.finished_at:%Y-%m-%d %H:%M UTC}; machine: {run.machine}.",
        f"Embeddings generated to look like `{fit.pack}`'s: fitted to its {fit.real_embeddings} embeddings of the LFW",
        f"photos in `{fit.fitted_to}` ({fit.people} people). Median cosine of two photos of one"
        f" person: real {fit.real_same:.3f}, generated {fit.generated_same:.3f}; of two people: real"
        f" {fit.real_different:.3f}, generated {fit.generated_different:.3f}. {fit.photos_per_person} photos per"
        f" person; {run.queries} queries, each a",
        "new photo of a stored person. The query is the product's: "
        + ("the binary-code index (below)," if binary_only else "the pack's partial HNSW index,")
        + f" LIMIT {run.limit * run.candidates_per_result} (limit {run.limit} x {run.candidates_per_result}"
        " candidates)."
        " **Person recall**: share of the query person's stored photos the index returns; **match recall**: share",
        f"of the exact search's candidates at or above the pack's threshold ({run.threshold:.2f}) that the index"
        " returns;",
        "**recall@10**: overlap of the first 10 with the exact first 10. One client, no prepared statements"
        + (f"; {warm} run once untimed before they are timed." if run.warmed else "."),
    ]
    if binary_only and run.shared_buffers:
        lines.append(f"PostgreSQL: shared_buffers {run.shared_buffers}; no HNSW index built.")
    elif run.shared_buffers or run.maintenance_work_mem:
        lines.append(
            f"PostgreSQL: shared_buffers {run.shared_buffers or 'not recorded'}; index built with"
            f" maintenance_work_mem {run.maintenance_work_mem or 'not recorded'}."
        )
    lines += [
        "",
        f"Loaded ({fit.dim}-d) in {run.load_seconds:.0f} s. Exact scan (no index, parallel workers):"
        f" {run.exact_scan_ms:.0f} ms a query. Of the exact candidates at or above the threshold,"
        f" {run.own_share * 100:.0f} % are photos of the query's",
        "person; the rest are strangers: false matches at this gallery size, which an index that misses them does",
        "the user no harm, so person recall is the figure that matters.",
        "",
    ]
    if run.measurements:
        lines += [
            "| storage | m | ef_construction | build s | index MiB | ef_search | person recall |"
            " match recall | recall@10 | p50 ms | p99 ms | queries/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {row.storage} | {row.m} | {row.ef_construction} | {row.build_seconds:.0f} |"
                f" {row.index_mib:.0f} | {row.ef_search} | {row.person_recall:.3f} | {row.match_recall:.3f} |"
                f" {row.recall_at_10:.3f} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.queries_per_second:.0f} |"
                for row in run.measurements
            ),
            "",
        ]
    if run.binary:
        lines += binary_lines(run)
    if run.filtered:
        lines += filtered_lines(run)
    lines.append(f"Whole run for this size: {run.run_seconds:.0f} s.")
    return lines


def binary_lines(run: SearchRun) -> list[str]:
    return [
        "Binary-code index (`FECAPASS_SEARCH_INDEX=binary`, the product's `indexer/binary_index.py`): every stored"
        " face's sign bits (pgvector's binary_quantize) held in the searching process's memory, scanned exactly",
        "(faiss IndexBinaryFlat, one thread), the best `candidates` codes ranked by PostgreSQL on the full vectors",
        f"of the rows stored now, the first {run.limit * run.candidates_per_result} kept. **Load**: every code read"
        " from PostgreSQL (a process's start); **cold**: the first search after it; **findable**: a face",
        "published on the gallery feed until the next search returns it.",
        "",
        "| candidates | load s | memory MiB | cold ms | person recall | match recall | recall@10 | p50 ms |"
        " p99 ms | scan p50 ms | rank p50 ms | queries/s | findable ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {row.candidates} | {row.load_seconds:.1f} | {row.memory_mib:.0f} | {row.cold_first_query_ms:.0f} |"
            f" {row.person_recall:.3f} | {row.match_recall:.3f} | {row.recall_at_10:.3f} | {row.p50_ms:.1f} |"
            f" {row.p99_ms:.1f} | {row.scan_p50_ms:.1f} | {row.rank_p50_ms:.1f} | {row.queries_per_second:.0f} |"
            f" {row.findable_ms:.0f} |"
            for row in run.binary
        ),
        "",
    ]


def filtered_lines(run: SearchRun) -> list[str]:
    share = (run.collection_share or 0) * 100
    return [
        f"**Search in a collection holding {share:g} % of the gallery** ({run.collection_faces or 0:,} faces; the"
        " other faces in the default collection; the searches above are of people of the default collection).",
        "The product's search in that collection: the binary index scans that collection's codes only; HNSW adds",
        "`collection_id = ...` and pgvector's iterative scan (`relaxed_order`, `FECAPASS_HNSW_MAX_SCAN_TUPLES`)."
        f" {run.queries} queries, each a new photo of a person of the collection, measured against the exact",
        "search of the collection.",
        "",
        "| index | configuration | person recall | match recall | recall@10 | p50 ms | p99 ms | queries/s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {row.index} | {row.configuration} | {row.person_recall:.3f} | {row.match_recall:.3f} |"
            f" {row.recall_at_10:.3f} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.queries_per_second:.0f} |"
            for row in run.filtered
        ),
        "",
    ]


def target_lines(runs: list[SearchRun]) -> list[str]:
    """The target summary over every configuration measured at the target size (none: no summary)."""
    measured = [row for run in runs for row in run.measurements]
    binary = [row for run in runs for row in run.binary]
    if not measured and not binary:
        return []
    cold = [run.section for run in runs if not run.warmed]
    lines = [
        f"## Search target at {TARGET_SIZE:,} embeddings",
        "",
        f"Over every configuration measured at this size ({', '.join(f'`{run.section}`' for run in runs)}),"
        " rewritten by `fecapass bench-search` whenever it writes a section.",
        "",
        *target_verdict(measured, max(run.own_share for run in runs), binary),
    ]
    if cold:
        lines += [
            "",
            f"Timed without an untimed pass first: {', '.join(f'`{name}`' for name in cold)}. Right after a"
            " build, pages of the index and the table may not be in memory yet: their p99 figures may include"
            " cold reads (the later, warmed runs will tell); their recall figures are not affected.",
        ]
    return lines


def target_verdict(
    measured: list[Measurement], own_share: float, binary: list[BinaryMeasurement] | None = None
) -> list[str]:
    """Met or missed, by how much, and why, from the figures at the target size."""
    binary_rows = binary_verdict(binary or [])
    if not measured:
        return binary_rows
    return [*_hnsw_verdict(measured, own_share), *(["", *binary_rows] if binary_rows else [])]


def binary_verdict(rows: list[BinaryMeasurement]) -> list[str]:
    if not rows:
        return []
    best = max(rows, key=lambda row: (row.person_recall >= TARGET_RECALL and row.p99_ms < TARGET_P99_MS, -row.p99_ms))
    met = best.person_recall >= TARGET_RECALL and best.p99_ms < TARGET_P99_MS
    described = (
        f"person recall {best.person_recall:.3f}, match recall {best.match_recall:.3f}, p50 {best.p50_ms:.1f} ms,"
        f" p99 {best.p99_ms:.1f} ms with {best.candidates} candidates (scan {best.scan_p50_ms:.1f} ms, PostgreSQL"
        f" ranking {best.rank_p50_ms:.1f} ms at p50); {best.memory_mib:.0f} MiB in memory, codes loaded in"
        f" {best.load_seconds:.0f} s"
    )
    if met:
        return [
            f"**Binary-code scan and re-rank** (person recall >= {TARGET_RECALL}, p99 under"
            f" {TARGET_P99_MS:.0f} ms): met: {described}."
        ]
    short = []
    if best.person_recall < TARGET_RECALL:
        short.append(f"person recall {TARGET_RECALL - best.person_recall:.3f} short")
    if best.p99_ms >= TARGET_P99_MS:
        short.append(f"p99 {best.p99_ms - TARGET_P99_MS:.1f} ms over")
    return [
        f"**Binary-code scan and re-rank** (person recall >= {TARGET_RECALL}, p99 under {TARGET_P99_MS:.0f} ms):"
        f" missed ({', '.join(short)}); closest: {described}."
    ]


def _hnsw_verdict(measured: list[Measurement], own_share: float) -> list[str]:
    def described(row: Measurement) -> str:
        return (
            f"{row.match_recall:.3f} ({row.storage}, m {row.m}, ef_search {row.ef_search};"
            f" person recall {row.person_recall:.3f}, p99 {row.p99_ms:.1f} ms)"
        )

    def recall(row: Measurement) -> float:
        return row.match_recall

    met = [row for row in measured if row.match_recall >= TARGET_RECALL and row.p99_ms < TARGET_P99_MS]
    fast = [row for row in measured if row.p99_ms < TARGET_P99_MS]
    line = (
        f"**Target** (match recall >= {TARGET_RECALL} with p99 under {TARGET_P99_MS:.0f} ms at {TARGET_SIZE:,}"
        f" embeddings): {'met by ' + described(met[0]) if met else 'missed'}."
    )
    if met:
        return [line]
    within = (
        f"Within {TARGET_P99_MS:.0f} ms p99 the best match recall is {described(max(fast, key=recall))}"
        if fast
        else f"No configuration measured answered within {TARGET_P99_MS:.0f} ms p99"
    )
    return [
        f"{line} {within}; the highest match recall measured is {described(max(measured, key=recall))}. Why:"
        f" match recall counts every exact candidate at or above the threshold, and {(1 - own_share) * 100:.0f} %"
        " of those are strangers just above it, the faces a graph search is least likely to reach; more of them"
        " need a larger ef_search (or m), and each step costs latency on these cores (the tables above). Person"
        " recall, the share of the person's own photos found, is the figure a user notices.",
    ]


def rewrite_report(report: Path) -> Path:
    """Render ``report``'s search sections and target summary from the measurements beside it; measure nothing."""
    existing = report.read_text() if report.exists() else ""
    text = rendered(existing, load_results(results_path(report)))
    if text != existing:
        report.write_text(text)
    return report

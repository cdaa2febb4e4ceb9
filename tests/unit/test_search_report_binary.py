"""The binary-code index's figures in the search report: its own section, and the target summary that weighs it
beside HNSW's."""

from __future__ import annotations

from operations.search_report import (
    BinaryMeasurement,
    FilteredMeasurement,
    SearchResults,
    SearchRun,
    rendered,
    section_lines,
    target_verdict,
)
from tests.unit.test_bench_reports import PIPELINE, WARM_MILLION, row, search_run


def binary_row(candidates: int, person: float, p99: float) -> BinaryMeasurement:
    return BinaryMeasurement(
        candidates=candidates,
        load_seconds=12.0,
        memory_mib=69.0,
        cold_first_query_ms=40.0,
        person_recall=person,
        match_recall=0.9,
        recall_at_10=0.99,
        p50_ms=p99 / 2,
        p99_ms=p99,
        scan_p50_ms=3.0,
        rank_p50_ms=2.0,
        queries_per_second=200.0,
        findable_ms=4.0,
    )


def binary_run(size: int, *rows: BinaryMeasurement) -> SearchRun:
    base = search_run(size, 16, row(16, 40, 1.0, 1.0))
    return base.model_copy(update={"storages": (), "m_values": (), "measurements": (), "binary": rows})


def test_a_binary_run_has_its_own_section_and_the_target_weighs_it() -> None:
    million = binary_run(1_000_000, binary_row(200, 0.999, 8.0), binary_row(400, 1.0, 14.0))
    assert million.section == "search-1000000-binary-c200-400"
    report = rendered(PIPELINE, SearchResults(runs=(WARM_MILLION, million)))
    section = report.split(f"<!-- section:{million.section} -->", 1)[1].split("<!-- /section", 1)[0]
    assert "## Search at scale: 1,000,000 embeddings, binary-code scan and re-rank" in section
    assert "| 200 | 12.0 | 69 | 40 | 0.999 | 0.900 | 0.990 | 4.0 | 8.0 | 3.0 | 2.0 | 200 | 4 |" in section
    assert "| storage | m |" not in section  # no HNSW table for a run without HNSW
    target = report.split("<!-- section:search-target -->", 1)[1]
    assert "highest match recall measured is 0.844" in target  # HNSW's verdict stays
    assert "**Binary-code scan and re-rank** (person recall >= 0.99, p99 under 10 ms): met" in target
    assert "p99 8.0 ms with 200 candidates" in target


def test_a_binary_miss_says_by_how_much_and_which_came_closest() -> None:
    [line] = target_verdict([], 0.1, [binary_row(200, 0.98, 12.5), binary_row(400, 0.995, 20.0)])
    assert "missed" in line and "closest" in line
    assert "p99 12.5 ms" in line and "p99 2.5 ms over" in line and "person recall 0.010 short" in line


def test_a_run_with_a_filtered_case_renders_its_table_and_older_runs_still_parse() -> None:
    searched = FilteredMeasurement(
        index="hnsw",
        configuration="halfvec m 32 ef_search 100",
        person_recall=0.998,
        match_recall=0.97,
        recall_at_10=0.99,
        p50_ms=3.0,
        p99_ms=9.5,
        queries_per_second=300.0,
    )
    run = binary_run(1_000_000, binary_row(200, 0.999, 8.0)).model_copy(
        update={"collection_share": 0.01, "collection_faces": 10_000, "filtered": (searched,)}
    )
    section = "\n".join(section_lines(run))
    assert "**Search in a collection holding 1 % of the gallery** (10,000 faces;" in section
    assert "| hnsw | halfvec m 32 ef_search 100 | 0.998 | 0.970 | 0.990 | 3.0 | 9.5 | 300 |" in section
    # A run stored before collections (no such fields) reads back without a filtered table.
    stored = run.model_dump(mode="json")
    for field in ("collection_share", "collection_faces", "filtered"):
        del stored[field]
    older = SearchRun.model_validate(stored)
    assert older.filtered == () and "collection holding" not in "\n".join(section_lines(older))

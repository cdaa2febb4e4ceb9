"""Every option side by side in the search report: IVFFlat's own table, enroll latency and the end-to-end search in a
run's section; the target summary's table of every index with the date it was measured, the build verdict (the
binary mode's build: rows loaded + codes read), and the sections of earlier runs kept under their names."""

from __future__ import annotations

from datetime import UTC, datetime

from operations.search_report import (
    EndToEndMeasurement,
    EnrollMeasurement,
    IvfflatMeasurement,
    SearchResults,
    SearchRun,
    build_verdict,
    ivfflat_verdict,
    rendered,
)
from tests.unit.test_bench_reports import PIPELINE, WARM_MILLION, row, search_run
from tests.unit.test_search_report_binary import binary_row


def ivf_row(probes: int, person: float, p99: float, lists: int = 1000) -> IvfflatMeasurement:
    return IvfflatMeasurement(
        lists=lists,
        probes=probes,
        build_seconds=60.0,
        index_mib=1000.0,
        person_recall=person,
        match_recall=0.5,
        recall_at_10=0.7,
        p50_ms=p99 / 2,
        p99_ms=p99,
        queries_per_second=50.0,
    )


def new_run(**fields: object) -> SearchRun:
    """A run of today's bench-search at a million: no HNSW, with what the fields say."""
    base = search_run(1_000_000, 16, row(16, 40, 1.0, 1.0))
    update = {"storages": (), "m_values": (), "measurements": (), "finished_at": datetime(2026, 12, 2, tzinfo=UTC)}
    return base.model_copy(update={**update, "load_seconds": 40.0, **fields})


END_TO_END = EndToEndMeasurement(
    searches=50,
    photo="obama_1.jpg",
    search_index="binary",
    p50_ms=180.0,
    p99_ms=260.0,
    stage_p50_ms={"detect": 60.0, "index": 12.5},
    index_p99_ms=21.0,
)


def section(report: str, name: str) -> str:
    return report.split(f"<!-- section:{name} -->", 1)[1].split("<!-- /section", 1)[0]


def test_a_run_with_every_new_measurement_renders_each_in_its_section() -> None:
    run = new_run(
        binary=(binary_row(200, 1.0, 9.0),),
        ivfflat=(ivf_row(16, 0.41, 12.0), ivf_row(256, 0.94, 180.0)),
        main_rows_seconds=25.0,
        enroll=(EnrollMeasurement(index="binary (no HNSW index)", enrolls=200, p50_ms=6.5, p99_ms=14.0),),
        end_to_end=END_TO_END,
    )
    assert run.section == "search-1000000-binary-c200-ivfflat-l1000"
    text = section(rendered(PIPELINE, SearchResults(runs=(run,))), run.section)
    assert "## Search at scale: 1,000,000 embeddings, binary-code scan and re-rank; IVFFlat lists 1000" in text
    assert "| 1000 | 60 | 1000 | 256 | 0.940 | 0.500 | 0.700 | 90.0 | 180.0 | 50 |" in text
    # The binary mode's build: the rows bulk-loaded (40 s) and the codes read (12 s).
    assert "no index is built: the rows bulk-loaded, then every code read into memory): 40 s + 12.0 s = 52 s" in text
    assert "| binary (no HNSW index) | 200 | 6.5 | 14.0 |" in text
    assert "(users, served face rows; COPY) in 25 s" in text
    assert "upload to answer p50 180.0 ms, p99 260.0 ms; the index stage p50 12.5 ms, p99 21.0 ms" in text
    assert "detect 60.0, index 12.5" in text


def test_the_target_summary_puts_every_option_side_by_side_with_when_it_was_measured() -> None:
    ivf = new_run(ivfflat=(ivf_row(64, 0.71, 40.0), ivf_row(256, 0.94, 180.0)), enroll=(), end_to_end=END_TO_END)
    binary = new_run(binary=(binary_row(200, 0.999, 13.0), binary_row(400, 1.0, 14.0)))
    report = rendered(PIPELINE, SearchResults(runs=(WARM_MILLION, ivf, binary)))
    target = section(report, "search-target")
    # HNSW is kept from its earlier run (not rebuilt) and says when it was measured.
    assert "| HNSW halfvec, m 32, ef_construction 128 | ef_search 800 | 100 | 10 | 0.01 |" in target
    assert "| 2026-11-26 |" in target and "(HNSW at this size: 2026-11-26, kept from those runs" in target
    assert "(1953 MiB a million 512-d" in target
    # IVFFlat finds the person less than 0.99 of the time: its row is the setting finding most.
    assert (
        "| IVFFlat halfvec, lists 1000 | probes 256 | 60 | 1000 | 0.51 | 0.940 | 0.500 | 90.0 | 180.0 | 2026-12-02 |"
        in target
    )
    # Both binary settings find the person: the faster one is shown; its build is load + codes.
    assert "| binary codes + PostgreSQL ranking | 200 candidates | 52 | 69 | 0.04 | 0.999 |" in target
    assert "**IVFFlat** (person recall >= 0.99, p99 under 10 ms): missed (person recall 0.050 short" in target
    assert "**End to end** (upload to answer through the real API and stages" in target
    assert "highest match recall measured is 0.844" in target  # HNSW's verdict stays


def test_the_build_verdict_says_which_option_builds_within_15_minutes_and_by_how_much_the_others_miss() -> None:
    hnsw = WARM_MILLION.model_copy(
        update={
            "measurements": tuple(r.model_copy(update={"build_seconds": 5672.0}) for r in WARM_MILLION.measurements)
        }
    )
    [line] = build_verdict([hnsw, new_run(binary=(binary_row(200, 1.0, 9.0),))])
    assert "met by binary mode: rows bulk-loaded + codes read" in line
    assert "HNSW halfvec m 32 (measured 2026-11-26) 5672 s (over by 4772 s)" in line
    assert "binary mode: rows bulk-loaded + codes read 52 s (within)" in line
    [missed] = build_verdict([hnsw])
    assert "missed by every option" in missed


def test_ivfflat_meeting_the_target_says_so() -> None:
    [line] = ivfflat_verdict([ivf_row(8, 0.995, 9.0), ivf_row(4, 0.9, 3.0)])
    assert line.startswith("**IVFFlat** (person recall >= 0.99, p99 under 10 ms): met:")
    assert "probes 8" in line


def test_earlier_runs_keep_their_section_names() -> None:
    """Renamed sections would leave the old ones behind in BENCHMARKS.md, unrendered and stale."""
    both = WARM_MILLION.model_copy(update={"binary": (binary_row(200, 1.0, 9.0),)})
    assert both.section == WARM_MILLION.section == "search-1000000-halfvec-m32-efc128"
    assert new_run(binary=(binary_row(200, 1.0, 9.0),)).section == "search-1000000-binary-c200"
    report = rendered(PIPELINE, SearchResults(runs=(both,)))
    assert "## Search at scale: 1,000,000 embeddings, halfvec, m 32, ef_construction 128\n" in report

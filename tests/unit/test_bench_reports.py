"""The benchmark's verdicts: met or missed, and the figures they cite, from measured results."""

from __future__ import annotations

from operations.bench import HEADER, Throughput, best_batches, why_slower
from operations.bench_search import IndexBuild, target_verdict, with_target_summary
from operations.reports import merged


def build(m: int, *results: tuple[int, float, float]) -> IndexBuild:
    """results: (ef_search, match recall, p99 ms)"""
    built = IndexBuild("halfvec", m, 128, 100.0, 10.0)
    for ef, recall, p99 in results:
        built.results.append(
            {"ef_search": ef, "match_recall": recall, "person_recall": 1.0, "p99": p99, "p50": p99 / 2, "qps": 1.0}
        )
    return built


def test_search_target_is_met_only_by_one_configuration_with_both_recall_and_latency() -> None:
    lines = target_verdict([build(16, (100, 0.995, 12.0)), build(32, (40, 0.991, 9.5))], own_share=0.2)
    assert len(lines) == 1 and "met by 0.991 (halfvec, m 32, ef_search 40" in lines[0]


def test_search_target_missed_cites_the_best_within_the_latency_and_the_best_overall() -> None:
    (line,) = target_verdict([build(32, (100, 0.62, 8.0), (400, 0.89, 25.0))], own_share=0.13)
    assert "missed" in line
    assert "Within 10 ms p99 the best match recall is 0.620 (halfvec, m 32, ef_search 100" in line
    assert "highest match recall measured is 0.890" in line and "87 % of those are strangers" in line
    (line,) = target_verdict([build(32, (400, 0.89, 25.0))], own_share=0.13)
    assert "No configuration measured answered within 10 ms p99" in line


def test_pipeline_why_names_the_budget_and_the_costs_outside_the_model_stages() -> None:
    costs = {"api": 16.0, "detect": 50.0, "embed": 40.0, "align": 22.0, "s3": 11.0, "webhook": 0.1}
    (line,) = why_slower(Throughput(24.6, 81.0), Throughput(12.5, 150.0), costs)
    assert "spends 150 ms a photo against the baseline's 81" in line and "at most 90" in line
    assert "spend 90 ms together" in line
    assert "align 22, api 16, s3 11 ms" in line and "webhook" not in line


def test_best_batch_per_thread_setting_against_the_stage_default() -> None:
    rows = [("1", 1, 41.0), ("1", 8, 37.0), ("default", 1, 58.0), ("default", 8, 70.0)]
    line = best_batches(rows, configured=8)
    assert "Fastest: 1 thread, batch 1 (41 faces/s); default threads, batch 8 (70 faces/s)." in line
    assert "default (8) runs at 0.90 of the best with 1 thread; 1.00 of the best with default threads." in line


def section_body(rows: list[str], warmed: bool) -> str:
    """A bench-search section as the command writes it (the lines the summary reads)."""
    return "\n".join(
        [
            "## Search at scale",
            "One client, no prepared statements" + ("; each ef_search's queries run once untimed." if warmed else "."),
            "Of the exact candidates at or above the threshold, 13 % are photos of the query's person.",
            "| storage | m | ef_construction | build s | index MiB | ef_search | person recall |"
            " match recall | recall@10 | p50 ms | p99 ms | queries/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def test_target_summary_is_rewritten_from_every_section_at_a_million() -> None:
    report = HEADER
    for name, row, warmed in (
        (
            "search-1000000-halfvec-m16-efc128",
            "| halfvec | 16 | 128 | 2605 | 1302 | 100 | 0.659 | 0.276 | 0.472 | 12.9 | 9.4 | 61 |",
            False,
        ),
        (
            "search-1000000-halfvec-m32-efc128",
            "| halfvec | 32 | 128 | 5672 | 1563 | 800 | 0.992 | 0.844 | 0.940 | 123.5 | 363.6 | 8 |",
            True,
        ),
        (
            "search-100000-vector-m16-efc128",
            "| vector | 16 | 128 | 150 | 260 | 40 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 99 |",
            True,
        ),
    ):
        report = merged(report, HEADER, name, section_body([row], warmed))
    summary = with_target_summary(report)
    assert summary.startswith(report.rstrip("\n"))  # the other sections are kept as they were
    target = summary.split("<!-- section:search-target -->", 1)[1]
    assert "(`search-1000000-halfvec-m16-efc128`, `search-1000000-halfvec-m32-efc128`)" in target
    assert "best match recall is 0.276 (halfvec, m 16, ef_search 100" in target  # the 100k row does not count
    assert "highest match recall measured is 0.844 (halfvec, m 32, ef_search 800" in target
    assert "87 % of those are strangers" in target
    assert "Timed without an untimed pass first: `search-1000000-halfvec-m16-efc128`." in target
    assert with_target_summary(summary) == summary  # rewritten in place, not added again
    smaller = merged(HEADER, HEADER, "search-300000-halfvec-m16-efc128", section_body([], True))
    assert with_target_summary(smaller) == smaller  # no section at the target size: no summary

"""The benchmark's verdicts: met or missed, and the figures they cite, from measured results; the search
report rendered from its measurements file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from operations.bench import (
    InferenceCost,
    LoopResult,
    PipelineRun,
    Report,
    Throughput,
    best_batches,
    forward_totals,
    outside_inference,
    report_enroll,
    steady_rate,
    why_slower,
)
from operations.reports import BENCHMARKS_HEADER as HEADER
from operations.reports import merged
from operations.search_report import (
    GeneratedEmbeddings,
    Measurement,
    SearchResults,
    SearchRun,
    load_results,
    rendered,
    results_path,
    rewrite_report,
    save_results,
    target_verdict,
)

ROOT = Path(__file__).resolve().parents[2]


def row(m: int, ef: int, recall: float, p99: float, storage: str = "halfvec") -> Measurement:
    return Measurement(
        storage=storage,
        m=m,
        ef_construction=128,
        ef_search=ef,
        build_seconds=100.0,
        index_mib=10.0,
        person_recall=1.0,
        match_recall=recall,
        recall_at_10=1.0,
        p50_ms=p99 / 2,
        p99_ms=p99,
        queries_per_second=1.0,
    )


def test_search_target_is_met_only_by_one_configuration_with_both_recall_and_latency() -> None:
    lines = target_verdict([row(16, 100, 0.995, 12.0), row(32, 40, 0.991, 9.5)], own_share=0.2)
    assert len(lines) == 1 and "met by 0.991 (halfvec, m 32, ef_search 40" in lines[0]


def test_search_target_missed_cites_the_best_within_the_latency_and_the_best_overall() -> None:
    (line,) = target_verdict([row(32, 100, 0.62, 8.0), row(32, 400, 0.89, 25.0)], own_share=0.13)
    assert "missed" in line
    assert "Within 10 ms p99 the best match recall is 0.620 (halfvec, m 32, ef_search 100" in line
    assert "highest match recall measured is 0.890" in line and "87 % of those are strangers" in line
    (line,) = target_verdict([row(32, 400, 0.89, 25.0)], own_share=0.13)
    assert "No configuration measured answered within 10 ms p99" in line


def test_pipeline_why_names_the_budget_and_the_costs_outside_the_model_stages() -> None:
    costs = {"api": 16.0, "detect": 50.0, "embed": 40.0, "align": 22.0, "s3": 11.0, "webhook": 0.1}
    (line,) = why_slower(Throughput(24.6, 81.0), Throughput(12.5, 150.0), costs, load_generator_ms=0.0)
    assert "The CPU a photo: 0.540 (the loop's 81.0 ms against the pipeline's 150.0" in line
    assert "0.95 of the loop's throughput allows 85.3 in all" in line
    # 12.5 photos/s x 150 ms on 2 cores against the loop's 24.6 x 81.
    assert "The cores' busy share: 0.941 (the pipeline kept them 93.8% busy, the loop 99.6%)" in line
    assert "spend 90 ms together" in line
    assert "align 22.0, api 16.0, s3 11.0 ms" in line and "webhook" not in line


def test_pipeline_why_factors_multiply_to_the_ratio_with_the_load_generator_on_the_cores() -> None:
    costs = {"api": 2.5, "detect": 30.1, "embed": 14.9, "valkey": 2.6}
    loop, pipeline = Throughput(39.0, 51.0), Throughput(36.4, 52.5)
    (line,) = why_slower(loop, pipeline, costs, load_generator_ms=0.5)
    work = float(line.split("The CPU a photo: ")[1][:5])
    busy = float(line.split("The cores' busy share: ")[1][:5])
    assert (work, busy) == (0.962, 0.970)  # 51 / (52.5 + 0.5); (36.4 x 53 / 2000) / (39 x 51 / 2000)
    assert work * busy == pytest.approx(36.4 / 39.0, abs=0.001)
    assert "the pipeline's 52.5 and the load generator's 0.5" in line
    assert "spend 45 ms together" in line and "valkey 2.6, api 2.5 ms" in line


def test_loop_rate_counts_only_while_every_loop_runs() -> None:
    # Two loops of 10 photos: one at 1 photo/s from t=100, one at 2 photos/s from t=100.5 (done at 105.5). From
    # 100.5 (the last start) to 105.5 (the first finish): 5 photos of the first and 10 of the second.
    slow = LoopResult(100.0, [100.0 + i for i in range(1, 11)], 10.0)
    fast = LoopResult(100.5, [100.5 + i / 2 for i in range(1, 11)], 5.0)
    assert steady_rate([slow, fast]) == 15 / 5.0
    # One loop: its whole run.
    assert steady_rate([slow]) == 1.0


def test_a_layout_is_weighed_against_the_loop_beside_it() -> None:
    run = PipelineRun("layout", Throughput(30.0, 60.0), [], {}, 0.0, loop=Throughput(32.0, 55.0))
    assert run.ratio(Throughput(40.0, 50.0)) == 30.0 / 32.0
    alone = PipelineRun("layout", Throughput(30.0, 60.0), [], {}, 0.0)  # no loop round beside it: the run's best
    assert alone.ratio(Throughput(40.0, 50.0)) == 30.0 / 40.0


def test_work_outside_the_models_is_the_pipeline_cpu_less_the_forward_passes() -> None:
    inference = InferenceCost(detector_ms=19.5, recognizer_ms=10.8, faces_per_photo=1.5, decode_ms=6.1)
    assert inference.per_photo_ms == 19.5 + 10.8 * 1.5
    # Without the stages' counters: against the forward passes alone.
    over = PipelineRun("layout", Throughput(36.0, 52.0), [], {}, 0.0)
    line = outside_inference(over, inference)
    assert "35.7 ms a photo" in line and "52.0 - 35.7 = **16.3 ms**" in line and "(target 15: missed)" in line
    assert "decode takes 6.1" in line and "In the pipeline" not in line
    under = PipelineRun("layout", Throughput(40.0, 50.0), [], {}, 0.0)
    assert "(target 15: met)" in outside_inference(under, inference)


def test_work_outside_the_models_uses_the_forward_passes_as_they_ran_in_the_pipeline() -> None:
    inference = InferenceCost(detector_ms=19.5, recognizer_ms=10.8, faces_per_photo=1.5, decode_ms=6.1)
    inside = {"detector": 21.5, "recognizer": 17.0}  # 38.5 against 35.7 alone
    run = PipelineRun("layout", Throughput(36.0, 52.0), [], {}, 0.0, forward_per_photo=inside)  # type: ignore[arg-type]
    line = outside_inference(run, inference)
    assert "they took 38.5 ms a photo (the detector 21.5, the recognizer 17.0): +2.8 ms against alone" in line
    assert "52.0 - 38.5 = **13.5 ms** a photo (target 15: met), 16.3 against the forward passes alone" in line
    slower = PipelineRun("layout", Throughput(36.0, 56.0), [], {}, 0.0, forward_per_photo=inside)  # type: ignore[arg-type]
    assert "56.0 - 38.5 = **17.5 ms** a photo (target 15: missed)" in outside_inference(slower, inference)


def test_forward_totals_read_a_registry_and_scraped_text_alike() -> None:
    registry = CollectorRegistry()
    seconds = Counter("fecapass_model_forward_cpu_seconds_total", "", ["model"], registry=registry)
    seconds.labels("detector").inc(1.5)
    seconds.labels("detector").inc(0.25)
    Counter("fecapass_model_forward_passes_total", "", ["model"], registry=registry).labels("detector").inc(9)
    assert forward_totals(registry.collect()) == {"detector": 1.75, "recognizer": 0.0}
    text = (
        'fecapass_model_forward_cpu_seconds_total{model="recognizer"} 2.5\n'
        'fecapass_model_forward_passes_total{model="recognizer"} 40\n'
        "process_cpu_seconds_total 9.0\n"
    )
    assert forward_totals(text_string_to_metric_families(text)) == {"detector": 0.0, "recognizer": 2.5}


def test_best_batch_per_thread_setting_against_the_stage_default() -> None:
    rows = [("1", 1, 41.0), ("1", 8, 37.0), ("default", 1, 58.0), ("default", 8, 70.0)]
    line = best_batches(rows, configured=8)
    assert "Fastest: 1 thread, batch 1 (41 faces/s); default threads, batch 8 (70 faces/s)." in line
    assert "default (8) runs at 0.90 of the best with 1 thread; 1.00 of the best with default threads." in line


def search_run(
    size: int, m: int, *rows: Measurement, warmed: bool = True, shared_buffers: str | None = "4GB"
) -> SearchRun:
    return SearchRun(
        size=size,
        storages=tuple(dict.fromkeys(r.storage for r in rows)),
        m_values=(m,),
        ef_construction=128,
        finished_at=datetime(2026, 11, 26, 15, 19, tzinfo=UTC),
        machine="AMD EPYC, 2 cores, 24 GiB",
        embeddings=GeneratedEmbeddings(
            pack="buffalo_sc_lite",
            dim=512,
            fitted_to="../shared/faces/lfw_gray",
            real_embeddings=1492,
            people=809,
            real_same=0.587,
            generated_same=0.585,
            real_different=0.032,
            generated_different=0.022,
            photos_per_person=5,
        ),
        queries=200,
        limit=10,
        candidates_per_result=4,
        threshold=0.27,
        shared_buffers=shared_buffers,
        maintenance_work_mem=shared_buffers,
        warmed=warmed,
        load_seconds=18.0,
        exact_scan_ms=1521.0,
        own_share=0.13,
        run_seconds=5814.0,
        measurements=rows,
    )


PIPELINE = merged(HEADER, HEADER, "pipeline", "pipeline figures")
COLD_MILLION = search_run(1_000_000, 16, row(16, 100, 0.276, 9.4), warmed=False)
WARM_MILLION = search_run(1_000_000, 32, row(32, 800, 0.844, 363.6))
SMALL = search_run(100_000, 16, row(16, 40, 1.0, 1.0, "vector"), shared_buffers=None)


def test_sections_and_target_are_rendered_from_the_measurements() -> None:
    results = SearchResults(runs=(COLD_MILLION, SMALL, WARM_MILLION))
    report = rendered(PIPELINE, results)
    assert report.startswith(PIPELINE.rstrip("\n"))  # the other sections are kept as they were
    assert rendered(report, results) == report  # rendered in place, not added again
    small = report.split("<!-- section:search-100000-vector-m16-efc128 -->", 1)[1].split("<!-- /section", 1)[0]
    assert "## Search at scale: 100,000 embeddings, vector, m 16, ef_construction 128" in small
    assert "| vector | 16 | 128 | 100 | 10 | 40 | 1.000 | 1.000 | 1.000 | 0.5 | 1.0 | 1 |" in small
    assert "Loaded (512-d) in 18 s. Exact scan (no index, parallel workers): 1521 ms a query." in small
    assert "13 % are photos of the query's" in small and "Whole run for this size: 5814 s." in small
    assert "on 2026-11-26 15:19 UTC; machine: AMD EPYC, 2 cores, 24 GiB." in small
    assert "PostgreSQL:" not in small  # not recorded for that run: not invented
    assert "run once untimed" in small
    million = report.split("<!-- section:search-1000000-halfvec-m16-efc128 -->", 1)[1].split("<!-- /section", 1)[0]
    assert "PostgreSQL: shared_buffers 4GB; index built with maintenance_work_mem 4GB." in million
    assert "run once untimed" not in million
    target = report.split("<!-- section:search-target -->", 1)[1]
    assert "(`search-1000000-halfvec-m16-efc128`, `search-1000000-halfvec-m32-efc128`)" in target
    assert "best match recall is 0.276 (halfvec, m 16, ef_search 100" in target  # the 100k row does not count
    assert "highest match recall measured is 0.844 (halfvec, m 32, ef_search 800" in target
    assert "87 % of those are strangers" in target
    assert "Timed without an untimed pass first: `search-1000000-halfvec-m16-efc128`." in target


def test_no_run_at_the_target_size_no_target_summary() -> None:
    report = rendered(PIPELINE, SearchResults(runs=(SMALL,)))
    assert "search-100000-vector-m16-efc128" in report and "search-target" not in report


def test_a_rerun_of_a_configuration_replaces_its_run_and_keeps_the_others() -> None:
    results = SearchResults().with_run(COLD_MILLION).with_run(SMALL)
    rerun = search_run(1_000_000, 16, row(16, 100, 0.5, 30.0))
    replaced = results.with_run(rerun)
    assert replaced.runs == (rerun, SMALL)
    assert results.with_run(WARM_MILLION).runs == (COLD_MILLION, SMALL, WARM_MILLION)


def test_the_report_is_rewritten_from_the_file_beside_it_not_from_its_own_text(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    assert results_path(report) == tmp_path / "BENCHMARKS-search.json"
    save_results(results_path(report), SearchResults(runs=(WARM_MILLION,)))
    assert load_results(results_path(report)) == SearchResults(runs=(WARM_MILLION,))
    assert load_results(tmp_path / "missing.json") == SearchResults()
    # A report whose section says something else: the measurements win.
    stale = merged(
        PIPELINE, HEADER, WARM_MILLION.section, "| halfvec | 32 | 128 | 1 | 1 | 800 | 0.1 | 0.1 | 0.1 | 1 | 2 | 3 |"
    )
    report.write_text(stale)
    assert rewrite_report(report) == report
    text = report.read_text()
    assert "pipeline figures" in text and "| 0.1 |" not in text
    assert "| halfvec | 32 | 128 | 100 | 10 | 800 | 1.000 | 0.844 | 1.000 | 181.8 | 363.6 | 1 |" in text
    assert "highest match recall measured is 0.844" in text


def test_benchmarks_md_search_sections_are_those_of_its_measurements_file() -> None:
    """The committed report and its JSON agree: a figure edited in one and not the other fails here."""
    report = (ROOT / "BENCHMARKS.md").read_text()
    results = load_results(results_path(ROOT / "BENCHMARKS.md"))
    assert results.runs, "BENCHMARKS-search.json is missing or empty"
    assert rendered(report, results) == report
    for run in results.runs:
        assert f"<!-- section:{run.section} -->" in report


def test_the_enroll_rate_is_weighed_against_the_pipelines_own_enroll_rate() -> None:
    runs = [
        PipelineRun("1 process per stage", Throughput(10.0, 190.0), [], {}, enroll_photos_per_second=9.5),
        PipelineRun(
            "2 processes per stage",
            Throughput(12.0, 170.0),
            [],
            {},
            enroll_photos_per_second=10.0,
            plain_enroll_photos_per_second=10.5,
        ),
        PipelineRun(
            "2 detect and embed, 1 of the rest",
            Throughput(12.5, 165.0),
            [],
            {},
            enroll_photos_per_second=8.0,
            plain_enroll_photos_per_second=10.0,
            enroll_cpu_per_photo={"load generator (this process)": 3.25},
        ),
    ]
    report = Report()
    report_enroll(report, runs, 3)
    # No plain enrolls measured: no verdict. The search rate is shown beside, never the verdict.
    assert "| 1 process per stage | - | 9.5 | - | - | 10.0 | 0.95 |" in report.lines
    assert "| 2 processes per stage | 10.5 | 10.0 | **0.95** | met | 12.0 | 0.83 |" in report.lines
    assert "| 2 detect and embed, 1 of the rest | 10.0 | 8.0 | **0.80** | missed | 12.5 | 0.64 |" in report.lines
    assert (
        "Missed at 2 detect and embed, 1 of the rest (0.80): its own CPU (the Python client and the people's lookups"
        " and creates) 3.2 ms a photo, on the cores the pipeline uses." in report.lines
    )
    assert sum(line.startswith("Missed") for line in report.lines) == 1


def test_the_enroll_is_set_against_a_search_process_by_process() -> None:
    search = {"api": 6.0, "detect-1": 16.0, "detect-2": 17.0, "index-1": 2.0, "load generator (this process)": 2.0}
    enroll = {"api": 14.0, "detect-1": 17.0, "detect-2": 16.2, "index-1": 4.0, "load generator (this process)": 5.0}
    runs = [
        PipelineRun(
            "2 processes per stage",
            Throughput(10.0, 43.0),
            [],
            search,
            enroll_photos_per_second=8.0,
            plain_enroll_photos_per_second=8.5,
            enroll_cpu_per_photo=enroll,
        )
    ]
    report = Report()
    report_enroll(report, runs, 3)
    assert report.lines[-1] == (
        "Enroll against search (2 processes per stage): an enroll costs 56 CPU ms a photo (all processes, the"
        " command's own included) against a search's 43; by process, enroll minus search: api +8.0, load generator"
        " (this process) +3.0, index +2.0 ms."
    )

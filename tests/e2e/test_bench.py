"""A seconds-long smoke run of `fecapass bench`, so the benchmark never rots (its figures are not asserted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from operations.bench import LAYOUTS
from operations.search_report import load_results, rendered, results_path
from tests.shared_data import BASIC, LFW, MODEL_ROOT, PACK, require_basic, require_pack

pytestmark = pytest.mark.e2e


# One layout keeps the smoke run short: the layouts share every line of code but their process counts.
SMOKE_LAYOUT = "one"


def test_bench_smoke_writes_every_section(tmp_path: Path) -> None:
    require_pack()
    require_basic()
    output = tmp_path / "BENCHMARKS.md"
    env = {
        **os.environ,
        "FECAPASS_MODEL_PACK": PACK,
        "FECAPASS_MODEL_ROOT": str(MODEL_ROOT),
        "FECAPASS_LOG_JSON": "true",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "operations.cli",
            "bench",
            "--photos-dir",
            str(BASIC),
            "--photos",
            "12",
            "--searches",
            "3",
            "--uploads",
            "40",
            "--rounds",
            "1",
            "--embed-seconds",
            "0.2",
            "--layouts",
            SMOKE_LAYOUT,
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    headings = ("Pipeline efficiency", "Where the CPU goes", "End-to-end search latency", "Ingest", "Embedding")
    for heading in (*headings, "Resident memory"):
        assert f"### {heading}" in text
    assert "/ the loop beside it" in text and "Machine:" in text
    assert "The two models' forward passes alone" in text and "Everything else the pipeline" in text
    # The layout asked for ran, alone, and spent CPU against loop rounds of its own; the CPU table splits it by
    # process, stages summed.
    efficiency = table_rows(text, "Pipeline efficiency")
    layout = LAYOUTS[SMOKE_LAYOUT].title
    assert [name for name in efficiency if name.startswith("pipeline, ")] == [f"pipeline, {layout}"]
    rate, cpu_ms, loop, ratio = efficiency[f"pipeline, {layout}"]
    assert float(rate) > 0 and float(cpu_ms) > 0
    assert quotient_of_printed(ratio, rate, loop.split()[0]), efficiency
    # Enrolls ran by plain HTTP uploads and through the command.
    enrolls = table_rows(text, "Bulk enroll")
    plain, command, ratio = enrolls[layout][:3]
    assert float(plain) > 0 and float(command) > 0, enrolls
    assert quotient_of_printed(ratio.strip("*"), command, plain), enrolls
    cpu = table_rows(text, "Where the CPU goes")
    # Process CPU comes in clock ticks (10 ms): over 12 photos the lightest stage (index, ~1 ms a photo) can read 0.
    for process in ("api", "detect", "align", "embed", "valkey"):
        assert [float(cell) > 0 for cell in cpu[process]] == [True], (process, cpu[process])
    assert [float(cell) >= 0 for cell in cpu["index"]] == [True], cpu["index"]
    # Of those, the forward passes, from the stages' own counters. A counter moves when a pass ends and process CPU
    # in clock ticks: over the 12 photos of this run either side of the window can be off by a pass a process, so
    # only that they were counted is asserted (the tests of the packs check the counts themselves).
    for process, model in (("detect", "detector"), ("embed", "recognizer")):
        forward = [float(cell) for cell in cpu[f"{process}: of it, the {model}'s forward passes"]]
        assert len(forward) == 1 and forward[0] > 0, (process, forward)
    assert "In the pipeline (" in text and "against the forward passes alone" in text
    # A search's photo and crops are Redis blobs (common/transient.py): the S3 server is measured, and idle.
    assert all(float(cell) >= 0 for cell in cpu["s3"]), cpu["s3"]
    # A search's time: every stage, and the time outside them (upload, waits between stages, answer).
    latency = table_rows(text, "End-to-end search latency")
    for row in ("detect", "align", "embed", "index", "upload (sent to event written)", "answer (job done to response)"):
        assert float(latency[row][0]) > 0, (row, latency)
    assert float(latency["waits between stages (4)"][0]) >= 0
    # PostgreSQL is listed too; on a dozen photos its share can round to 0.0 ms.
    assert [float(cell) >= 0 for cell in cpu["postgres"]] == [True], cpu["postgres"]


def quotient_of_printed(quotient: str, numerator: str, denominator: str) -> bool:
    """Whether ``quotient`` is ``numerator / denominator`` as printed: each cell is rounded to the decimals it shows,
    so the quotient of the unrounded figures lies between the quotients of the cells' rounding bounds (7.3 / 5.1 can
    print as 1.45 when it was 7.34 / 5.06)."""

    def bounds(cell: str) -> tuple[float, float]:
        half = 0.5 * 10.0 ** -len(cell.partition(".")[2])
        return float(cell) - half, float(cell) + half

    low_q, high_q = bounds(quotient)
    low_n, high_n = bounds(numerator)
    low_d, high_d = bounds(denominator)
    return low_n / high_d <= high_q and low_q <= high_n / low_d


def table_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The first column -> the other cells, of the table under ``### heading``."""
    section = report.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


@pytest.fixture(scope="module")
def fitted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the smoke runs' reports: the embeddings of the LFW photos they fit to are cached beside them
    (.fecapass-bench), so the photos are embedded once, not once per run."""
    return tmp_path_factory.mktemp("bench-search")


def test_search_bench_smoke_adds_its_section_and_keeps_the_others(fitted_dir: Path) -> None:
    require_pack()
    if not (LFW / "identities.csv").is_file():
        pytest.skip(f"LFW photos not found at {LFW}")
    output = fitted_dir / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\n<!-- section:pipeline -->\npipeline figures\n<!-- /section:pipeline -->\n")
    env = {**os.environ, "FECAPASS_MODEL_PACK": "mbf128_lite", "FECAPASS_MODEL_ROOT": str(MODEL_ROOT)}
    args = ["bench-search", "--pairs", str(LFW), "--fit-photos", "150", "--sizes", "1500", "1000", "--queries", "20"]
    args += [
        "--shared-buffers",
        "128MB",
        "--m",
        "8",
        "--ef-construction",
        "32",
        "--ef-search",
        "40",
        "--output",
        str(output),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "operations.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    assert "pipeline figures" in text and "(128-d)" in text
    assert "## Search at scale: 1,500 embeddings, vector and halfvec, m 8, ef_construction 32" in text
    assert "## Search at scale: 1,000 embeddings, vector and halfvec, m 8" in text
    rows = [line for line in text.splitlines() if line.startswith(("| vector |", "| halfvec |"))]
    assert len(rows) == 4  # one size's section does not replace the other's
    for row in rows:  # a real measurement: recall is a share, latency positive
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert 0.0 <= float(cells[6]) <= 1.0 and 0.0 <= float(cells[7]) <= 1.0 and float(cells[9]) > 0
    # The figures are kept as data beside the report, one run per size, and the report is rendered from them.
    results = load_results(results_path(output))
    assert [run.size for run in results.runs] == [1500, 1000]
    assert all(len(run.measurements) == 2 and run.warmed for run in results.runs)
    assert rendered(text, results) == text


def test_search_bench_smoke_of_ivfflat_enrolls_and_the_api_search(fitted_dir: Path) -> None:
    """One tiny size through every new measurement: IVFFlat, the binary index, enrolls through the index stage and
    searches through the real API and stages, with the generated gallery in both databases."""
    require_pack()
    require_basic()
    if not (LFW / "identities.csv").is_file():
        pytest.skip(f"LFW photos not found at {LFW}")
    output = fitted_dir / "WRITES.md"
    env = {**os.environ, "FECAPASS_MODEL_PACK": "mbf128_lite", "FECAPASS_MODEL_ROOT": str(MODEL_ROOT)}
    args = ["bench-search", "--pairs", str(LFW), "--fit-photos", "150", "--sizes", "1000", "--queries", "10"]
    args += ["--shared-buffers", "128MB", "--index", "ivfflat", "binary", "--binary-candidates", "200"]
    args += ["--ivfflat-probes", "2", "32", "--enrolls", "6", "--api-searches", "2", "--photos-dir", str(BASIC)]
    result = subprocess.run(
        [sys.executable, "-m", "operations.cli", *args, "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run] = load_results(results_path(output)).runs
    assert run.section == "search-1000-binary-c200-ivfflat-l32"
    assert [row.probes for row in run.ivfflat] == [2, 32]
    assert run.ivfflat[1].person_recall == 1.0  # every cell probed: exact
    assert [row.index for row in run.enroll] == ["binary (no HNSW index)"] and run.enroll[0].enrolls == 6
    assert run.end_to_end is not None and run.end_to_end.searches == 2
    assert set(run.end_to_end.stage_p50_ms) >= {"detect", "align", "embed", "index"}
    assert all(value > 0 for name, value in run.end_to_end.stage_p50_ms.items() if name in ("detect", "index"))
    text = output.read_text()
    assert "**Enroll latency**" in text and "**End to end**" in text and "| lists | build s |" in text


def test_search_bench_stopped_by_sigterm_stops_its_postgres(tmp_path: Path) -> None:
    """The million-embedding run takes hours: an operator who stops it must not be left with its server."""
    require_pack()
    if not (LFW / "identities.csv").is_file():
        pytest.skip(f"LFW photos not found at {LFW}")
    scratch = tmp_path / "tmp"  # the benchmark's PostgreSQL lives in a temporary folder: make it findable
    scratch.mkdir()
    env = {**os.environ, "FECAPASS_MODEL_PACK": "mbf128_lite", "FECAPASS_MODEL_ROOT": str(MODEL_ROOT)}
    env["TMPDIR"] = str(scratch)
    args = ["bench-search", "--pairs", str(LFW), "--fit-photos", "60", "--sizes", "400000", "--queries", "20"]
    args += ["--shared-buffers", "128MB", "--storage", "halfvec", "--output", str(tmp_path / "BENCHMARKS.md")]
    bench = subprocess.Popen(
        [sys.executable, "-m", "operations.cli", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not servers_under(scratch):
            assert bench.poll() is None, bench.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the benchmark's PostgreSQL never started"
            time.sleep(0.2)
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    left_running = servers_under(scratch)
    for server in left_running:
        server.kill()  # not to leave it behind when the test fails
    assert not left_running
    assert bench.returncode == 130, stderr[-3000:]
    assert "fecapass: interrupted" in stderr


def servers_under(folder: Path) -> list[psutil.Process]:
    """PostgreSQL servers with their data in ``folder`` (not initdb, which starts first and ends by itself)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(folder) in part for part in cmdline):
            found.append(process)
    return found

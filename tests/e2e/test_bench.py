"""A seconds-long smoke run of `fecapass bench`, so the benchmark never rots (its figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import BASIC, MODEL_ROOT, PACK, require_basic, require_pack

pytestmark = pytest.mark.e2e


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
            "common.cli",
            "bench",
            "--photos-dir",
            str(BASIC),
            "--photos",
            "12",
            "--searches",
            "3",
            "--uploads",
            "40",
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
    for heading in ("Pipeline efficiency", "End-to-end search latency", "Ingest", "Embedding", "Resident memory"):
        assert f"## {heading}" in text
    assert "Pipeline / best baseline" in text and "Machine:" in text

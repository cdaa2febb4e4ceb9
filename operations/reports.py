"""Markdown reports written by commands (CALIBRATION.md, BENCHMARKS.md), one marked section per run, so a run
replaces its own section and keeps the others."""

from __future__ import annotations


def marked(name: str, body: str) -> str:
    return f"<!-- section:{name} -->\n{body.strip()}\n<!-- /section:{name} -->"


def merged(existing: str, header: str, name: str, body: str) -> str:
    """``existing`` with the section ``name`` replaced by ``body`` (or added at the end), under ``header``."""
    section = marked(name, body)
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    text = existing if existing.startswith(header) else header
    if start in text and end in text:
        return text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + section + "\n"


# The heading of BENCHMARKS.md, written by `fecapass bench` and `fecapass bench-search` alike.
BENCHMARKS_HEADER = "# Benchmarks\n"

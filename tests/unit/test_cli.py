"""The ``fecapass`` command table: every command parses to its own handler, and ``main`` runs that handler."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from operations import cli, models_cli

# Every command the README and the deployment docs name; a new one is added here and gets a handler.
COMMANDS = {
    "up",
    "api",
    "worker",
    "migrate",
    "streams",
    "healthcheck",
    "keys create",
    "keys list",
    "keys revoke",
    "dlq list",
    "dlq show",
    "dlq replay",
    "dlq purge",
    "clusters settle",
    "models list",
    "models pull",
    "models check",
    "models status",
    "models activate",
    "models build-index",
    "models drop-index",
    "reindex",
    "bench",
    "bench-search",
    "calibrate",
    "enroll",
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command that runs something (``keys create``, not ``keys``), with its parser."""
    children = subcommands(parser)
    if not children:
        yield path, parser
    for name, child in children.items():
        yield from leaves(child, (*path, name))


def required_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the arguments a command cannot do without, as a user would type them."""
    argv: list[str] = []
    for action in parser._actions:
        if not (action.required or not action.option_strings) or isinstance(action, argparse._HelpAction):
            continue
        if action.nargs == "?":
            continue
        value = str(next(iter(action.choices))) if action.choices else "7" if action.type is int else "x"
        argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


def test_every_command_is_in_the_table_with_its_own_handler() -> None:
    root = cli.parser()
    found = dict(leaves(root))
    assert {" ".join(path) for path in found} == COMMANDS
    handlers = {}
    for path, leaf in found.items():
        args = root.parse_args([*path, *required_arguments(leaf)])
        handler = getattr(args, "handler", None)
        assert callable(handler), f"`fecapass {' '.join(path)}` parses without a handler"
        assert handler is leaf.get_default("handler")
        assert handler.__module__ in (cli.__name__, models_cli.__name__)
        handlers[path] = handler
    # One small function per command: no handler serves two and branches on the command's name.
    assert len(set(handlers.values())) == len(handlers)


@pytest.mark.parametrize(
    ("argv", "handler", "parsed"),
    [
        (["worker", "embed"], cli._worker, {"stage": "embed"}),
        (["healthcheck"], cli._healthcheck, {}),
        (["keys", "revoke", "12"], cli._key_revoke, {"id": 12}),
        (["dlq", "list"], cli._dlq_list, {"count": 20, "stage": None}),
        (["dlq", "purge", "--stage", "align", "--id", "1-0"], cli._dlq_purge, {"stage": "align", "id": "1-0"}),
        (["models", "activate", "buffalo_l"], models_cli._activate, {"name": "buffalo_l", "allow_missing": False}),
        (["reindex", "--pack", "dlib"], models_cli._reindex, {"pack": "dlib", "window": 64, "max_faces": None}),
        (["up"], cli._up, {"data_dir": Path(".fecapass"), "api_port": 8000, "workers": 1, "metrics_port": 9101}),
        (
            ["enroll", "photos"],
            cli._enroll,
            {"dir": Path("photos"), "manifest": None, "api": "http://127.0.0.1:8000", "window": 16, "timeout": 120.0},
        ),
        (["bench", "--layouts", "one", "models"], cli._bench, {"layouts": ["one", "models"], "rounds": 3}),
        (
            ["bench-search", "--summary-only"],
            cli._bench_search,
            {"sizes": [100_000, 1_000_000], "m": [16, 32], "ef_search": [40, 100, 200, 400, 800], "summary_only": True},
        ),
    ],
)
def test_arguments_and_defaults_reach_the_handler(
    argv: list[str], handler: cli.Handler, parsed: dict[str, object]
) -> None:
    args = cli.parser().parse_args(argv)
    assert args.handler is handler
    assert {name: getattr(args, name) for name in parsed} == parsed


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(["--help"])
    assert exit.value.code == 0
    listed = capsys.readouterr().out
    for name in {path.split()[0] for path in COMMANDS}:
        assert f"    {name} " in listed or f"    {name}\n" in listed, name
    for group in ("keys", "dlq", "models"):
        with pytest.raises(SystemExit):
            cli.parser().parse_args([group, "--help"])
        actions = capsys.readouterr().out
        for path in COMMANDS:
            if path.startswith(f"{group} "):
                assert f"    {path.split()[1]} " in actions, path


@pytest.mark.parametrize("argv", [["nonsense"], [], ["keys"], ["keys", "rotate"], ["worker", "nonsense"]])
def test_an_unknown_or_missing_command_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert "usage: fecapass" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_main_runs_the_handler_healthcheck_fails_on_a_closed_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    url = f"http://127.0.0.1:{free_port()}/health/live"
    monkeypatch.setenv("FECAPASS_HEALTHCHECK_URL", url)
    with pytest.raises(SystemExit) as exit:
        cli.main(["healthcheck"])
    assert str(exit.value.code).startswith(f"unhealthy: {url}: ")


def test_dead_letter_id_needs_a_stage_before_anything_is_touched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FECAPASS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    for action in ("replay", "purge"):
        with pytest.raises(SystemExit) as exit:
            cli.main(["dlq", action, "--id", "1-0"])
        assert exit.value.code == "--id needs --stage"


def test_bench_refuses_a_layout_it_does_not_know_before_it_starts_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from operations import bench

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "run", started)
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--layouts", "one", "three"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "no layout named three" in error
    assert all(f"{name} ({layout.title})" in error for name, layout in bench.LAYOUTS.items())


def test_missing_settings_exit_2_with_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FECAPASS_MAIN_DB_DSN", raising=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["migrate"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("fecapass: ") and "FECAPASS_MAIN_DB_DSN" in error


def test_the_command_table_loads_no_stage_server_or_benchmark() -> None:
    """`fecapass worker detect` builds the whole parser: that must not import another stage, the API or a model."""
    probe = "import sys; from operations import cli; cli.parser(); print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    )
    heavy = {"detector", "embedder", "indexer", "ingest_api", "webhook_sender", "uvicorn", "fastapi", "onnxruntime"}
    heavy |= {"operations.bench", "operations.bench_search", "operations.local", "operations.worker", "psycopg"}
    assert loaded & heavy == set()
    assert "operations.cli" in loaded  # the probe did import it

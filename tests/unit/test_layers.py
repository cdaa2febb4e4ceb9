"""The layers point one way: schemas <- common <- the stages and the API <- operations (README, Layout).

The contract lives in pyproject.toml ([tool.importlinter]); this runs it, so a back-edge fails the suite,
and checks that every package the distribution ships is under the contract."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_no_package_imports_a_layer_above_it() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", "pyproject.toml"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_every_shipped_package_is_in_a_layer() -> None:
    config = _pyproject()
    shipped = {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}  # type: ignore[index]
    linter = config["tool"]["importlinter"]  # type: ignore[index]
    (contract,) = linter["contracts"]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    assert shipped == set(linter["root_packages"]) == layered
    top_level = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert top_level == shipped, "a top-level package outside the distribution or the layers"

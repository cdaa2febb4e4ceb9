"""The layers point one way: schemas <- common <- the stages and the API <- operations (README, Layout).

The contract lives in pyproject.toml ([tool.importlinter]); this runs it, so a back-edge fails the suite,
and checks that every package the distribution ships is under the contract. The Python client (clients/python,
a distribution of its own) is outside the layers: it imports no server package, and only `operations` imports it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "fecapass_client"


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_no_package_imports_a_layer_above_it() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", "pyproject.toml"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]  # type: ignore[index]
    assert f"{len(contracts)} kept, 0 broken" in done.stdout


def test_every_shipped_package_is_in_a_layer() -> None:
    config = _pyproject()
    shipped = {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}  # type: ignore[index]
    linter = config["tool"]["importlinter"]  # type: ignore[index]
    (contract,) = [contract for contract in linter["contracts"] if contract["type"] == "layers"]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    assert shipped == set(linter["root_packages"]) - {CLIENT} == layered
    top_level = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert top_level == shipped, "a top-level package outside the distribution or the layers"


def test_the_client_imports_no_server_package_and_only_operations_imports_it() -> None:
    config = _pyproject()
    shipped = {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}  # type: ignore[index]
    forbidden = {
        (frozenset(contract["source_modules"]), frozenset(contract["forbidden_modules"]))
        for contract in config["tool"]["importlinter"]["contracts"]  # type: ignore[index]
        if contract["type"] == "forbidden"
    }
    assert (frozenset({CLIENT}), frozenset(shipped)) in forbidden
    assert (frozenset(shipped - {"operations"}), frozenset({CLIENT})) in forbidden

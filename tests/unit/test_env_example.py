"""`.env.example` documents exactly the settings the code reads, each with a comment."""

from __future__ import annotations

import re
from pathlib import Path

from common.settings import ALL_SETTINGS, ENV_PREFIX

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"


def documented() -> dict[str, str]:
    """Variable -> the comment line right above it."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    found = {}
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            above = lines[index - 1] if index else ""
            found[line.split("=", 1)[0]] = above
    return found


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    expected = {ENV_PREFIX + name.upper() for cls in ALL_SETTINGS for name in cls.model_fields}
    assert {name for name in documented() if name.startswith(ENV_PREFIX)} == expected


def test_every_compose_variable_is_documented() -> None:
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    documented_names = set(documented())
    assert used <= documented_names, used - documented_names
    extra = {name for name in documented_names if not name.startswith(ENV_PREFIX)}
    assert extra <= used, f"documented but unused by compose.yaml: {extra - used}"


def test_every_variable_has_a_comment() -> None:
    for variable, comment in documented().items():
        assert comment.startswith("# ") and len(comment) > 10, variable


def test_secrets_have_no_value_and_defaults_match_the_code() -> None:
    values = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith(ENV_PREFIX))
    for cls in ALL_SETTINGS:
        for name, field in cls.model_fields.items():
            variable = ENV_PREFIX + name.upper()
            if field.is_required():
                assert values[variable] == "", f"{variable} is a secret: no value in .env.example"
            elif isinstance(field.default, bool):
                assert values[variable] == str(field.default).lower(), variable
            elif isinstance(field.default, str):
                assert values[variable] == field.default, variable
            elif isinstance(field.default, int | float):
                assert float(values[variable]) == float(field.default), variable


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") :]
    missing = {
        ENV_PREFIX + name.upper()
        for cls in ALL_SETTINGS
        for name in cls.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in table
    }
    assert not missing

"""``fecapass enroll``'s input: the folder rule, the manifest, and the keys that let a second run find the first's
work. No server and no model: plain files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from operations.enroll_plan import (
    Person,
    PlanError,
    create_idempotency_key,
    enroll_idempotency_key,
    face_external_id,
    from_folders,
    from_manifest,
    person_from_folder,
    synthetic_email,
)
from schemas.api import UserCreate


def touch(path: Path, content: bytes = b"photo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_folder_named_by_email_is_that_person_and_any_other_name_is_an_external_id(tmp_path: Path) -> None:
    touch(tmp_path / "ada@example.com" / "b.jpg")
    touch(tmp_path / "ada@example.com" / "a.PNG")
    touch(tmp_path / "alex_lacamoire" / "2019" / "x.jpeg")  # photos below a person's folder are theirs too
    touch(tmp_path / "alex_lacamoire" / "notes.txt")  # not a photo
    touch(tmp_path / "alex_lacamoire" / ".hidden.jpg")
    touch(tmp_path / ".thumbnails" / "t.jpg")  # a hidden folder is nobody
    photos = from_folders(tmp_path)
    assert [(p.path.relative_to(tmp_path).as_posix(), p.person) for p in photos] == [
        ("ada@example.com/a.PNG", Person("ada@example.com", None, "")),
        ("ada@example.com/b.jpg", Person("ada@example.com", None, "")),
        ("alex_lacamoire/2019/x.jpeg", Person(None, "alex_lacamoire", "alex lacamoire")),
    ]


def test_photos_directly_in_the_folder_belong_to_nobody_and_are_refused(tmp_path: Path) -> None:
    touch(tmp_path / "ada@example.com" / "a.jpg")
    touch(tmp_path / "stray.jpg")
    with pytest.raises(PlanError, match=r"belong to nobody \(stray\.jpg\)"):
        from_folders(tmp_path)
    with pytest.raises(PlanError, match="is not a folder"):
        from_folders(tmp_path / "missing")


def test_the_person_of_a_folder() -> None:
    assert person_from_folder("Bob.Smith@Example.com") == Person("Bob.Smith@Example.com", None, "")
    assert person_from_folder("E-1234") == Person(None, "E-1234", "E-1234")
    assert Person("Bob@Example.com", None).key == Person("bob@example.com", None).key
    assert Person("bob@example.com", "E1").key == "external_id:E1"  # looked up by external id where given


def test_a_manifest_names_files_relative_to_the_folder_and_their_people(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "sub" / "b.png")
    outside = touch(tmp_path.parent / f"{tmp_path.name}-elsewhere.jpg")
    manifest = tmp_path / "people.csv"
    manifest.write_text(
        "\ufefffile,email,external_id,name\n"  # a BOM, as spreadsheets write it
        "a.jpg,ada@example.com,,Ada Lovelace\n"
        f"{outside},ada@example.com,,Ada Lovelace\n"
        " sub/b.png , , E-7 , Grace Hopper \n"
    )
    photos = from_manifest(manifest, tmp_path)
    ada, grace = Person("ada@example.com", None, "Ada Lovelace"), Person(None, "E-7", "Grace Hopper")
    assert [(p.path, p.person) for p in photos] == [
        (tmp_path / "a.jpg", ada),
        (outside, ada),
        (tmp_path / "sub" / "b.png", grace),
    ]


def test_a_manifest_may_leave_out_the_email_or_the_external_id_column(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("file,external_id\na.jpg,E1\n")
    assert [p.person for p in from_manifest(tmp_path / "m.csv", tmp_path)] == [Person(None, "E1", "")]


def test_every_problem_of_a_manifest_is_reported_at_once_and_nothing_is_planned(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "notes.txt")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "file,email,external_id,name\n"
        ",ada@example.com,,\n"
        "a.jpg,,,\n"
        "missing.jpg,ada@example.com,,\n"
        "notes.txt,ada@example.com,,\n"
        "a.jpg,ada@example.com,,Ada\n"
        "a.jpg,ada@example.com,,Ada L.\n"
    )
    with pytest.raises(PlanError) as error:
        from_manifest(manifest, tmp_path)
    message = str(error.value)
    assert "line 2: no file" in message
    assert "line 3: a.jpg has neither email nor external_id" in message
    assert "line 4:" in message and "missing.jpg is not a photo file" in message
    assert "line 5:" in message and "notes.txt is not a photo file" in message
    assert "line 7: ada@example.com is named differently on line 6" in message


@pytest.mark.parametrize(
    "header", ["email,name\n", "file,name\n", ""], ids=["no file column", "no person column", "empty"]
)
def test_a_manifest_without_the_columns_is_refused(tmp_path: Path, header: str) -> None:
    (tmp_path / "m.csv").write_text(header)
    with pytest.raises(PlanError, match="the header must name the column file and email or external_id"):
        from_manifest(tmp_path / "m.csv", tmp_path)
    with pytest.raises(PlanError, match="cannot read the manifest"):
        from_manifest(tmp_path / "none.csv", tmp_path)


@pytest.mark.parametrize("external_id", ["E-1234", "e-1234", "Ünïcode id / with spaces", "@@@", "x" * 300])
def test_a_person_known_by_external_id_only_gets_an_address_the_api_accepts(external_id: str) -> None:
    email = synthetic_email(external_id)
    assert UserCreate(email=email).email == email  # the API's own validation
    assert Person(None, external_id).email_to_create() == email


def test_synthetic_addresses_of_ids_that_differ_only_in_case_or_dropped_characters_differ() -> None:
    emails = {synthetic_email(i) for i in ("E-1", "e-1", "E 1", "E_1")}
    assert len({e.lower() for e in emails}) == 4  # the API's uniqueness is on lower(email)


def test_keys_are_deterministic_and_change_with_each_part() -> None:
    digest = "ab" * 32
    key = enroll_idempotency_key("default", 7, digest)
    assert key == enroll_idempotency_key("default", 7, digest)
    others = {
        enroll_idempotency_key("site-b", 7, digest),
        enroll_idempotency_key("default", 8, digest),
        enroll_idempotency_key("default", 7, "cd" * 32),
    }
    assert key not in others and len(others) == 3
    # Within the API's Idempotency-Key limits: 1 to 255 printable ASCII characters.
    for value in (key, create_idempotency_key("default", Person("a@example.com", None))):
        assert 1 <= len(value) <= 255 and all(0x21 <= ord(c) <= 0x7E for c in value)
    assert create_idempotency_key("default", Person("A@example.com", None)) == create_idempotency_key(
        "default", Person("a@example.com", None)
    )
    assert face_external_id(digest) == face_external_id(digest) != face_external_id("cd" * 32)


def test_the_command_refuses_an_unusable_input_before_sending_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from operations import cli

    unreachable = ["--api", "http://127.0.0.1:9"]  # nothing listens: any request would fail the run otherwise
    monkeypatch.delenv("FECAPASS_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["enroll", str(tmp_path), *unreachable])
    assert exit.value.code == 2
    assert "an API key with write scope is needed" in capsys.readouterr().err
    monkeypatch.setenv("FECAPASS_API_KEY", "from-the-environment")
    touch(tmp_path / "stray.jpg")
    with pytest.raises(SystemExit) as exit:
        cli.main(["enroll", str(tmp_path), *unreachable])
    assert exit.value.code == 2
    assert "belong to nobody" in capsys.readouterr().err
    assert not (tmp_path / "failures.csv").exists()

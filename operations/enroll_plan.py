"""What ``fecapass enroll`` is asked to do: the photos and whose they are, read from a folder per person or a CSV
manifest, and the keys that make a second run find the work of the first. Nothing here talks to the API.

Folder rule: every folder directly inside DIR is one person. A folder name with an ``@`` is the person's email
(no full name is guessed from it); any other name is the person's external id, and the full name is the folder
name with underscores read as spaces (``alex_lacamoire`` -> external id ``alex_lacamoire``, name
``alex lacamoire``). Every photo in the folder and below it is that person's; photos directly in DIR belong to
nobody and are refused.

Manifest: a CSV with a header naming ``file`` (relative to DIR, or absolute), ``email`` and/or ``external_id``
(one of them per row at least) and optionally ``name``. Rows of one person name them the same way.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# The formats the API accepts (common/imaging.py SUPPORTED_FORMATS), by their usual file endings.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".mpo"})
MANIFEST_COLUMNS = ("file", "email", "external_id", "name")
# A person given by an external id only still needs an email (the API requires one): an address on the .test
# domain, reserved for testing (RFC 2606), that the API accepts and that no mail can ever reach.
SYNTHETIC_EMAIL_DOMAIN = "external-id.fecapass.test"


class PlanError(ValueError):
    """The input cannot be enrolled as given (a missing file, a manifest row without a person): nothing is sent."""


@dataclass(frozen=True)
class Person:
    email: str | None
    external_id: str | None
    full_name: str = ""

    @property
    def key(self) -> str:
        """How the person is known to this run and named in reports: the external id where there is one (it is
        what the person is looked up by), else the email."""
        return f"external_id:{self.external_id}" if self.external_id else f"email:{(self.email or '').lower()}"

    @property
    def label(self) -> str:
        return self.external_id or self.email or ""

    def email_to_create(self) -> str:
        return self.email or synthetic_email(self.external_id or "")


@dataclass(frozen=True)
class Photo:
    path: Path
    person: Person


def synthetic_email(external_id: str) -> str:
    """A valid, unique address for a person known by external id only: the id made safe for an address's local
    part, and a hash of the exact id (two ids that differ only in case or in dropped characters stay apart)."""
    safe = re.sub(r"[^a-z0-9]+", "-", external_id.lower()).strip("-")[:40] or "person"
    digest = hashlib.sha256(external_id.encode()).hexdigest()[:10]
    return f"{safe}.{digest}@{SYNTHETIC_EMAIL_DOMAIN}"


def person_from_folder(name: str) -> Person:
    if "@" in name:
        return Person(email=name, external_id=None)
    return Person(email=None, external_id=name, full_name=name.replace("_", " ").strip())


def _is_photo(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES and not path.name.startswith(".")


def from_folders(root: Path) -> list[Photo]:
    """A photo per file of each person's folder (sorted, so that runs and reports list them alike)."""
    if not root.is_dir():
        raise PlanError(f"{root} is not a folder")
    stray = sorted(p.name for p in root.iterdir() if _is_photo(p))
    if stray:
        shown = ", ".join(stray[:5]) + (" ..." if len(stray) > 5 else "")
        raise PlanError(
            f"{root} holds photos that belong to nobody ({shown}): put each person's photos in a folder named by"
            " their email or external id, or pass --manifest"
        )
    photos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        person = person_from_folder(folder.name)
        photos += [Photo(path, person) for path in sorted(folder.rglob("*")) if _is_photo(path)]
    return photos


def from_manifest(manifest: Path, root: Path) -> list[Photo]:
    """A photo per row; every row is checked before anything is sent, and every problem is reported at once."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PlanError(f"cannot read the manifest {manifest}: {exc}") from None
    if "file" not in header or not {"email", "external_id"} & set(header):
        raise PlanError(
            f"{manifest}: the header must name the column file and email or external_id (and optionally name);"
            f" it has {', '.join(header) or 'nothing'}"
        )
    problems: list[str] = []
    people: dict[str, tuple[Person, int]] = {}  # person key -> as first defined, and on which line
    photos = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        file, email, external_id = row.get("file", ""), row.get("email", ""), row.get("external_id", "")
        if not file:
            problems.append(f"line {line}: no file")
            continue
        if not email and not external_id:
            problems.append(f"line {line}: {file} has neither email nor external_id")
            continue
        path = Path(file) if Path(file).is_absolute() else root / file
        if not _is_photo(path):
            problems.append(f"line {line}: {path} is not a photo file ({', '.join(sorted(PHOTO_SUFFIXES))})")
            continue
        person = Person(email or None, external_id or None, row.get("name", ""))
        first = people.setdefault(person.key, (person, line))
        if first[0] != person:
            problems.append(f"line {line}: {person.label} is named differently on line {first[1]}")
            continue
        photos.append(Photo(path, person))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise PlanError(f"{manifest}:\n  " + "\n  ".join(shown))
    return photos


# -- keys that make runs find each other's work -------------------------------------------------------------


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def face_external_id(digest: str) -> str:
    """The enrolled face's external id: the photo's content hash. It is unique per collection, so a photo already
    enrolled there is refused (409 ``face_external_id_taken``) however long ago, on whichever machine."""
    return f"sha256-{digest[:40]}"


def _key(kind: str, *parts: str) -> str:
    return f"fecapass-enroll-{kind}-" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]


def enroll_idempotency_key(collection: str, user_id: int, digest: str) -> str:
    """The same photo for the same person in the same collection: the same key, so a re-run within the API's
    idempotency TTL gets the first run's job back (finished, or still running after an interruption) instead of
    a second job. The user id (not only the email) is in it: a person erased and created again is a new one."""
    return _key("face", collection, str(user_id), digest)


def create_idempotency_key(collection: str, person: Person) -> str:
    return _key("user", collection, person.key)

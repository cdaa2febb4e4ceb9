"""The console against the whole pipeline (models from ../shared): enroll two people through the file input,
recognize a photo of both, and see each name at its face."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

from tests.browser.conftest import NO_PLAYWRIGHT, json_of, sign_in
from tests.e2e.conftest import RunningPipeline
from tests.shared_data import BASIC, iou, labels

pytest.importorskip("playwright.sync_api", reason=NO_PLAYWRIGHT)
from playwright.sync_api import Page, expect

GROUP_PHOTO = "multi_two_people.jpg"
ENROLLED = {"obama": "obama_1.jpg", "biden": "biden_1.jpg"}
NAMES = {"obama": "Barack Obama", "biden": "Joe Biden"}  # the cluster's databases are new each session
FINISHED = re.compile(r"^(enrolled|no face|error)")


def no_face_photo(folder: Path) -> Path:
    path = folder / "landscape.png"
    pixels = np.random.default_rng(7).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def create_and_enroll(page: Page, base_url: str, full_name: str, email: str, photos: list[Path]) -> None:
    page.goto(f"{base_url}/ui/#/people")
    form = page.locator("#create-person")
    form.get_by_label("Full name").fill(full_name)
    form.get_by_label("Email").fill(email)
    form.get_by_role("button", name="Create").click()
    form.get_by_role("link", name=full_name).click()
    page.get_by_label("Photos to enroll").set_input_files([str(photo) for photo in photos])
    for photo in photos:
        expect(page.locator(f"#uploads li[data-file='{photo.name}'] .outcome")).to_have_text(FINISHED, timeout=90_000)


def test_enroll_recognize_and_erase(
    page: Page, recognition_cluster: RunningPipeline, tmp_path: Path, screenshots: Path
) -> None:
    base_url = recognition_cluster.base_url
    tag = uuid.uuid4().hex[:6]  # in the emails: the people of this run, whatever an earlier test left
    names = NAMES
    sign_in(page, base_url, recognition_cluster.keys["write"], "#/people")

    blank = no_face_photo(tmp_path)
    create_and_enroll(page, base_url, names["obama"], f"obama.{tag}@example.com", [BASIC / ENROLLED["obama"], blank])
    outcomes = page.locator("#uploads .outcome")
    expect(outcomes.nth(0)).to_contain_text("enrolled (face")
    expect(outcomes.nth(1)).to_have_text("no face")
    expect(page.locator("#faces figure")).to_have_count(1)
    for image in page.locator("#faces figure img").all():
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0, "a face's photo or crop did not load"
    page.screenshot(path=str(screenshots / "console-people.png"), full_page=True)
    create_and_enroll(page, base_url, names["biden"], f"biden.{tag}@example.com", [BASIC / ENROLLED["biden"]])
    expect(page.locator("#uploads .outcome")).to_contain_text("enrolled (face")
    with psycopg.connect(recognition_cluster.env["FECAPASS_MAIN_DB_DSN"]) as conn:
        enrolled = conn.execute(
            "SELECT u.full_name, count(f.id) FROM users u LEFT JOIN faces f ON f.user_id = u.id"
            " WHERE u.email LIKE %s GROUP BY u.full_name",
            (f"%.{tag}@example.com",),
        ).fetchall()
    assert sorted(enrolled) == sorted((name, 1) for name in names.values())

    searches: list[str] = []
    page.on("request", lambda request: searches.append(request.url) if "/v1/search" in request.url else None)
    page.get_by_role("link", name="Recognize").click()
    page.get_by_label("Photo to recognize").set_input_files(str(BASIC / GROUP_PHOTO))
    expect(page.locator("#raw-json")).to_be_attached(timeout=90_000)
    job = json_of(page, "#raw-json")
    assert job["state"] == "done"
    faces = job["result"]["faces"]
    expect(page.locator("#stage-times")).to_contain_text("detect")
    photo = page.locator("#result .photo img")
    expect(photo).to_have_js_property("complete", True)
    shown = photo.bounding_box()
    natural_width = photo.evaluate("img => img.naturalWidth")
    assert shown is not None
    scale = shown["width"] / natural_width
    for label in (row for row in labels() if row.file == GROUP_PHOTO):
        assert label.box is not None
        index = max(range(len(faces)), key=lambda i: iou(faces[i]["box"], label.box))
        assert iou(faces[index]["box"], label.box) > 0.5, f"no face found at {label.identity}'s box"
        box = page.locator(f"#result .box[data-face-index='{index}']")
        expect(box.locator(".tag")).to_contain_text(names[label.identity])
        drawn = box.bounding_box()
        assert drawn is not None
        x1, y1 = faces[index]["box"][:2]
        assert abs(drawn["x"] - (shown["x"] + x1 * scale)) < 4 and abs(drawn["y"] - (shown["y"] + y1 * scale)) < 4
    page.screenshot(path=str(screenshots / "console-recognize.png"), full_page=True)

    # The slider filters the answer already received: at 1.0 nobody matches, and nothing is uploaded again.
    page.get_by_label("Similarity threshold").fill("1")
    expect(page.locator("#result .box.unknown")).to_have_count(len(faces))
    page.get_by_label("Similarity threshold").fill("-1")
    expect(page.locator("#result .box.unknown")).to_have_count(0)
    assert len(searches) == 1

    # Erase Biden: gone from the list, and his face is unknown in the next recognition.
    page.get_by_role("link", name="People").click()
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=names["biden"]).click()
    page.get_by_role("button", name="Erase person").click()
    expect(page.locator("dialog#confirm")).to_contain_text("their 1 enrolled face(s)")
    page.locator("dialog#confirm").get_by_role("button", name="Erase person").click()
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people")).not_to_contain_text(names["biden"])
    page.get_by_role("link", name="Recognize").click()
    page.get_by_label("Photo to recognize").set_input_files(str(BASIC / GROUP_PHOTO))
    expect(page.locator("#result .box")).to_have_count(len(faces), timeout=90_000)
    expect(page.locator("#result")).not_to_contain_text(names["biden"])
    expect(page.locator("#result")).to_contain_text(names["obama"])

    page.get_by_label("Detect only").check()
    page.get_by_label("Photo to detect faces in").set_input_files(str(BASIC / GROUP_PHOTO))
    expect(page.locator("#result .box")).to_have_count(len(faces), timeout=90_000)
    expect(page.locator("#result .box").first).to_contain_text("score")
    page.get_by_label("Verify two photos").check()
    page.get_by_label("First photo").set_input_files(str(BASIC / "obama_2.jpg"))
    page.get_by_label("Second photo").set_input_files(str(BASIC / "obama_3.jpg"))
    expect(page.locator("#verdict")).to_contain_text("the same person", timeout=90_000)
    page.get_by_label("Similarity threshold").fill("1")
    expect(page.locator("#verdict")).to_contain_text("different people")

    # The first search's job, looked up by id on the pipeline page.
    page.get_by_role("link", name="Pipeline").click()
    page.get_by_label("Job id").fill(job["job_id"])
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#job-lookup")).to_contain_text("search job, done")

    # Erase Obama's one face: gone from his page and from PostgreSQL, the person kept.
    page.get_by_role("link", name="People").click()
    page.get_by_role("link", name=names["obama"]).click()
    face = page.locator("#faces figure")
    face_id = face.get_attribute("data-face-id")
    face.get_by_role("button", name=f"Erase face {face_id}").click()
    expect(page.locator("dialog#confirm")).to_contain_text("its embeddings in every pack, its photo and crop")
    page.locator("dialog#confirm").get_by_role("button", name="Erase face").click()
    expect(page.locator("#faces")).to_contain_text("No face enrolled yet.")
    with psycopg.connect(recognition_cluster.env["FECAPASS_MAIN_DB_DSN"]) as conn:
        left = conn.execute("SELECT count(*) FROM faces WHERE id = %s", (int(face_id or 0),)).fetchone()
        people = conn.execute("SELECT count(*) FROM users WHERE email = %s", (f"obama.{tag}@example.com",)).fetchone()
    assert (left, people) == ((0,), (1,))

"""The console without models: sign in, people, what a read key is offered, API keys with an admin key."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from schemas.streams import Stage
from tests.browser.conftest import NO_PLAYWRIGHT, Console, sign_in

pytest.importorskip("playwright.sync_api", reason=NO_PLAYWRIGHT)
from playwright.sync_api import Browser, Page, Route, expect


def unique(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:6]}"


def create_person(page: Page, full_name: str, email: str) -> None:
    form = page.locator("#create-person")
    form.get_by_label("Full name").fill(full_name)
    form.get_by_label("Email").fill(email)
    form.get_by_role("button", name="Create").click()
    expect(form.get_by_role("status")).to_contain_text(f"Created {full_name}")


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_in_session_storage(page: Page, console: Console) -> None:
    page.goto(f"{console.base_url}/ui/")
    expect(page.get_by_role("navigation", include_hidden=True)).to_be_hidden()  # nothing to go to before sign-in
    page.get_by_label("API key").fill("fcp_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
    sign_in(page, console.base_url, console.keys["write"])
    assert page.evaluate("sessionStorage.getItem('fecapass.key')") == console.keys["write"]
    assert page.evaluate("localStorage.length") == 0
    expect(page.get_by_role("navigation")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("navigation", include_hidden=True)).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('fecapass.key')") is None


def test_people_create_search_edit_deactivate_and_erase(page: Page, console: Console) -> None:
    sign_in(page, console.base_url, console.keys["write"], "#/people")
    tag = uuid.uuid4().hex[:6]
    ada, alan = f"Ada Lovelace {tag}", f"Alan Turing {tag}"
    create_person(page, ada, f"ada.{tag}@example.com")
    create_person(page, alan, f"alan.{tag}@example.com")
    assert console.rows("SELECT count(*) FROM users WHERE full_name IN (%s, %s)", ada, alan) == [(2,)]

    page.get_by_label("Search by name or email").fill(f"alan.{tag}")  # by email
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people")).to_contain_text(alan)
    page.get_by_label("Search by name or email").fill(f"LOVELACE {tag}")  # by name, any case
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    page.get_by_role("link", name=ada).click()

    page.locator("#edit-person").get_by_label("Full name").fill(f"Augusta Ada King {tag}")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Augusta Ada King {tag}")
    expect(page.locator("#person-facts")).to_contain_text(" active ")
    page.get_by_role("button", name="Deactivate").click()
    expect(page.locator("#person-facts")).to_contain_text("inactive")
    (user_id, name, active) = console.rows(
        "SELECT id, full_name, is_active FROM users WHERE email = %s", f"ada.{tag}@example.com"
    )[0]
    assert (name, active) == (f"Augusta Ada King {tag}", False)

    page.get_by_role("button", name="Erase person").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Erase Augusta Ada King {tag} (ada.{tag}@example.com)?")
    expect(dialog).to_contain_text("0 enrolled face(s) with their embeddings in every model pack")
    dialog.get_by_role("button", name="Cancel").click()
    assert console.rows("SELECT count(*) FROM users WHERE id = %s", user_id) == [(1,)]
    page.get_by_role("button", name="Erase person").click()
    page.locator("dialog#confirm").get_by_role("button", name="Erase person").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("People")
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people")).not_to_contain_text("Ada")
    assert console.rows("SELECT count(*) FROM users WHERE id = %s", user_id) == [(0,)]


def test_people_pages(page: Page, console: Console) -> None:
    tag = uuid.uuid4().hex[:6]
    with console.client("write") as client:
        for index in range(25):  # one page is 20
            client.post(
                "/v1/users", json={"email": f"p{index}.{tag}@example.com", "full_name": f"Pager {index:02} {tag}"}
            )
    sign_in(page, console.base_url, console.keys["read"], "#/people")
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(20)
    expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#people tbody tr")).to_have_count(5)
    expect(page.locator("#people")).to_contain_text(f"Pager 24 {tag}")
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(page.locator("#people tbody tr")).to_have_count(20)
    expect(page.locator("#people")).to_contain_text(f"Pager 00 {tag}")


def test_a_late_answer_to_the_first_page_does_not_replace_the_search(page: Page, console: Console) -> None:
    """The list asks for the first page as it opens; a search sent before that answer is back must win, whatever
    order the answers come in (the stale page's `next_after` once sent "Next page" past the search's people)."""
    tag = uuid.uuid4().hex[:6]
    with console.client("write") as client:
        client.post("/v1/users", json={"email": f"late.{tag}@example.com", "full_name": f"Late Answer {tag}"})
        other = uuid.uuid4().hex[:6]  # someone the search does not find, on the unfiltered first page
        client.post("/v1/users", json={"email": f"other.{other}@example.com", "full_name": f"Someone Else {other}"})
    held: list[Route] = []

    def hold_the_unfiltered_list(route: Route) -> None:
        if not parse_qs(urlsplit(route.request.url).query).get("q"):
            held.append(route)  # answered below, after the search's answer
        else:
            route.continue_()

    page.route("**/v1/users?*", hold_the_unfiltered_list)
    sign_in(page, console.base_url, console.keys["read"], "#/people")
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    assert held  # the list opened with an unfiltered first page (once per render of the view)
    for route in held:
        route.fulfill(response=route.fetch())
    page.wait_for_timeout(500)  # time for the late answer to be rendered, had it been
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people")).to_contain_text(f"Late Answer {tag}")


def test_a_read_key_is_offered_no_write_action(page: Page, console: Console) -> None:
    with console.client("write") as client:
        user = client.post("/v1/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "full_name": "Read Only"})
    dead = redis.Redis.from_url(console.env["FECAPASS_REDIS_URL"])
    dead.xadd(Stage.DETECT.dead_letter_stream, {"job_id": "j-read", "dead_error_code": "internal", "dead_error": "x"})
    sign_in(page, console.base_url, console.keys["read"], "#/people")
    expect(page.locator("#whoami")).to_have_text("read key")
    expect(page.locator("#people")).to_be_visible()
    expect(page.locator("#create-person")).to_have_count(0)
    expect(page.get_by_role("link", name="Keys")).to_be_hidden()
    page.goto(f"{console.base_url}/ui/#/people/{user.json()['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Read Only")
    expect(page.get_by_role("heading", name="Faces")).to_be_visible()
    for action in ("Save", "Deactivate", "Erase person"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    expect(page.locator("input[type=file]")).to_have_count(0)  # no enrolment
    page.get_by_role("link", name="Pipeline").click()
    expect(page.locator("#dead-letters")).to_contain_text("j-read")
    expect(page.locator("#dead-letters button")).to_have_count(0)  # no replay, no purge
    page.goto(f"{console.base_url}/ui/#/keys")
    expect(page.locator("#view")).to_contain_text("This page needs an admin key.")
    dead.delete(Stage.DETECT.dead_letter_stream)
    dead.close()


def test_dead_letters_replay_and_purge_with_a_write_key(page: Page, console: Console) -> None:
    client = redis.Redis.from_url(console.env["FECAPASS_REDIS_URL"], decode_responses=True)
    stream, dead = Stage.EMBED.stream, Stage.EMBED.dead_letter_stream
    client.xtrim(stream, maxlen=0)  # emptied, its consumer group kept
    client.delete(dead)
    kept = client.xadd(dead, {"job_id": "j-replay", "dead_error_code": "internal", "dead_error": "model crashed"})
    dropped = client.xadd(dead, {"job_id": "j-purge", "dead_error_code": "malformed_message", "dead_error": "bad"})
    sign_in(page, console.base_url, console.keys["write"], "#/pipeline")
    expect(page.locator("#stages tr[data-stage=embed]")).to_be_visible()
    expect(page.locator("#model-pack")).to_contain_text("buffalo_sc_lite")
    letters = page.locator("#dead-letters")
    expect(letters.locator(f"tr[data-message-id='{kept}']")).to_contain_text("internal: model crashed")
    letters.locator(f"tr[data-message-id='{kept}']").get_by_role("button", name="Replay").click()
    expect(letters.locator(f"tr[data-message-id='{kept}']")).to_have_count(0)
    letters.locator(f"tr[data-message-id='{dropped}']").get_by_role("button", name="Purge").click()
    expect(letters).to_contain_text("no dead letters")
    assert client.xlen(dead) == 0
    replayed = client.xrange(stream)
    assert [fields["job_id"] for _, fields in replayed] == ["j-replay"]
    assert not any(name.startswith("dead_") for name in replayed[0][1])  # the original entry, as first sent
    # the stage table follows the stream live: the replayed entry is counted without reloading the page
    expect(page.locator("#stages tr[data-stage=embed] td").first).to_have_text("1")
    client.xtrim(stream, maxlen=0)
    client.close()


def test_an_admin_key_creates_and_revokes_a_key(page: Page, console: Console) -> None:
    sign_in(page, console.base_url, console.keys["admin"])
    page.get_by_role("link", name="Keys").click()
    name = unique("kiosk")
    page.get_by_label("Who or what uses it").fill(name)
    page.get_by_label("Scope").select_option("read")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key").text_content() or ""
    assert shown.startswith("fcp_")
    with httpx_client(console, shown) as client:
        assert client.get("/v1/me").json() == {"scope": "read", "collections": None}
    (key_id, scope, revoked) = console.rows("SELECT id, scope, revoked_at FROM api_keys WHERE name = %s", name)[0]
    assert (scope, revoked) == ("read", None)
    row = page.locator(f"#keys tr[data-key-id='{key_id}']")
    expect(row).to_contain_text(name)
    assert shown not in (page.locator("#keys").text_content() or "")  # the list shows a prefix only
    row.get_by_role("button", name=f"Revoke key {key_id} ({name})").click()
    expect(row.locator(".state")).to_contain_text("revoked")
    assert console.rows("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = %s", key_id) == [(True,)]


def httpx_client(console: Console, key: str):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.Client(base_url=console.base_url, timeout=30, headers={"X-API-Key": key})


def test_keyboard_only_at_phone_width(browser: Browser, console: Console, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(f"{console.base_url}/ui/")
    expect(page.get_by_label("API key")).to_be_focused()  # the sign-in form takes the keyboard at once
    page.keyboard.type(console.keys["write"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.get_by_role("link", name="People").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("People")
    page.get_by_label("Search by name or email").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Search")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#create-person").get_by_label("Full name")).to_be_focused()
    for hash_ in ("#/recognize", "#/people", "#/pipeline"):
        page.goto(f"{console.base_url}/ui/{hash_}")
        page.locator("h1").wait_for()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{hash_} is {overflow} px wider than a phone screen"
    page.goto(f"{console.base_url}/ui/#/people")
    page.locator("#people").wait_for()
    page.screenshot(path=str(screenshots / "phone-width-people.png"), full_page=True)
    context.close()


def test_names_from_the_api_are_shown_as_text_never_as_markup(page: Page, console: Console) -> None:
    tag = uuid.uuid4().hex[:6]
    hostile = f'<img src=x onerror="window.pwned=1">{tag}'
    with console.client("write") as client:
        person = client.post("/v1/users", json={"email": f"x.{tag}@example.com", "full_name": hostile}).json()
    sign_in(page, console.base_url, console.keys["read"], "#/people")
    page.get_by_label("Search by name or email").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people tbody a")).to_have_text(hostile)
    page.goto(f"{console.base_url}/ui/#/people/{person['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(hostile)
    assert page.locator("#view img[src=x]").count() == 0
    assert page.evaluate("window.pwned") is None

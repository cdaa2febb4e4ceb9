"""The console in headless Chromium (Debian's package, driven by Playwright; no browser is downloaded).

The API runs in this process under uvicorn, on an installation of its own on the test run's real servers; the
recognition test also starts the stage processes (its own cluster, with the models in ../shared). Every test saves
a screenshot under the session's temporary folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from operations.services import LocalServices
from tests.api.conftest import api_config, serving
from tests.e2e.conftest import RunningPipeline, create_key_in, fresh_installation, start_cluster, stop_cluster
from tests.shared_data import require_basic, require_pack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Redis databases of their own: no stage process of the other tests reads these streams.
CONSOLE_REDIS_DB = 12
RECOGNITION_REDIS_DB = 13
NO_PLAYWRIGHT = "playwright is not installed (pip install -e '.[dev]')"
NO_MODELS = Path("/nonexistent/fecapass-models")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium found (apt-get install chromium; .ci/run installs it)")
    return found


@dataclass(frozen=True)
class Console:
    base_url: str
    env: dict[str, str]
    keys: dict[str, str]  # scope -> key

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """What PostgreSQL holds, read past the API."""
        with psycopg.connect(self.env["FECAPASS_MAIN_DB_DSN"]) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def client(self, scope: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, headers={"X-API-Key": self.keys[scope]})


@pytest.fixture(scope="package")
def console(services: LocalServices) -> Iterator[Console]:
    """The API (and so the console) in this process; no model files, no stage process."""
    env = {
        **fresh_installation(services, "console", redis_db=CONSOLE_REDIS_DB),
        "FECAPASS_MODEL_PACK": "buffalo_sc_lite",  # described by name only: its files are nowhere here
        "FECAPASS_MODEL_ROOT": str(NO_MODELS),
        "FECAPASS_MAX_WAIT_SECONDS": "0",
    }
    keys = {scope: create_key_in(env["FECAPASS_MAIN_DB_DSN"], scope, f"console-{scope}") for scope in SCOPES}
    with serving(api_config(env)) as (host, port):
        yield Console(f"http://{host}:{port}", env, keys)


SCOPES = ("read", "write", "admin")


@pytest.fixture(scope="package")
def recognition_cluster(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPipeline]:
    """`fecapass api` and one process per stage on an installation of their own: the people these tests enroll
    never reach the other end-to-end tests' searches."""
    require_pack()
    require_basic()
    env = fresh_installation(services, "console_models", redis_db=RECOGNITION_REDIS_DB)
    running = start_cluster(env, tmp_path_factory.mktemp("console-cluster-logs"), workers_per_stage=1)
    yield running
    stop_cluster(running)


# Package scope: Playwright's sync API keeps an event loop running in this thread while it is open, and a later
# test's asyncio.run() would refuse to start; the browser, the API and the cluster end with these tests.
@pytest.fixture(scope="package")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = chromium_path()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def page(browser: Browser, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh context (empty sessionStorage) at phone-friendly desktop size; its screenshot is saved after the
    test, whatever the outcome."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(20_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    opened.screenshot(path=str(screenshots / f"{request.node.name}.png"), full_page=True)
    unlabelled = opened.evaluate(UNLABELLED)
    context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"
    assert not unlabelled, f"controls without a label or images without alt text on the last page: {unlabelled}"


# Every image has alt text and every form control a label, on whatever page a test ends.
UNLABELLED = """() => [
  ...[...document.querySelectorAll("img")].filter((img) => !img.alt.trim()).map((img) => "img " + img.src),
  ...[...document.querySelectorAll("input, select, textarea")]
    .filter((control) => control.type !== "hidden" && !control.labels?.length && !control.getAttribute("aria-label"))
    .map((control) => control.outerHTML),
]"""


def sign_in(page: Page, base_url: str, key: str, hash_: str = "") -> None:
    page.goto(f"{base_url}/ui/{hash_}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def json_of(page: Page, selector: str) -> Any:
    return json.loads(page.locator(selector).text_content() or "null")

"""What the console stands on, over HTTP without a browser: the pages and their security headers, the admin
scope, /v1/me, /v1/keys, the pipeline and dead-letter endpoints, and search by name or email."""

from __future__ import annotations

import hashlib
import re
import uuid

import httpx
import pytest
import redis

from common.apikeys import Scope
from operations.cli import main as fecapass
from schemas.streams import Stage
from tests.browser.conftest import Console


def test_scopes_are_ordered_read_write_admin() -> None:
    assert [needed for needed in Scope if Scope.ADMIN.allows(needed)] == [Scope.READ, Scope.WRITE, Scope.ADMIN]
    assert [needed for needed in Scope if Scope.WRITE.allows(needed)] == [Scope.READ, Scope.WRITE]
    assert [needed for needed in Scope if Scope.READ.allows(needed)] == [Scope.READ]


def test_the_console_is_served_with_a_policy_that_allows_no_inline_script(console: Console) -> None:
    with httpx.Client(base_url=console.base_url) as client:
        assert client.get("/ui").headers["location"].endswith("/ui/")
        page = client.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        # the photos' presigned URLs point at the S3 endpoint: the one other origin images may come from
        assert f"http://{console.env['FECAPASS_S3_ENDPOINT']}" in policy
        scripts = re.findall(r"<script[^>]*>(.*?)</script>", page.text, re.S)
        assert scripts and all(not body.strip() for body in scripts), "inline script in index.html"
        module = client.get("/ui/js/main.js")
        assert module.status_code == 200 and "javascript" in module.headers["content-type"]
        assert module.headers["content-security-policy"] == policy
        assert client.get("/ui/js/nothing.js").status_code == 404
        assert client.get("/ui/../pyproject.toml").status_code == 404


def test_me_tells_each_key_its_scope(console: Console) -> None:
    for scope in ("read", "write", "admin"):
        with console.client(scope) as client:
            assert client.get("/v1/me").json() == {"scope": scope, "collections": None}
    with httpx.Client(base_url=console.base_url) as anonymous:
        assert anonymous.get("/v1/me").json()["code"] == "missing_api_key"
        assert anonymous.get("/v1/me", headers={"X-API-Key": "fcp_guess"}).json()["code"] == "invalid_api_key"


def test_only_an_admin_key_manages_keys(console: Console) -> None:
    for scope in ("read", "write"):
        with console.client(scope) as client:
            for answer in (
                client.get("/v1/keys"),
                client.post("/v1/keys", json={"name": "escalate", "scope": "admin"}),
                client.delete("/v1/keys/1"),
            ):
                assert answer.status_code == 403 and answer.json()["code"] == "insufficient_scope", answer.text
    assert console.rows("SELECT count(*) FROM api_keys WHERE name = 'escalate'") == [(0,)]
    with console.client("admin") as admin:
        created = admin.post("/v1/keys", json={"name": "made-by-admin", "scope": "write"})
        assert created.status_code == 201, created.text
        body = created.json()
        # only the SHA-256 is stored, and the listing never carries the key
        assert console.rows("SELECT key_hash, scope FROM api_keys WHERE id = %s", body["id"]) == [
            (hashlib.sha256(body["key"].encode()).digest(), "write")
        ]
        listed = admin.get("/v1/keys").json()
        assert body["id"] in [row["id"] for row in listed] and body["key"] not in str(listed)
        with httpx.Client(base_url=console.base_url, headers={"X-API-Key": body["key"]}) as made:
            assert made.get("/v1/me").json() == {"scope": "write", "collections": None}
        assert admin.post("/v1/keys", json={"name": "", "scope": "write"}).status_code == 422
        assert admin.post("/v1/keys", json={"name": "x", "scope": "root"}).status_code == 422
        assert admin.delete(f"/v1/keys/{body['id']}").status_code == 204
        assert admin.delete(f"/v1/keys/{body['id']}").json()["code"] == "key_not_found"  # already revoked
        # an admin key may also do everything a write key may
        person = admin.post("/v1/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "full_name": "A"})
        assert person.status_code == 201


def test_the_cli_creates_an_admin_key(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in console.env.items():
        monkeypatch.setenv(name, value)
    name = f"cli-admin-{uuid.uuid4().hex[:6]}"
    fecapass(["keys", "create", "--name", name, "--scope", "admin"])
    assert console.rows("SELECT scope FROM api_keys WHERE name = %s", name) == [("admin",)]


def test_pipeline_endpoints(console: Console) -> None:
    client = redis.Redis.from_url(console.env["FECAPASS_REDIS_URL"], decode_responses=True)
    stage = Stage.ALIGN
    client.xtrim(stage.stream, maxlen=0)  # emptied, its consumer group kept
    client.delete(stage.dead_letter_stream)
    letter = client.xadd(
        stage.dead_letter_stream, {"job_id": "j1", "dead_error_code": "internal", "dead_error": "boom"}
    )
    with console.client("read") as reader, console.client("write") as writer:
        answer = reader.get("/v1/pipeline").json()
        assert answer["model_pack"]["name"] == "buffalo_sc_lite" and answer["threshold"] == 0.27  # the pack's
        stats = {row["stage"]: row for row in answer["stages"]}
        assert set(stats) == {each.value for each in Stage}
        assert stats["align"]["dead_letters"] == 1 and stats["align"]["backlog"] == 0
        listed = reader.get("/v1/pipeline/dead-letters", params={"stage": "align"}).json()
        assert [(row["message_id"], row["job_id"], row["error_code"]) for row in listed] == [(letter, "j1", "internal")]
        assert reader.post(f"/v1/pipeline/dead-letters/align/{letter}/replay").status_code == 403
        assert reader.delete("/v1/pipeline/dead-letters/align").status_code == 403
        assert client.xlen(stage.dead_letter_stream) == 1
        assert writer.post("/v1/pipeline/dead-letters/align/0-1/replay").json()["code"] == "dead_letter_not_found"
        assert writer.post(f"/v1/pipeline/dead-letters/nowhere/{letter}/replay").status_code == 422
        for bad in ("-", "1-x", "+", "%20", "9" * 30 + "-1", f"{2**64}-0", f"0-{2**64}"):  # never handed to XRANGE
            assert writer.post(f"/v1/pipeline/dead-letters/align/{bad}/replay").status_code in (404, 422), bad
            assert writer.delete(f"/v1/pipeline/dead-letters/align/{bad}").status_code in (404, 422), bad
        replayed = writer.post(f"/v1/pipeline/dead-letters/align/{letter}/replay").json()
        assert client.xrange(stage.stream) == [(replayed["message_id"], {"job_id": "j1"})]
        client.xadd(stage.dead_letter_stream, {"job_id": "j2"})
        client.xadd(stage.dead_letter_stream, {"job_id": "j3"})
        assert writer.delete("/v1/pipeline/dead-letters/align").json() == {"stage": "align", "removed": 2}
        assert client.xlen(stage.dead_letter_stream) == 0
    client.xtrim(stage.stream, maxlen=0)
    client.close()


def test_people_search_takes_the_text_literally(console: Console) -> None:
    tag = uuid.uuid4().hex[:6]
    with console.client("write") as client:
        for name in (f"100% {tag}", f"1000 {tag}", f"a_b {tag}", f"axb {tag}"):
            assert client.post("/v1/users", json={"email": f"{uuid.uuid4().hex}@example.com", "full_name": name})
        found = {
            query: [user["full_name"] for user in client.get("/v1/users", params={"q": query}).json()["items"]]
            for query in (f"0% {tag}", f"a_b {tag}", tag.upper())
        }
    assert found == {
        f"0% {tag}": [f"100% {tag}"],
        f"a_b {tag}": [f"a_b {tag}"],
        tag.upper(): [f"100% {tag}", f"1000 {tag}", f"a_b {tag}", f"axb {tag}"],
    }

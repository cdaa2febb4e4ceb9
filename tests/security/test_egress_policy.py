"""The egress policy as an attacker probes it: every spelling of an internal address is refused after the
resolver has normalised it, and the operator's allow and deny lists do what SECURITY.md says."""

from __future__ import annotations

import asyncio

import pytest

from common import settings as s
from common.egress import EgressPolicy, EgressRefused, Rules, default_refusal, policy_from_env, target
from ingest_api.problems import ApiError
from ingest_api.routers.recognition import checked_callback_url

# Every one of these reached an internal service before (issue 15). The system resolver turns each spelling
# into its address; nothing here matches text.
INTERNAL_URLS = [
    "http://127.0.0.1:6379/",
    "http://localhost:5432/",
    "http://LOCALHOST./",
    "http://0.0.0.0:9000/",
    "http://0/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",  # Teredo, 10.0.0.1 inside
    "https://user:pass@127.0.0.1:8443/hook",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_every_spelling_of_an_internal_address_is_refused(url: str) -> None:
    with pytest.raises(EgressRefused, match="refused addresses"):
        EgressPolicy().check_url(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://example.com/", "//x/"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(EgressRefused, match="only http and https"):
        EgressPolicy().check_url(url)


def test_public_addresses_pass_without_resolving_anything_else() -> None:
    assert [str(a) for a in EgressPolicy().check_url("https://8.8.8.8/hook")] == ["8.8.8.8"]
    assert [str(a) for a in EgressPolicy().check_url("http://[2606:4700:4700::1111]:8080/")] == ["2606:4700:4700::1111"]


def fixed(answers: dict[str, list[str]]) -> EgressPolicy:
    return EgressPolicy(resolver=lambda host, _port: answers[host])


def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    policy = fixed({"metadata.attacker.example": ["169.254.169.254"], "valkey": ["10.0.3.7"]})
    for url in ("http://metadata.attacker.example/", "http://valkey:6379/"):
        with pytest.raises(EgressRefused):
            policy.check_url(url)


def test_a_name_with_public_and_internal_answers_keeps_only_the_public_ones() -> None:
    policy = fixed({"mixed.example": ["127.0.0.1", "93.184.215.14", "::1"]})
    assert [str(a) for a in policy.check_url("http://mixed.example/")] == ["93.184.215.14"]


def policy(allow: str = "", deny: str = "", answers: dict[str, list[str]] | None = None) -> EgressPolicy:
    settings = s.EgressSettings(webhook_allow=allow, webhook_deny=deny)
    table = answers or {}
    return EgressPolicy.from_settings(settings, resolver=lambda host, _port: table.get(host, [host]))


def test_allow_cidr_lets_operators_deliver_inside_their_network() -> None:
    allowed = policy(allow="10.0.0.0/8, 127.0.0.1/32")
    assert [str(a) for a in allowed.check_url("http://10.2.3.4/")] == ["10.2.3.4"]
    assert [str(a) for a in allowed.check_url("http://127.0.0.1:8080/")] == ["127.0.0.1"]
    assert allowed.check_url("http://[::ffff:10.2.3.4]/")  # the mapped form of an allowed address
    with pytest.raises(EgressRefused):
        allowed.check_url("http://127.0.0.2/")  # only what the CIDR covers
    with pytest.raises(EgressRefused):
        allowed.check_url("http://169.254.169.254/")


def test_allow_host_name_covers_its_subdomains_only() -> None:
    answers = {
        "hooks.corp.internal": ["10.1.1.1"],
        "a.hooks.corp.internal": ["10.1.1.2"],
        "xhooks.corp.internal": ["10.1.1.3"],
    }
    allowed = policy(allow="hooks.corp.internal", answers=answers)
    assert allowed.check_url("http://hooks.corp.internal/")
    assert allowed.check_url("http://a.hooks.corp.internal/")
    with pytest.raises(EgressRefused):
        allowed.check_url("http://xhooks.corp.internal/")


def test_deny_wins_over_allow_and_over_public() -> None:
    denied = policy(allow="10.0.0.0/8,partner.example", deny="10.9.0.0/16,partner.example,8.8.8.0/24")
    answers_ok = policy(allow="10.0.0.0/8", deny="10.9.0.0/16")
    assert answers_ok.check_url("http://10.1.0.1/")
    for url in ("http://10.9.1.1/", "http://partner.example/", "http://8.8.8.8/", "http://[::ffff:8.8.8.8]/"):
        with pytest.raises(EgressRefused):
            denied.check_url(url)


def test_bad_rules_stop_the_process_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="FECAPASS_WEBHOOK_ALLOW"):
        Rules.parse("10.0.0.0/8, not a host!", "FECAPASS_WEBHOOK_ALLOW")


def test_default_refusal_names_the_reason() -> None:
    import ipaddress

    assert default_refusal(ipaddress.ip_address("169.254.169.254")) == "link-local address"
    assert default_refusal(ipaddress.ip_address("::ffff:10.0.0.1")) == "private address"
    assert default_refusal(ipaddress.ip_address("100.100.100.200")) == "shared (CGNAT) address"
    assert default_refusal(ipaddress.ip_address("1.1.1.1")) is None


def test_target_defaults_ports_and_strips_brackets() -> None:
    assert target("https://Example.COM./x") == ("example.com", 443)
    assert target("http://[::1]:81/") == ("::1", 81)
    with pytest.raises(EgressRefused, match="no host"):
        target("http:///path")


def test_the_api_refuses_a_known_bad_callback_url_with_its_own_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import AnyHttpUrl

    monkeypatch.delenv("FECAPASS_WEBHOOK_ALLOW", raising=False)
    policy_from_env.cache_clear()  # the API reads the settings once; this test wants the defaults

    with pytest.raises(ApiError) as refused:
        asyncio.run(checked_callback_url(AnyHttpUrl("http://2130706433:6379/")))
    assert refused.value.status == 422 and refused.value.code == "callback_url_refused"
    assert "loopback" in refused.value.detail
    assert asyncio.run(checked_callback_url(None)) is None
    # A name that does not resolve (yet) is let through: the sender decides when it connects.
    assert asyncio.run(checked_callback_url(AnyHttpUrl("http://does-not-resolve.invalid/hook"))) is not None

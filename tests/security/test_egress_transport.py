"""The egress transport connects only to the address it checked: real sockets on 127.0.0.1, no mocks of httpx."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.egress import EgressPolicy, EgressRefused, EgressTransport, Rules
from tests.security.receivers import receiver

LOOPBACK_ALLOWED = EgressPolicy(allow=Rules.parse("127.0.0.1/32", "FECAPASS_WEBHOOK_ALLOW"))


def client(policy: EgressPolicy, **kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=EgressTransport(policy, **kwargs), timeout=5, follow_redirects=False)


def test_loopback_receiver_is_not_reached_by_default_and_is_when_allowed() -> None:
    with receiver() as hook:
        port = hook.url.split(":")[2].split("/")[0]
        for spelling in (hook.url, f"http://localhost:{port}/hook", f"http://2130706433:{port}/hook"):
            with client(EgressPolicy()) as refused, pytest.raises(EgressRefused, match="loopback"):
                refused.post(spelling, content=b"{}")
        assert hook.requests == []
        with client(LOOPBACK_ALLOWED) as allowed:
            assert allowed.post(hook.url, content=b"{}").status_code == 204
        assert len(hook.requests) == 1


def test_dns_rebinding_cannot_make_it_connect_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker's name answers a public address when checked and 127.0.0.1 on every later lookup."""
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.attacker.example":
            lookups.append(host)
            host = "93.184.215.14" if len(lookups) == 1 else "127.0.0.1"
        return real_getaddrinfo(host, port, *args, **kwargs)

    connected: list[str] = []

    def loopback_only(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        # As the real one would, but nothing leaves this machine: a public address is unreachable here.
        connected.append(address[0])
        found = {info[4][0] for info in rebinding(address[0], address[1], type=socket.SOCK_STREAM)}
        if found != {"127.0.0.1"}:
            raise ConnectionRefusedError(f"test network: {found} unreachable")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", loopback_only)
    with receiver() as hook:
        port = int(hook.url.split(":")[2].split("/")[0])
        with client(EgressPolicy()) as attacked:
            with pytest.raises(httpx.ConnectError):
                attacked.post(f"http://rebind.attacker.example:{port}/hook", content=b"{}")
            # The next lookup answers 127.0.0.1: now the check itself refuses.
            with pytest.raises(EgressRefused, match="loopback"):
                attacked.post(f"http://rebind.attacker.example:{port}/hook", content=b"{}")
        assert hook.requests == []
    assert connected == ["93.184.215.14"]  # the checked address, never the name again
    assert len(lookups) == 2  # one per connection attempt


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path / "hook.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=hook.test"
    command += " -addext subjectAltName=DNS:hook.test"

    subprocess.run(
        [*command.split(), "-keyout", str(pem), "-out", str(pem)],
        check=True,
        capture_output=True,
    )
    return pem


def test_tls_keeps_sni_host_header_and_verification_on_the_name(certificate: Path) -> None:
    server_names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate)
    server_context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,misc,return-value]
    policy = EgressPolicy(
        allow=Rules.parse("127.0.0.1/32", "FECAPASS_WEBHOOK_ALLOW"), resolver=lambda host, _port: ["127.0.0.1"]
    )
    trust = ssl.create_default_context(cafile=str(certificate))
    with receiver(tls=server_context) as hook:
        port = int(hook.url.split(":")[2].split("/")[0])
        with client(policy, verify=trust) as tls_client:
            response = tls_client.post(f"https://hook.test:{port}/hook", content=b"{}")
            # The same server by its address: the certificate is for the name, so verification still applies.
            with pytest.raises(httpx.ConnectError, match="certificate"):
                tls_client.post(f"https://127.0.0.1:{port}/hook", content=b"{}")
    assert response.status_code == 204
    assert server_names == ["hook.test", None]  # by name: SNI is the name; by address: no SNI
    assert hook.requests[0][1]["Host"] == f"hook.test:{port}"

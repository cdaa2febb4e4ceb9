"""Where the service may send requests on a client's behalf (webhook callback URLs): the SSRF guard.

A callback URL is chosen by whoever holds an API key, so by default only public addresses are reached:
loopback, private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254), CGNAT, multicast,
unspecified and reserved addresses are refused, also when written IPv4-mapped or embedded in IPv6 (6to4,
Teredo, NAT64). Every spelling of an address (``127.1``, ``2130706433``, ``0x7f000001``, ``[::1]``) is
decided by what the resolver (``getaddrinfo``) makes of it, never by matching the text.

``FECAPASS_WEBHOOK_ALLOW`` lets operators deliver inside their network (it wins over the default refusal)
and ``FECAPASS_WEBHOOK_DENY`` refuses more (it wins over everything); both take CIDRs and host names.

The check must be the connection: ``EgressTransport`` resolves a host once, checks the answers, then
connects to a checked address itself, so a DNS answer that changes between the check and the connect
(rebinding) cannot reach a refused address. Host header, TLS SNI and certificate checks stay on the name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx

from common import settings as s

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

SCHEMES = ("http", "https")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
# NAT64 prefixes translate their last 32 bits to IPv4 on a gateway, which may sit inside the network.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class EgressRefused(Exception):
    """The destination is not allowed; trying again cannot change that."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` stands for, as the connection would find them (numeric forms included)."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in answers))


def default_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is refused when no setting says otherwise, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return default_refusal(address.ipv4_mapped)
        embedded = _embedded_ipv4(address)
        if embedded is not None and (reason := default_refusal(embedded)):
            return f"{reason} (embedded in {address})"
    for refused, reason in (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "shared (CGNAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "site-local"),
        (not address.is_global, "not globally routable"),
    ):
        if refused:
            return f"{reason} address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in prefix for prefix in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Rules:
    """One of FECAPASS_WEBHOOK_ALLOW / _DENY: networks, and host names that also cover their subdomains."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, variable: str) -> Rules:
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = _normal_host(item)
            if not _HOST_NAME.match(name):
                raise ValueError(f"{variable}: {item!r} is neither a CIDR nor a host name")
            hosts.append(name)
        return cls(tuple(networks), tuple(hosts))

    def covers_host(self, host: str) -> bool:
        return any(host == name or host.endswith("." + name) for name in self.hosts)

    def covers(self, host: str, address: IPAddress) -> bool:
        plain = _plain(address)
        return self.covers_host(host) or any(a in net for net in self.networks for a in {address, plain})


@dataclass(frozen=True)
class EgressPolicy:
    allow: Rules = field(default_factory=Rules)
    deny: Rules = field(default_factory=Rules)
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: s.EgressSettings, resolver: Resolver = system_resolver) -> EgressPolicy:
        return cls(
            Rules.parse(settings.webhook_allow, "FECAPASS_WEBHOOK_ALLOW"),
            Rules.parse(settings.webhook_deny, "FECAPASS_WEBHOOK_DENY"),
            resolver,
        )

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why a connection to ``address`` (found for ``host``) is refused, or None when it may go ahead."""
        if self.deny.covers(host, address):
            return "denied by FECAPASS_WEBHOOK_DENY"
        if self.allow.covers(host, address):
            return None
        reason = default_refusal(address)
        return f"{reason}; FECAPASS_WEBHOOK_ALLOW can allow it" if reason else None

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host`` a connection may use, in the resolver's order. Raises EgressRefused when
        there are none; a failed resolution raises the resolver's OSError (a passing failure)."""
        host = _normal_host(host)
        if self.deny.covers_host(host):
            raise EgressRefused(f"{host} is denied by FECAPASS_WEBHOOK_DENY")
        allowed: list[IPAddress] = []
        refused: list[str] = []
        for answer in self.resolver(host, port):
            address = ipaddress.ip_address(answer)
            reason = self.refusal(host, address)
            if reason is None:
                allowed.append(address)
            else:
                refused.append(f"{address} ({reason})")
        if not allowed:
            raise EgressRefused(f"{host} resolves only to refused addresses: {', '.join(refused) or 'none'}")
        return allowed

    def check_url(self, url: str) -> list[IPAddress]:
        """What the API asks at submit time: refuse a URL that is known bad now. A host that does not resolve
        (yet) raises OSError, which callers may let through: the sender checks again when it connects."""
        host, port = target(url)
        return self.addresses(host, port)


def target(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL; EgressRefused for any other scheme or a URL without a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise EgressRefused(f"only http and https callback URLs are allowed, not {scheme or 'none'!r}")
    if not parts.hostname:
        raise EgressRefused("the callback URL has no host")
    return _normal_host(parts.hostname), port or (443 if scheme == "https" else 80)


@functools.cache
def policy_from_env() -> EgressPolicy:
    """For the API's submit-time check: the settings are read once, at the first callback URL."""
    return EgressPolicy.from_settings(s.load(s.EgressSettings))


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _plain(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class EgressBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the policy checked for this connection."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.addresses(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                # The IP itself, so that nothing resolves the name again between the check and the connect.
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # addresses is never empty
        raise failure


class EgressTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool on ``EgressBackend``; proxies from the environment are not
    used (a proxy would make the checked address the proxy's). Raises EgressRefused from ``handle_request``."""

    def __init__(
        self, policy: EgressPolicy, *, verify: ssl.SSLContext | bool | str = True, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        super().__init__(verify=verify, limits=limits, trust_env=False)
        # The pool httpx builds, on our backend (HTTPTransport takes no backend argument).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=EgressBackend(policy),
        )

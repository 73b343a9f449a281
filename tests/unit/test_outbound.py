"""The outbound-URL policy and its client, against local sinks (no database): every
spelling of a refused address, DNS rebinding, TLS on the hostname of a pinned
connection, no redirects, bounded answers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flow.config import Settings
from flow.net import outbound
from flow.net.outbound import (
    IPAddress,
    UrlNotAllowed,
    address_problem,
    answered,
    check_url,
    ip_literal,
    outbound_client,
)
from tests.fakes.recording_sink import Answer, RecordingSink
from tests.refused_urls import REFUSED, refused_ids

PUBLIC = ipaddress.ip_address("93.184.215.14")
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def strict() -> Settings:
    return Settings(flow_env="test", flow_allow_private_urls=False)


def permissive() -> Settings:
    return Settings(flow_env="test", flow_allow_private_urls=True)


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


class Answers:
    """A resolver answering from a script: ``answers[i]`` for the i-th lookup, the last
    one for every lookup after; ``calls`` counts them."""

    def __init__(self, *answers: list[IPAddress]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where a connection would go and opens none (no network in this test)."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        raise httpcore.ConnectError("recorded, not connected")


@pytest.mark.parametrize(("template", "rule"), REFUSED, ids=refused_ids())
async def test_every_spelling_of_a_refused_address_is_refused_and_nothing_is_sent(
    sink: RecordingSink, template: str, rule: str
) -> None:
    url = template.format(port=sink.port) + "/batch/"
    with pytest.raises(UrlNotAllowed, match=re.escape(rule)):
        await check_url(url, strict())
    async with outbound_client(strict(), timeout=2) as client:
        with pytest.raises(UrlNotAllowed, match=re.escape(rule)):
            await client.post(url, content=b"ledger rows")
    assert sink.requests == []


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("deadbeef", None),
        ("1e100.net", None),
    ],
)
def test_numeric_hosts_are_read_as_inet_aton_reads_them(host: str, address: str | None) -> None:
    literal = ip_literal(host)
    assert (str(literal) if literal else None) == address


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


async def test_a_public_name_passes_the_check(sink: RecordingSink) -> None:
    resolver = Answers([PUBLIC])
    url = "https://hooks.example.com/flow"
    assert await check_url(url, strict(), resolver=resolver) == url
    assert resolver.calls == ["hooks.example.com"]


async def test_a_name_with_any_refused_address_is_refused() -> None:
    resolver = Answers([PUBLIC, ipaddress.ip_address("10.1.2.3")])
    with pytest.raises(UrlNotAllowed, match=r"host resolves to a private address; refused"):
        await check_url("https://mixed.example.com/", strict(), resolver=resolver)


async def test_https_is_required_in_production() -> None:
    production = Settings(flow_env="production")
    resolver = Answers([PUBLIC])
    with pytest.raises(UrlNotAllowed, match="https is required in production"):
        await check_url("http://hooks.example.com/flow", production, resolver=resolver)
    assert await check_url("https://hooks.example.com/flow", production, resolver=resolver)
    async with outbound_client(production, timeout=2, resolver=resolver) as client:
        with pytest.raises(UrlNotAllowed, match="https is required in production"):
            await client.post("http://hooks.example.com/flow")


async def test_an_unresolvable_host_passes_only_when_resolution_is_not_required() -> None:
    async def nothing(host: str, port: int) -> list[IPAddress]:
        raise OSError("no such host")

    url = "https://not-yet.example.com/"
    assert await check_url(url, strict(), resolver=nothing, require_resolution=False) == url
    with pytest.raises(UrlNotAllowed, match="does not resolve"):
        await check_url(url, strict(), resolver=nothing)
    async with outbound_client(strict(), timeout=2, resolver=nothing) as client:
        with pytest.raises(httpx.ConnectError, match=outbound.UNREACHABLE):
            await client.post(url)


async def test_dns_rebinding_after_the_check_cannot_reach_loopback(sink: RecordingSink) -> None:
    # Public when the URL is checked, loopback on every lookup after.
    resolver = Answers([PUBLIC], [LOOPBACK])
    backend = RecordingBackend()
    url = f"http://rebind.example.com:{sink.port}/batch/"
    assert await check_url(url, strict(), resolver=resolver) == url
    async with outbound_client(
        strict(), timeout=2, resolver=resolver, network_backend=backend
    ) as client:
        with pytest.raises(UrlNotAllowed, match="loopback"):
            await client.post(url, content=b"ledger rows")
    assert backend.connected == []
    assert sink.requests == []


async def test_a_connection_goes_to_the_address_its_own_lookup_checked(
    sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default resolver is replaced: the first lookup answers public, later ones
    # loopback; the connection must use the first answer, never look again.
    resolver = Answers([PUBLIC], [LOOPBACK])
    monkeypatch.setattr(outbound, "resolve_host", resolver)
    backend = RecordingBackend()
    async with outbound_client(strict(), timeout=2, network_backend=backend) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://rebind.example.com:{sink.port}/batch/")
    assert backend.connected == [(str(PUBLIC), sink.port)]
    assert resolver.calls == ["rebind.example.com"]
    assert sink.requests == []


async def test_the_pinned_connection_keeps_the_host_header(sink: RecordingSink) -> None:
    resolver = Answers([LOOPBACK])
    async with outbound_client(permissive(), timeout=2, resolver=resolver) as client:
        res = await client.post(f"http://sink.example.com:{sink.port}/batch/", content=b"x")
    assert res.status_code == 200
    [request] = sink.requests
    assert request["headers"]["Host"] == f"sink.example.com:{sink.port}"
    assert resolver.calls == ["sink.example.com"]


async def test_private_urls_allowed_still_refuse_cloud_metadata(sink: RecordingSink) -> None:
    async with outbound_client(permissive(), timeout=2) as client:
        assert (await client.post(sink.url + "/batch/")).status_code == 200
        for url in ("http://169.254.169.254/latest", "http://metadata.google.internal/"):
            with pytest.raises(UrlNotAllowed, match="cloud metadata"):
                await client.get(url)
    assert len(sink.requests) == 1


async def test_redirects_are_not_followed(sink: RecordingSink) -> None:
    target = await RecordingSink().start()
    try:
        sink.answer("/batch/", 302, Location=f"{target.url}/stolen")
        async with outbound_client(permissive(), timeout=2) as client:
            res = await client.post(sink.url + "/batch/", content=b"ledger rows")
        assert res.status_code == 302
        assert answered(302) == ("the destination answered HTTP 302 (redirects are not followed)")
        assert target.requests == []
    finally:
        await target.stop()


async def test_an_answer_is_read_up_to_a_bound(sink: RecordingSink) -> None:
    sink.default = Answer(200, b"x" * (outbound.MAX_ANSWER_BYTES + 1))
    async with outbound_client(permissive(), timeout=2) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(sink.url + "/batch/")


def _certificate(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, leaf certificate, leaf key), PEM, the leaf valid for ``names``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


async def test_tls_is_verified_against_the_hostname_not_the_pinned_address(
    tmp_path: Any,
) -> None:
    ca_pem, cert_pem, key_pem = _certificate(["sink.example.com"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]
    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    sink = await RecordingSink().start(ssl_context=server_context)
    resolver = Answers([LOOPBACK])  # every name: the sink's address
    try:
        async with outbound_client(
            permissive(), timeout=5, resolver=resolver, verify=trusting
        ) as client:
            res = await client.post(f"https://sink.example.com:{sink.port}/batch/", content=b"x")
            assert res.status_code == 200
            assert sni == ["sink.example.com"]
            assert sink.requests[0]["headers"]["Host"] == f"sink.example.com:{sink.port}"
            # Same address, another name: the certificate does not name it.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(f"https://other.example.com:{sink.port}/batch/")
        assert len(sink.requests) == 1
    finally:
        await sink.stop()

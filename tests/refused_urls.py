"""URLs the outbound-URL policy must refuse, in the spellings an attacker would try, each
with the words its refusal must contain. ``{port}`` is a local sink's port: whatever the
spelling, nothing may reach it."""

from __future__ import annotations

REFUSED: list[tuple[str, str]] = [
    # loopback, in its many spellings
    ("http://127.0.0.1:{port}", "loopback address (127.0.0.1)"),
    ("http://[::1]:{port}", "loopback address (::1)"),
    ("http://2130706433:{port}", "loopback address (127.0.0.1)"),
    ("http://0x7f000001:{port}", "loopback address (127.0.0.1)"),
    ("http://017700000001:{port}", "loopback address (127.0.0.1)"),
    ("http://127.1:{port}", "loopback address (127.0.0.1)"),
    ("http://localhost:{port}", "loopback address"),
    ("http://[::ffff:127.0.0.1]:{port}", "loopback address"),
    ("http://[64:ff9b::7f00:1]:{port}", "loopback address"),  # NAT64
    ("http://[2002:7f00:1::]:{port}", "loopback address"),  # 6to4
    ("http://0.0.0.0:{port}", "unspecified address (0.0.0.0)"),
    ("http://0:{port}", "unspecified address (0.0.0.0)"),
    ("http://[::]:{port}", "unspecified address (::)"),
    # cloud metadata
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data", "cloud metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1", "cloud metadata"),
    ("http://metadata/computeMetadata/v1", "cloud metadata"),
    # private, shared, link-local, unique-local, multicast, reserved
    ("http://10.0.0.1", "private address (10.0.0.1)"),
    ("http://172.16.0.1", "private address (172.16.0.1)"),
    ("http://192.168.1.10", "private address (192.168.1.10)"),
    ("http://100.64.0.1", "shared (carrier-grade NAT) address"),
    ("http://169.254.10.10", "link-local address"),
    ("http://[fe80::1]", "link-local address (fe80::1)"),
    ("http://[fc00::1]", "unique-local address"),
    ("http://224.0.0.1", "multicast address"),
    ("http://240.0.0.1", "reserved address"),
    # credentials in the URL
    ("http://user:secret@example.com", "userinfo is not allowed"),
    ("http://user@127.0.0.1:{port}", "userinfo is not allowed"),
]


def refused_ids() -> list[str]:
    return [url.split("//", 1)[1].replace("{port}", "PORT") for url, _ in REFUSED]

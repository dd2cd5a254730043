"""The Host check's decisions (server/hosts.py), pure: which names a connection may send."""

from __future__ import annotations

import pytest

from modelrunner.server.hosts import HostPolicy, arrived_at_loopback, host_name


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:12434", "localhost"),
        ("127.0.0.1:1", "127.0.0.1"),
        ("[::1]:12434", "::1"),
        ("[::1]", "::1"),
        ("example.com:99999", "example.com"),
        ("example.com:", None),
        ("example.com:12a", None),
        ("[::1", None),
        ("[]", None),
        ("", None),
        ("a b", None),
        ("user@evil.example", None),
        ("evil/x", None),
        ("example.com:1234567", None),
    ],
)
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


def test_loopback_connections_take_only_loopback_names_and_allowed_hosts() -> None:
    """What a rebinding page sends (its own name) is refused; the loopback names are not."""
    policy = HostPolicy(lambda: ("models.team.test", ".corp.test"))
    ok = ["localhost", "localhost:12434", "127.0.0.1", "127.0.0.5:1", "[::1]:12434"]
    ok += ["models.team.test:12434", "corp.test", "a.b.corp.test", "app.localhost:3000"]
    ok += ["host.docker.internal:12434", "model-runner.docker.internal"]
    for host in ok:
        assert policy.allows(host, loopback=True), host
    bad = ["rebind.attacker.example:12434", "192.168.1.5:12434", "localhost.", "team.test"]
    bad += [
        "evilcorp.test",
        "localhost.attacker.example",
        "[::1",
        "",
        "docker.internal.evil.example",
    ]
    for host in bad:
        assert not policy.allows(host, loopback=True), host


def test_the_socket_and_hostless_requests_are_not_checked() -> None:
    policy = HostPolicy(lambda: ())
    assert policy.allows("rebind.attacker.example", loopback=None)
    assert policy.allows(None, loopback=True)


def test_beyond_loopback_the_keys_guard_unless_allowed_hosts_is_set() -> None:
    """Remote clients name the machine as they know it; once allowed_hosts is set, only those
    names (and IP literals, which a rebound name never is) are served."""
    assert HostPolicy(lambda: ()).allows("box.lan:12434", loopback=False)
    policy = HostPolicy(lambda: ("box.lan",))
    assert policy.allows("box.lan:12434", loopback=False)
    assert policy.allows("10.0.0.5:12434", loopback=False)
    assert not policy.allows("rebind.attacker.example", loopback=False)


def test_a_reload_of_allowed_hosts_applies_at_once() -> None:
    allowed: list[str] = []
    policy = HostPolicy(lambda: tuple(allowed))
    assert not policy.allows("box.lan", loopback=True)
    allowed.append("box.lan")
    assert policy.allows("box.lan", loopback=True)
    assert HostPolicy(lambda: ("*",)).allows("anything.example", loopback=True)


@pytest.mark.parametrize(
    ("sockname", "loopback"),
    [
        (("127.0.0.1", 12434), True),
        (("::1", 12434, 0, 0), True),
        (("::ffff:127.0.0.1", 12434, 0, 0), True),
        (("10.0.0.5", 12434), False),
        (("fe80::1%eth0", 12434, 0, 2), False),
        ("/tmp/model-runner.sock", None),
        (None, True),
    ],
)
def test_where_a_connection_arrived(sockname: object, loopback: bool | None) -> None:
    assert arrived_at_loopback(sockname) is loopback

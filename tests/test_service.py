"""MailHub assembly in memory: what it tells whoever starts it."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from txmailhub.config import load_text
from txmailhub.service import MailHub


def test_start_logs_the_users_file_problems(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1"]\n[submission]\nlisten = []\n'
        '[pop3]\nlisten = []\n'
    )
    (tmp_path / "users").write_text("joe@example.org notahash\ngarbage\n")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    reactor = MemoryReactorClock()
    hub = MailHub(load_text(config.read_text(), str(config)), reactor=reactor)
    try:
        hub.startService()
        [(port, _factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (25, "127.0.0.1")
        problems = [e["problem"] for e in events if e.get("log_format", "").startswith("users")]
        users = str(tmp_path / "users")
        assert problems == [
            f"{users}:1: joe@example.org cannot log in: the password hash is not of the "
            "form scrypt$N$r$p$salt$key",
            f"{users}:2: expected '<address> <hash> [apop=<secret>]'",
        ]
    finally:
        globalLogPublisher.removeObserver(events.append)
        hub.stopService()


def test_stopping_the_hub_says_421_to_open_smtp_sessions(tmp_path: Path) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1"]\n[submission]\nlisten = []\n'
        '[pop3]\nlisten = []\n'
    )
    reactor = MemoryReactorClock()
    hub = MailHub(load_text(config.read_text(), str(config)), reactor=reactor)
    hub.startService()
    [(_port, factory, _backlog, _interface)] = reactor.tcpServers
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"EHLO client.example\r\n")
    transport.clear()
    hub.stopService()
    assert transport.value() == b"421 4.3.2 mail.example.org Service shutting down\r\n"
    assert transport.disconnecting


def test_the_state_folder_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
                      '[pop3]\nlisten = []\n')
    old = os.umask(0)
    try:
        MailHub(load_text(config.read_text(), str(config)), reactor=MemoryReactorClock())
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def _tap_options(tmp_path: Path, state_dir: str, parent: dict | None = None):
    from txmailhub.tap import Options

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'state_dir = "{state_dir}"\n[smtp]\nlisten = []\n[submission]\n'
                      'listen = []\n[pop3]\nlisten = []\n')
    options = Options()
    options.parseOptions(["--config", str(config)])
    if parent is not None:
        options.parent = parent
    return options


def test_twistd_names_a_state_dir_it_cannot_use(tmp_path: Path, capsys) -> None:
    # a one-line reason and exit 2, as for a bad config: not a traceback
    import pytest

    from txmailhub.tap import makeService

    (tmp_path / "afile").write_text("")
    options = _tap_options(tmp_path, "afile/state")
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mailhub: cannot use {tmp_path}/afile/state")
    assert "must belong to the user the hub runs as" in err
    assert "Traceback" not in err


def test_twistd_uid_gets_what_root_made_in_the_state_dir(tmp_path: Path, monkeypatch) -> None:
    # `twistd -u mailhub -g mailhub mailhub ...` builds the hub as root and
    # switches user only afterwards: spool/, queue/, mail/ and spool.lock
    # made in between must belong to mailhub, or the hub cannot start
    import os

    from txmailhub import tap

    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "old").write_text("")  # was there before: left alone
    given: dict[str, tuple[int, int]] = {}
    monkeypatch.setattr(tap.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tap.os, "lchown", lambda p, u, g: given.__setitem__(p, (u, g)))
    options = _tap_options(tmp_path, "state", parent={"uid": 4242, "gid": 4343})
    tap.makeService(options)
    state = str(tmp_path / "state")
    made = set(os.listdir(state)) - {"old"}
    assert {"spool", "spool.lock"} <= made
    for name in made:
        assert given[os.path.join(state, name)] == (4242, 4343)
    assert os.path.join(state, "old") not in given
    assert state not in given  # it existed: the admin made it for that user


def test_twistd_without_uid_changes_no_owner(tmp_path: Path, monkeypatch) -> None:
    from txmailhub import tap

    given: list[str] = []
    monkeypatch.setattr(tap.os, "lchown", lambda p, u, g: given.append(p))
    tap.makeService(_tap_options(tmp_path, "state", parent={"uid": None, "gid": None}))
    assert given == []

"""``txmailhub.listen_spec``: listen endpoints read without Twisted mean
what Twisted's ``serverFromString`` makes of them, and the sendmail
command's path never imports ``twisted.internet.endpoints``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from txmailhub import config
from txmailhub.listen_spec import ListenSpec, parse_listen
from txmailhub.sendmail import hub_targets


def twisted_reads(description: str) -> ListenSpec | None:
    """What Twisted's endpoint holds, or None when it refuses the string."""
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:
        return None
    if isinstance(getattr(endpoint, "_address", None), str):
        return ListenSpec("unix", path=endpoint._address)
    return ListenSpec(description.split(":", 1)[0].lower(), endpoint._port, endpoint._interface)


COMMON = [
    ("tcp:25", ListenSpec("tcp", 25, "")),
    ("tcp:2525:interface=127.0.0.1", ListenSpec("tcp", 2525, "127.0.0.1")),
    ("tcp:2525:127.0.0.1", ListenSpec("tcp", 2525, "127.0.0.1")),
    ("tcp:port=25:backlog=5", ListenSpec("tcp", 25, "")),
    ("tcp:0", ListenSpec("tcp", 0, "")),
    ("tcp:0025:interface=", ListenSpec("tcp", 25, "")),
    ("tcp:70000", ListenSpec("tcp", 70000, "")),  # read; the config judges the range
    ("tcp6:26", ListenSpec("tcp6", 26, "::")),
    ("tcp6:26:interface=\\:\\:1", ListenSpec("tcp6", 26, "::1")),
    ("tcp6:26:50:\\:\\:1", ListenSpec("tcp6", 26, "::1")),
    ("tcp:25:interface=a:interface=127.0.0.2", ListenSpec("tcp", 25, "127.0.0.2")),
    ("unix:/run/mailhub/smtp.sock", ListenSpec("unix", path="/run/mailhub/smtp.sock")),
    ("unix:/run/smtp.sock:mode=660:lockfile=0", ListenSpec("unix", path="/run/smtp.sock")),
    ("unix:address=/run/a\\:b=c", ListenSpec("unix", path="/run/a:b=c")),
    ("unix:", ListenSpec("unix", path="")),
]


@pytest.mark.parametrize(("description", "spec"), COMMON)
def test_the_common_forms_are_read_as_twisted_reads_them(
        description: str, spec: ListenSpec) -> None:
    assert parse_listen(description) == spec == twisted_reads(description)


@pytest.mark.parametrize("description", [
    "TCP6:25", "port=25:tcp", "tcp: 25", "tcp:+25", "tcp:2_5", "tcp:\u0662\u0665",
    "tcp:25:iface=x", "tcp:25:port=26", "tcp:25:a:b:c", "unix:/x:mode=8", "tcp", "ssl:443",
    "tcp:25\\", "tcp:25:interface=::1", "unix:mode=660",
])
def test_what_it_is_not_sure_of_is_left_to_twisted(description: str) -> None:
    assert parse_listen(description) is None


_PIECES = st.sampled_from([
    "tcp", "tcp6", "unix", "TCP", "Unix", ":", ":", ":", "=", "\\", "\\:", "25", "0", "007",
    "65536", "-1", "+1", " 1", "1_0", "\u0662", "8", "port", "interface", "backlog", "mode",
    "lockfile", "address", "reactor", "127.0.0.1", "::1", "/run/s", "a", "",
])

_VALUES = st.one_of(
    st.sampled_from(["25", "0", "007", "65536", "", "127.0.0.1", "\\:\\:1", "/run/s", "660",
                     "8", "-1", "+1", "a", "1" * 5000]),
    st.text("0123456789:=\\ +_/.a", max_size=6),
)
_ARGUMENT = st.one_of(_VALUES, st.tuples(
    st.sampled_from(["port", "interface", "backlog", "mode", "lockfile", "address", "x"]),
    _VALUES).map("=".join))
# a type and arguments: strings of the shape listen entries have
_DESCRIPTIONS = st.one_of(
    st.lists(_PIECES, max_size=9).map("".join),
    st.tuples(st.sampled_from(["tcp", "tcp6", "unix", "TCP6"]),
              st.lists(_ARGUMENT, max_size=4)).map(lambda t: ":".join([t[0], *t[1]])),
)


@given(_DESCRIPTIONS)
def test_whatever_it_reads_twisted_reads_the_same(description: str) -> None:
    spec = parse_listen(description)
    if spec is not None:
        assert twisted_reads(description) == spec


def _without_fast_path():  # type: ignore[no-untyped-def]
    return mock.patch("txmailhub.config.parse_listen", lambda description: None)


def _checked(description: str) -> str | None:
    try:
        config.check_endpoint(description)
    except ValueError as e:
        return str(e)
    return None


@given(_DESCRIPTIONS)
def test_the_config_accepts_and_refuses_the_same_strings_as_before(description: str) -> None:
    fast = _checked(description)
    with _without_fast_path():
        assert _checked(description) == fast
    if fast is None:
        spec = config._listen_spec(description)
        with _without_fast_path():
            assert config._listen_spec(description) == spec


def test_hub_targets_are_the_same_as_with_twisted_s_parser() -> None:
    listen = [description for description, _ in COMMON if "70000" not in description
              and "interface=a:" not in description]
    fast = hub_targets(listen)
    with _without_fast_path():
        assert hub_targets(listen) == fast
    assert len(fast) == len(listen) - 1  # all but tcp:0


SCRIPT = """
import io, sys
from txmailhub.sendmail import run
err = io.StringIO()
status = run(sys.argv[2:], sys.argv[1], "sendmail", io.BytesIO(b"Subject: x\\n\\nx\\n"), err,
             io.StringIO())
loaded = sorted(m for m in sys.modules if m.startswith("twisted.internet"))
print(status, loaded, err.getvalue().replace("\\n", " "))
"""


@pytest.mark.parametrize("argv", [["-bi"], ["-f", "joe@example.org", "bob"], ["-t"]])
def test_the_command_does_not_import_twisted_endpoints(argv: list[str], tmp_path: Path) -> None:
    conf = tmp_path / "mailhub.toml"
    conf.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ['
                    '"unix:sock/smtp.sock:mode=660", "tcp:1:interface=127.0.0.1", '
                    '"tcp6:1:interface=\\\\:\\\\:1"]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(conf), *argv], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    status, rest = done.stdout.split(" ", 1)
    assert rest.startswith("[] "), done.stdout  # no twisted.internet module at all
    # the hub is not running: every listener tried, none reached (or -bi: nothing to do)
    assert status == ("0" if argv == ["-bi"] else "75" if argv[0] == "-f" else "65"), rest


@pytest.mark.parametrize("description", [
    "tcp:25:backlog=" + "1" * 5000, "tcp6:25:" + "1" * 5000, "unix:/run/s:lockfile=" + "1" * 5000,
    "unix:/run/s:660:" + "1" * 5000, "tcp:" + "2" * 5000,
])
def test_a_number_too_long_for_int_is_refused_as_twisted_refuses_it(description: str) -> None:
    # int() reads at most sys.get_int_max_str_digits() decimal digits
    assert twisted_reads(description) is None
    assert parse_listen(description) is None
    assert _checked(description) is not None

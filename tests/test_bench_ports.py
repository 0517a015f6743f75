"""bench/benchlib.py: a benchmark target gets the port it was given, or new ones.

A port is picked free (bound, read, released) and the server, started
later, binds it; another process may take it in between.  The server then
dies with "address already in use", or, worse, ``wait_port`` took the other
process's answer for the server's and the benchmark measured whatever
listens there.  Here the test's own socket takes the port first, on
purpose: ``free_port`` is made to hand out its port before any free one.
The servers are small Python processes on 127.0.0.1 (the floor of
bench/peers on the project's Twisted, or a few lines run with ``-c``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bl(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/benchlib.py, its servers run with this Python (the project's,
    wherever the clone is)."""
    spec = importlib.util.spec_from_file_location("bench_benchlib", BENCH / "benchlib.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PROJECT_BIN", os.path.dirname(sys.executable))
    return module


@contextlib.contextmanager
def thieves() -> Iterator[list[socket.socket]]:
    """Sockets of this test holding ports of 127.0.0.1 (listening, never
    accepting, or only bound); closed at the end."""
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def take_port(held: list[socket.socket], listen: bool = True) -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if listen:
        s.listen(1)
    held.append(s)
    return s.getsockname()[1]


def taken_first(monkeypatch: pytest.MonkeyPatch, bl: ModuleType, ports: list[int]) -> None:
    """``free_port`` hands out ``ports`` first (taken, by this test), then
    free ones: the race lost, every time."""
    pick = bl.free_port
    queue = list(ports)
    monkeypatch.setattr(bl, "free_port", lambda: queue.pop(0) if queue else pick())


@contextlib.contextmanager
def child(code: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()


LISTENS = """
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
if {fork}:  # the listener then is a child's only (a server of several processes)
    r, w = os.pipe()
    if os.fork():
        s.close()
        os.write(w, b"x")
        os.wait()
        sys.exit(0)
    os.read(r, 1)
print(s.getsockname()[1], flush=True)
time.sleep(600)
"""


def floor(bl: ModuleType, tmp_path: Path):
    return bl.floor_server(str(tmp_path / "work"), str(tmp_path / "maildir"), "none", "floor")


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        return s.recv(100)


def test_wait_port_is_not_fooled_by_another_process_listening_there(bl) -> None:
    # it connected, and returned: a server that had not bound its port yet
    # (and never would) was taken for listening
    with thieves() as held, child("import time; time.sleep(600)") as proc:
        port = take_port(held)
        with pytest.raises(bl.PortTaken, match=f"127.0.0.1:{port} is another process's"):
            bl.wait_port(port, 60, proc)
        assert proc.poll() is None  # said at once, not when the server gives up


@pytest.mark.parametrize("fork", [False, True], ids=["itself", "its-child"])
def test_wait_port_returns_once_the_server_listens(bl, fork) -> None:
    with child(LISTENS.format(fork=fork)) as proc:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        bl.wait_port(port, 60, proc)
        assert bl.port_owner(port, bl.process_tree(proc.pid)) == "ours"
        assert bl.port_owner(port, [os.getpid()]) == "foreign"


def test_a_listener_on_the_port_in_any_form_is_seen(bl) -> None:
    # a connection to 127.0.0.1:PORT lands on an IPv6 socket bound to the
    # mapped address too, and such a socket blocks the server's bind
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::ffff:127.0.0.1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv4-mapped IPv6 here: {exc}")
        port = s.getsockname()[1]
        assert bl.port_owner(port, [os.getpid()]) == "none"  # bound, not listening
        s.listen(1)
        assert bl.port_owner(port, [os.getpid()]) == "ours"
        assert bl.port_owner(port, []) == "foreign"


def test_a_server_whose_port_another_process_listens_on_starts_again_on_a_new_one(
        bl, monkeypatch, tmp_path) -> None:
    # the server was "started" on the taken port: the benchmark would have
    # measured the process that listens there
    with thieves() as held:
        taken = take_port(held)
        taken_first(monkeypatch, bl, [taken])
        server = floor(bl, tmp_path)
        try:
            server.start()
            assert server.port != taken
            assert f"127.0.0.1:{server.port}" in server.argv
            assert bl.port_owner(server.port, bl.process_tree(server.pid)) == "ours"
            assert greeting(server.port).startswith(b"220 floor")
        finally:
            server.stop()


def test_a_server_that_exits_with_address_in_use_starts_again_on_a_new_port(
        bl, monkeypatch, tmp_path, capsys) -> None:
    # a port held without a listener: the server cannot bind it and exits;
    # that start failed, and the target was left out of the run
    with thieves() as held:
        taken = take_port(held, listen=False)
        taken_first(monkeypatch, bl, [taken])
        server = floor(bl, tmp_path)
        try:
            server.start()
            assert server.port != taken
            assert greeting(server.port).startswith(b"220 floor")
        finally:
            server.stop()
    out = capsys.readouterr().out
    assert "floor: server exited with 1 before listening" in out, out
    assert "address already in use (floor.log); starting it again on new ports" in out, out


def test_a_hub_has_each_of_its_listeners_picked_again(bl, monkeypatch, tmp_path) -> None:
    # txmailhub listens for SMTP and POP3: a taken POP3 port (not the one
    # the SMTP benchmark uses) makes it exit all the same.  The hub is not
    # run: its command line and config are made for each try's ports
    with thieves() as held:
        smtp, pop3 = take_port(held), take_port(held)
        taken_first(monkeypatch, bl, [smtp, pop3])
        monkeypatch.setattr(bl, "hub_add_user", lambda config: None)
        server = bl.hub_server(str(tmp_path / "work"), str(tmp_path / "state"))
        assert server.roles == ("smtp", "pop3") and server.main == "smtp"
        first = bl.pick_ports(server.roles)
        assert first == {"smtp": smtp, "pop3": pop3}
        server.command(first)
        config = (tmp_path / "work" / "mailhub.toml").read_text()
        assert f"tcp:{smtp}:interface" in config and f"tcp:{pop3}:interface" in config
        again = bl.pick_ports(server.roles)
        assert not {smtp, pop3} & set(again.values()) and len(set(again.values())) == 2
        server.command(again)
        config = (tmp_path / "work" / "mailhub.toml").read_text()
        assert f"tcp:{again['pop3']}:interface" in config and f"tcp:{pop3}:" not in config
        server.ports = again
        assert server.port == again["smtp"] and server.pop3_port == again["pop3"]
        server.main = "pop3"
        assert server.port == again["pop3"]


def test_a_server_that_never_gets_a_port_is_given_up_with_why(bl, monkeypatch, tmp_path) -> None:
    with thieves() as held:
        taken_first(monkeypatch, bl, [take_port(held) for _ in range(3)])
        server = floor(bl, tmp_path)
        with pytest.raises(bl.PortTaken):
            server.start(tries=2)
        assert server.proc is None  # stopped
        # start_each leaves such a target out of the run, with a line
        with pytest.raises(SystemExit, match="no target started"):
            bl.start_each(["floor"], lambda name: server.start(tries=1))


DAEMON = r"""
import os, socket, sys, time
port = int(sys.argv[1])
if sys.argv[2] == "wrapper" and os.fork():
    time.sleep(600)  # the server's process stays, and its fork daemonises
parent = os.getpid()
if os.fork():
    os._exit(0)  # the parent exits, as a daemon's does
os.setsid()  # out of its process group too
while os.getppid() == parent:  # until the harness (its subreaper) adopted it
    time.sleep(0.01)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(1)
time.sleep(600)
"""

HARNESS = r"""
import importlib.util, json, os, signal, sys
spec = importlib.util.spec_from_file_location("bench_benchlib", sys.argv[1])
bl = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bl
spec.loader.exec_module(bl)
bl.become_subreaper()  # as bench/*.py are (Servers)
ports = []

def command(given):
    ports.append(given["smtp"])
    return [sys.executable, "-c", sys.argv[3], str(given["smtp"]), sys.argv[4]]

server = bl.Server("daemon", command, ("smtp",), sys.argv[2])
try:
    server.start(timeout=60, tries=3)
    result = "started"
    server.stop()
except RuntimeError as exc:
    result = f"{type(exc).__name__}: {exc}"
left = [port for port in ports if bl.listening_inodes(port)]
for pid in bl.process_tree(os.getpid())[1:]:  # whatever is left, by this process's hand
    os.kill(pid, signal.SIGKILL)
for pid in bl.process_tree(os.getpid())[1:]:
    os.waitpid(pid, 0)
print(json.dumps({"ports": ports, "result": result, "left": left}))
"""


@pytest.mark.parametrize("how", ["daemon", "wrapper"])
def test_a_server_that_daemonises_is_neither_blamed_on_another_process_nor_left_running(
        tmp_path, how) -> None:
    # a parent exits, its fork (adopted by the harness, the subreaper)
    # listens: the server's own socket was "another process's listening
    # port", the server started again on new ports, and each try left a
    # daemon listening, never stopped (out of the server's tree and group).
    # Run in a process of its own: the subreaper stays one for good
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(BENCH / "benchlib.py"), str(tmp_path / "d.log"),
         DAEMON, how], capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(done.stdout.splitlines()[-1])
    assert len(out["ports"]) == 1, out  # one start: no port was taken
    assert "another process" not in out["result"], out
    if how == "wrapper":  # its process still runs: a server that listens
        assert out["result"] == "started", out
    assert out["left"] == [], out  # stopped with the server

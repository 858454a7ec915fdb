"""mcd --metrics: the live figures in Prometheus' format, read by its own parser."""

from __future__ import annotations

import os
import select
import shlex
import socket
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, wait_until
from support.cli import run as run_mcctl
from support.mcd import Mcd

from mc_daemon import metrics
from mc_daemon.core import DaemonCore
from mc_daemon.metrics import MAX_SCRAPES, MetricsServer, parse_address

parser = pytest.importorskip("prometheus_client.parser", reason="needs prometheus-client: pip install '.[test]'")


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def mcd(metrics_port: int) -> Iterator[Mcd]:
    daemon = Mcd(None, "--metrics", f"127.0.0.1:{metrics_port}", "--metrics-per-client").start()
    yield daemon
    daemon.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_endpoint_parses_and_counts_what_the_instances_did(mcd: Mcd, metrics_port: int) -> None:
    mcd.connect_hosted_pair("rover")
    for n in range(3):
        mcd.request("client.send", subject="up", payload={"n": n})
    client = (("instance", "default"), ("kind", "client"))
    server = (("instance", "default"), ("kind", "server"))
    rover = (("client", "rover"), ("instance", "default"))
    received = ("missioncommander_messages_received_total", server)
    wait_until(lambda: scrape(metrics_port).get(received) == 3, what="3 messages at the server")
    samples = scrape(metrics_port)
    assert samples[("missioncommander_messages_sent_total", client)] == 3
    assert samples[("missioncommander_server_client_messages_received_total", rover)] == 3
    assert samples[("missioncommander_server_client_connected", rover)] == 1
    assert samples[("missioncommander_connected", client)] == 1
    assert samples[("missioncommander_clients", server)] == 1
    assert samples[("missioncommander_max_queued", client)] == 10_000
    assert samples[("missioncommander_running", server)] == 1
    assert ("missioncommander_running", client) not in samples  # a client's is `connected`
    assert ("missioncommander_cluster_ready", server) not in samples  # not in a cluster
    assert samples[("mcd_uptime_seconds", ())] > 0
    assert samples[("mcd_subscribers_cut_off_total", ())] == 0
    assert ("process_open_fds", ()) in samples  # mcd's own, from prometheus-client
    # Where to scrape is in mcd's status, for whoever forgot what the unit says.
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    assert mcd.request("daemon.status")["metrics"] == url
    status = run_mcctl("daemon", "status", socket_path=mcd.socket)
    assert status.returncode == 0 and f"metrics    {url}" in status.stdout
    # A sum over every label means something (Prometheus' rule): the server's
    # totals and its per-client figures are not one family counted twice.
    for name in ("missioncommander_messages_received_total", "missioncommander_messages_sent_total"):
        assert sum(value for (sample, _), value in samples.items() if sample == name) == 3
    # A server that stopped listening says so (what an alert watches).
    mcd.request("server.stop")
    assert scrape(metrics_port)[("missioncommander_running", server)] == 0


def test_a_series_per_client_only_when_asked(metrics_port: int) -> None:
    # Client ids are as many as the clients a server ever saw: by default
    # Prometheus gets the server's own figures only.
    daemon = Mcd(None, "--metrics", str(metrics_port)).start()
    try:
        daemon.connect_hosted_pair("rover")
        server = (("instance", "default"), ("kind", "server"))
        wait_until(lambda: scrape(metrics_port).get(("missioncommander_clients", server)) == 1, what="the client")
        names = {name for name, _ in scrape(metrics_port)}
        assert daemon.request("daemon.status")["metrics"] == f"http://127.0.0.1:{metrics_port}/metrics"
        assert "missioncommander_connects_total" in names
        assert not any(name.startswith("missioncommander_server_client_") for name in names)
    finally:
        daemon.close()
    command = [sys.executable, "-m", "mc_daemon", "--metrics-per-client"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "goes with --metrics" in out.stderr and "Traceback" not in out.stderr


def test_metrics_listen_on_loopback_by_default_and_bad_addresses_are_refused() -> None:
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address(":9100") == ("127.0.0.1", 9100)
    assert parse_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    command = [sys.executable, "-m", "mc_daemon", "--metrics", "localhost:99999"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "a port from 1 to 65535" in out.stderr and "Traceback" not in out.stderr
    # '::1:9100' is also an address of its own: only brackets say which group is the port.
    command = [sys.executable, "-m", "mc_daemon", "--metrics", "::1:9100"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "goes in brackets, as [::1]:30000" in out.stderr and "Traceback" not in out.stderr


def test_without_prometheus_client_mcd_names_the_command_that_installs_it_here(tmp_path: Path) -> None:
    """From a checkout, ``pip install 'missioncommander[metrics]'`` would
    fetch whatever PyPI holds under that name: the command names this
    checkout, and the Python mcd runs on."""
    # As without the metrics extra: `import prometheus_client` fails.
    code = "import sys; sys.modules['prometheus_client'] = None; from mc_daemon.main import main; sys.exit(main())"
    sock = tmp_path / "mcd.sock"
    out = subprocess.run(
        [sys.executable, "-c", code, "--metrics", "9100", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    root = Path(__file__).resolve().parents[2]
    command = f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(f'{root}[metrics]')}"
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"mcd: --metrics needs prometheus-client: {command}"


@pytest.mark.parametrize(
    ("family", "host", "shown"), [(socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")]
)
def test_a_metrics_port_in_use_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, family: socket.AddressFamily, host: str, shown: str
) -> None:
    with socket.socket(family) as taken:
        try:
            taken.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} on this machine")
        taken.listen()
        port = taken.getsockname()[1]
        sock = tmp_path / "mcd.sock"
        command = [sys.executable, "-m", "mc_daemon", "--socket", str(sock), "--state-dir", str(tmp_path / "state")]
        command += ["--metrics", f"{shown}:{port}"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1 and f"cannot serve metrics on {shown}:{port}: " in out.stderr
    assert "Traceback" not in out.stderr and not sock.exists()


def ended_by_the_server(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has closed (they read as ended)."""
    readable, _, _ = select.select(socks, [], [], 0.2)
    return sum(1 for sock in readable if sock.recv(1 << 16) == b"")


def answers(port: int) -> bool:
    """Whether a scrape gets mcd's figures now (not a closed connection)."""
    try:
        return ("mcd_uptime_seconds", ()) in scrape(port)
    except OSError:  # URLError, RemoteDisconnected, a reset
        return False


def test_idle_and_rude_scrapers_cost_mcd_no_more_than_a_few_threads(mcd: Mcd, metrics_port: int) -> None:
    """prometheus-client's own server started a thread for each connection
    and let it wait as long as the peer sent nothing: 300 half-sent
    requests were 300 threads in mcd, and a scraper that reset its
    connection printed a traceback on mcd's standard error. Scrapes under
    way are bounded now, and the connections past them closed at once."""
    assert mcd.proc is not None
    tasks = f"/proc/{mcd.proc.pid}/task"
    before = len(os.listdir(tasks))
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=10) for _ in range(MAX_SCRAPES + 40)]
    try:
        for sock in idle:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        closed = 0

        def past_the_bound_closed() -> bool:
            nonlocal closed
            closed += ended_by_the_server(idle)
            return closed >= 40

        wait_until(past_the_bound_closed, what="the connections past the bound to be closed")
        assert len(os.listdir(tasks)) <= before + MAX_SCRAPES
    finally:
        for sock in idle:
            sock.close()
    # A request too long for the server, reset by its sender mid-answer.
    rude = socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rude.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    rude.close()
    # Once the idle connections' threads have seen them end, scrapes go on.
    wait_until(lambda: answers(metrics_port), what="a scrape to be answered")
    wait_until(lambda: len(os.listdir(tasks)) <= before, what="the scrape threads to end")
    assert "Traceback" not in (mcd.root / "mcd.log").read_text()


def test_a_scraper_that_says_nothing_is_cut_off_after_the_scrape_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics._Handler, "timeout", 0.2)
    server = MetricsServer(DaemonCore(store=None), ("127.0.0.1", 0), max_scrapes=1)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            # It holds the only slot until the server gives up on it.
            assert silent.recv(1) == b""
        # The slot is free again once the scrape's thread has ended, just
        # after the close: a scrape in that instant is closed too.
        wait_until(lambda: answers(server.port), what="a scrape to be answered")
    finally:
        server.close()

"""MissionCommander against plain sockets, pyzmq and MQTT (paho + mosquitto), in one run.

    bash bench/run.sh                 # installs what it needs, then runs this
    python3 bench/run.py [--reps 3] [--quick] [--scale 1000,5000,10000] [--results bench/RESULTS.md]

Every system runs every scenario in every repetition, interleaved; each
server runs in its own process, the clients in this one.  Ratios are taken
within a repetition (absolute figures drift on a shared machine), then the
median over repetitions is reported.  Every scenario checks sequence numbers:
a lost or duplicated message fails the run.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))
import aio_scenarios
from systems import SYSTEMS
from timing import p50_p99, timed

HERE = Path(__file__).parent
MC_SYSTEMS = ("missioncommander", "mc-pooled", "mc-fast")
#: Systems whose clients are asyncio code: their scenarios are aio_scenarios'.
ASYNC_SYSTEMS = ("mc-async", "mc-uvloop", "asyncio", "uvloop")
FILLER = "x" * 100
WAIT = 120.0


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _two_free_ports() -> int:
    """Two free ports in a row, below the ephemeral range: after the idle-client
    runs, thousands of connections linger in TIME_WAIT on ephemeral ports."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low - 1)
        try:
            with socket.create_server(("127.0.0.1", port)), socket.create_server(("127.0.0.1", port + 1)):
                return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


class ServerProcess:
    def __init__(self, system: str, env: dict[str, str]) -> None:
        # zmq uses port and port + 1, and either may be taken between our
        # check and its bind (an outgoing connection's port): a few tries.
        for _ in range(5):
            self.port = _two_free_ports()
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "serve", system, str(self.port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().startswith("READY"):
                return
            self.stop()
        raise RuntimeError(f"{system} server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


class Inbox:
    """Collects a client's messages; waits on a condition, never on time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.count = 0
        #: Until the marker broadcast, broadcasts are subscription probes.
        self.settling = True
        self.marked = False

    def __call__(self, subject: str, payload: dict[str, Any]) -> None:
        with self.cond:
            if subject == "bcast" and self.settling:
                self.count += 1
                self.marked = self.marked or bool(payload.get("marker"))
            elif subject == "bcast":
                self.count += 1
                if payload["seq"] != self.count - 1:
                    raise AssertionError(f"broadcast out of order: {payload['seq']} after {self.count - 2}")
            else:
                self.items.append((subject, payload))
            self.cond.notify_all()

    def take(self, subject: str, timeout: float = WAIT) -> dict[str, Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(s == subject for s, _ in self.items), timeout)
            if not ok:
                raise TimeoutError(f"no {subject!r} within {timeout} s")
            for i, (s, p) in enumerate(self.items):
                if s == subject:
                    del self.items[i]
                    return p
        raise AssertionError("unreachable")

    def wait_count(self, count: int, timeout: float = WAIT) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= count, timeout):
                raise TimeoutError(f"{self.count} of {count} broadcasts arrived")


def connect(system: str, port: int, client_id: str, inbox: Inbox) -> Any:
    return SYSTEMS[system][1](port, client_id, inbox)


def latencies(n: int, round_trip: Callable[[int], dict[str, Any]]) -> dict[str, float]:
    """p50 and p99 of ``n`` round trips (after 50 to warm up), each checked:
    ``round_trip(seq)`` returns the answer, which must carry ``seq``."""
    for seq in range(min(50, n)):
        round_trip(seq)
    return p50_p99(timed(n, round_trip))


def scenario_echo(system: str, port: int, n: int, size: int = 100) -> dict[str, float]:
    if system in ASYNC_SYSTEMS:
        return aio_scenarios.echo(port, n, size)
    inbox = Inbox()
    client = connect(system, port, "echo-client", inbox)
    filler = "x" * size

    def echo(seq: int) -> dict[str, Any]:
        client.send("echo", {"message": filler, "seq": seq})
        return inbox.take("echo")

    try:
        return latencies(n, echo)
    finally:
        client.close()


#: Systems with a request/reply of their own (the others' echo is the figure to compare).
REQUEST_SYSTEMS = ("missioncommander", "mc-pooled", "mc-fast", "mc-async", "mc-uvloop", "pyzmq")


def scenario_request(system: str, port: int, n: int) -> dict[str, float]:
    """Request/reply round trips: MissionCommander's ``request()`` (which
    survives a reconnect) against pyzmq's REQ socket (which does not)."""
    if system in ASYNC_SYSTEMS:
        return aio_scenarios.request(port, n)
    client = connect(system, port, "request-client", Inbox())
    filler = "x" * 100
    try:
        return latencies(n, lambda seq: client.request("ask", {"message": filler, "seq": seq}))
    finally:
        client.close()


def scenario_c2s(system: str, port: int, n: int) -> dict[str, float]:
    if system in ASYNC_SYSTEMS:
        return aio_scenarios.c2s(port, n)
    inbox = Inbox()
    client = connect(system, port, "sink-client", inbox)
    try:
        t0 = time.perf_counter()
        for seq in range(n):
            client.send("sink", {"message": FILLER, "seq": seq, "last": n - 1})
        done = inbox.take("done")
        elapsed = time.perf_counter() - t0
    finally:
        client.close()
    if done["received"] != n:
        raise AssertionError(f"the server received {done['received']} of {n}")
    return {"msgs_per_s": n / elapsed}


def scenario_broadcast(system: str, port: int, clients: int, count: int, iterate: bool = False) -> dict[str, float]:
    if system in ASYNC_SYSTEMS:
        return aio_scenarios.broadcast(port, clients, count, _server_cpu, iterate)
    if iterate:
        return {}  # only asyncio clients read an iterator; the others call back, as they all do above
    inboxes = [Inbox() for _ in range(clients)]
    conns = [connect(system, port, f"b{i}", inbox) for i, inbox in enumerate(inboxes)]
    try:
        # Everyone is attached (zmq/MQTT subscriptions settle asynchronously).
        for c, inbox in zip(conns, inboxes, strict=True):
            c.send("echo", {"seq": 0})
            inbox.take("echo")
        _settle_subscriptions(system, conns[0], inboxes)
        cpu0 = _server_cpu()
        t0 = time.perf_counter()
        conns[0].send("go", {"count": count})
        for inbox in inboxes:
            inbox.wait_count(count)
        elapsed = time.perf_counter() - t0
        cpu = _server_cpu() - cpu0  # measured from outside: sends may finish after "done"
        inboxes[0].take("done")
        for inbox in inboxes:
            if inbox.count != count:
                raise AssertionError(f"{inbox.count} of {count} broadcasts (duplicates?)")
    finally:
        for c in conns:
            c.close()
    deliveries = clients * count
    return {"deliveries_per_s": deliveries / elapsed, "server_cpu_us_per_delivery": cpu / deliveries * 1e6}


SERVER_PID = 0  # the server process of the scenario running now


def _server_cpu() -> float:
    times = psutil.Process(SERVER_PID).cpu_times()
    return float(times.user + times.system)


def _settle_subscriptions(system: str, client: Any, inboxes: list[Inbox]) -> None:
    """PUB/SUB drops what is published before a subscription reaches the
    publisher: one-message broadcasts until every client has seen one prove
    that they all have.  A marker broadcast then flushes the rest (delivery is
    ordered per subscriber), and the counts start again from zero."""
    if system in ("pyzmq", "mqtt"):
        for _ in range(100):
            client.send("go", {"count": 1})
            inboxes[0].take("done")
            if all(inbox.count for inbox in inboxes):
                break
        else:
            raise TimeoutError("subscriptions never settled")
    client.send("go", {"count": 1, "marker": True})
    inboxes[0].take("done")
    for inbox in inboxes:
        with inbox.cond:
            if not inbox.cond.wait_for(lambda inbox=inbox: inbox.marked, WAIT):
                raise TimeoutError("the marker broadcast did not arrive")
            inbox.count = 0
            inbox.settling = False


def scenario_scale(system: str, port: int, total: int) -> dict[str, float]:
    """``total`` clients on one server: the probe that reads the server's
    figures, then ``total - 1`` idle ones, timed (a server at its default
    ``max_clients`` of 10,000 takes a 10,000-client run)."""
    probe_inbox = Inbox()
    probe = connect(system, port, "probe", probe_inbox)
    probe.send("stats", {})
    before = probe_inbox.take("stats")
    clients = total - 1
    if system == "pyzmq":
        # Four descriptors per zmq client here (two TCP connections, two
        # sockets' mailboxes): fail at once rather than half-way.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if clients * 4 > soft:
            raise RuntimeError(f"{clients} zmq clients need about {clients * 4} descriptors; the limit is {soft}")
    conns: list[Any] = []
    idle = Inbox()  # idle clients receive nothing: one inbox serves them all
    try:
        t0 = time.perf_counter()
        if system in MC_SYSTEMS:
            # Its clients need not connect one after the other: start them all,
            # then wait until each has been accepted.
            for i in range(clients):
                conns.append(SYSTEMS[system][1](port, f"idle{i}", idle, wait=False))
            # The last started is about the last accepted: waiting for it
            # first spares this thread a wake-up (and the I/O thread a GIL
            # hand-off) per client.
            for c in reversed(conns):
                if not c.connected.wait(WAIT):
                    raise TimeoutError("a client did not connect")
        else:
            for i in range(clients):
                conns.append(connect(system, port, f"idle{i}", idle))
        elapsed = time.perf_counter() - t0
        probe.send("stats", {})
        after = probe_inbox.take("stats")
    finally:
        # Also when one failed half-way (out of descriptors, say): a client
        # left open keeps its threads, which would skew every later scenario.
        for c in conns:
            getattr(c, "stop", lambda: None)()  # all at once, where a client has something to stop
        for c in conns:
            c.close()
        probe.close()
    return {
        "connect_all_s": elapsed,
        "rss_per_conn_kib": (after["rss"] - before["rss"]) / clients / 1024,
        "server_threads": after["threads"],
    }


@contextlib.contextmanager
def running_mcd() -> Iterator[tuple[Path, dict[str, str]]]:
    """An mcd of its own (socket and state in a fresh directory), stopped after."""
    root = Path(tempfile.mkdtemp(prefix="mcb", dir="/tmp"))
    sock = root / "mcd.sock"
    env = dict(os.environ, MC_SOCKET=str(sock))
    mcd = subprocess.Popen(
        [sys.executable, "-m", "mc_daemon", "--socket", str(sock), "--state-dir", str(root / "state")],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)  # not a test: waiting for a process we started
        yield sock, env
    finally:
        mcd.send_signal(signal.SIGTERM)
        mcd.wait(20)
        shutil.rmtree(root, ignore_errors=True)


def scenario_mcctl(runs: int = 15) -> dict[str, float]:
    # As installed by pip, which compiles bytecode (an editable install, or
    # PYTHONDONTWRITEBYTECODE, would have mcctl compile its source each call).
    for package in ("mc_cli", "mc_control"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            compileall.compile_dir(next(iter(spec.submodule_search_locations)), quiet=1)
    with running_mcd() as (_sock, env):
        # The mcctl of this installation (beside this Python), as a user's
        # shell finds it; else the one on PATH.
        beside = Path(sys.executable).parent / "mcctl"
        mcctl = str(beside) if beside.exists() else shutil.which("mcctl") or "mcctl"

        def timed(cmd: list[str]) -> float:
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0

        subprocess.run([mcctl, "client", "create"], env=env, stdout=subprocess.DEVNULL, check=True)
        bare = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(runs))
        one_shot = statistics.median(timed([mcctl, "client", "status"]) for _ in range(runs))
    return {"python_ms": bare * 1e3, "mcctl_ms": one_shot * 1e3, "ratio": one_shot / bare}


def scenario_via_mcd(system: str, port: int, count: int) -> dict[str, float]:
    """A broadcast to a client hosted in mcd, received as the daemon's
    ``message`` events on its control socket (what mcctl and the GUI see)."""
    from mc_control import ControlClient

    with running_mcd() as (sock, _env):
        control = ControlClient(sock)
        control.request("client.set", key="address", value="127.0.0.1")
        control.request("client.set", key="port", value=port)
        control.request("client.connect", wait=True, timeout=30)
        stream = ControlClient(sock, timeout=WAIT)
        inbox = Inbox()
        trigger = connect(system, port, "trigger", inbox)
        try:
            _answer, events = stream.subscribe(events=["message"])
            t0 = time.perf_counter()
            trigger.send("go", {"count": count})
            for seen, ev in enumerate(events, 1):
                if ev.get("type") != "event":
                    raise AssertionError(f"the event stream ended: {ev}")
                if ev["data"]["payload"]["seq"] != seen - 1:
                    raise AssertionError(f"broadcast {ev['data']['payload']['seq']} arrived as number {seen}")
                if seen == count:
                    break
            else:
                raise AssertionError("the event stream ended before every broadcast arrived")
            elapsed = time.perf_counter() - t0
            inbox.take("done")
        finally:
            trigger.close()
            stream.close()
            control.close()
    return {"deliveries_per_s": count / elapsed}


def start_broker() -> tuple[subprocess.Popen[bytes], int, Path]:
    broker = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = Path(tempfile.mkdtemp(prefix="mqb")) / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        "persistence false\nlog_dest none\n"
    )
    proc = subprocess.Popen([broker, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)  # not a test: waiting for a process we started
    return proc, port, conf


def run_one(
    system: str, name: str, run: Callable[[str, int], dict[str, float]], env: dict[str, str]
) -> dict[str, float]:
    """One system on one scenario, with a fresh server; {} (and a line on
    stderr) when it fails, so one system's failure does not end the run."""
    global SERVER_PID
    try:
        server = ServerProcess(system, env)
    except RuntimeError as exc:
        print(f"  {system:16} {name}: FAILED: {exc}", file=sys.stderr)
        return {}
    SERVER_PID = server.proc.pid
    aio_scenarios.use(uvloop="uvloop" in system, bare=system in ("asyncio", "uvloop"))
    try:
        return run(system, server.port)
    except Exception as exc:  # any failure is reported, and the run goes on
        print(f"  {system:16} {name}: FAILED: {exc}", file=sys.stderr)
        return {}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--scale", default="1000", help="idle client counts, e.g. 1000,5000,10000")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--only", default="", help="run only the scenarios whose names contain one of these words")
    parser.add_argument("--no-mcctl", action="store_true", help="skip the mcctl start-up scenario")
    parser.add_argument(
        "--results", type=Path, help="also write the report here (between its table markers, if it has them)"
    )
    args = parser.parse_args()
    quick = args.quick
    systems = args.systems.split(",")
    scenarios: list[tuple[str, Callable[[str, int], dict[str, float]]]] = [
        ("echo (p50/p99 us)", lambda s, p: scenario_echo(s, p, 200 if quick else 5000)),
        ("request/reply (p50/p99 us)", lambda s, p: scenario_request(s, p, 200 if quick else 5000)),
        ("client->server (msg/s)", lambda s, p: scenario_c2s(s, p, 2000 if quick else 100_000)),
        (
            "broadcast 100x2000 (deliveries/s)",
            lambda s, p: scenario_broadcast(s, p, 10 if quick else 100, 50 if quick else 2000),
        ),
        ("1 MiB echo (p50 us)", lambda s, p: scenario_echo(s, p, 5 if quick else 50, size=1024 * 1024)),
    ]
    if not quick:
        scenarios.insert(3, ("broadcast 1000x200 (deliveries/s)", lambda s, p: scenario_broadcast(s, p, 1000, 200)))
    scenarios.insert(
        4 if not quick else 3,
        (
            "broadcast 1000x200, read by messages() (deliveries/s)",
            lambda s, p: scenario_broadcast(s, p, 10 if quick else 1000, 50 if quick else 200, iterate=True),
        ),
    )
    scenarios.insert(
        -1, ("broadcast to a client in mcd (deliveries/s)", lambda s, p: scenario_via_mcd(s, p, 100 if quick else 2000))
    )
    for count in [int(c) for c in args.scale.split(",") if c]:
        scenarios.append((f"{count} idle clients", lambda s, p, n=count: scenario_scale(s, p, 20 if quick else n)))

    if args.only:
        words = args.only.split(",")
        scenarios = [(name, run) for name, run in scenarios if any(w in name for w in words)]
    broker, broker_port, conf = start_broker() if "mqtt" in systems else (None, 0, None)
    env = dict(os.environ, BENCH_BROKER_PORT=str(broker_port), PYTHONPATH=os.pathsep.join(sys.path))
    os.environ["BENCH_BROKER_PORT"] = str(broker_port)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for rep in range(args.reps):
            for name, run in scenarios:
                for system in systems:
                    if system == "mqtt" and ("1000x200" in name or "idle" in name):
                        continue  # a paho client is a thread: 1000s of them measure threads, not MQTT
                    if "mcd" in name and system not in MC_SYSTEMS:
                        continue  # only MissionCommander has a daemon
                    if "request" in name and system not in REQUEST_SYSTEMS:
                        continue  # no request/reply of its own
                    if "idle" in name and system in ASYNC_SYSTEMS:
                        continue  # connection set-up is the same core as missioncommander's
                    if "messages()" in name and system not in ASYNC_SYSTEMS:
                        continue  # an asyncio iterator: the others have none
                    figures = run_one(system, name, run, env)
                    results.setdefault((name, system), []).append(figures)
                    print(f"rep {rep + 1} {name:36} {system:16} {figures}", file=sys.stderr, flush=True)
        mcctl = [] if args.no_mcctl else [scenario_mcctl(5 if quick else 15) for _ in range(args.reps)]
    finally:
        if broker is not None:
            broker.kill()
            broker.wait(10)
        if conf is not None:
            shutil.rmtree(conf.parent, ignore_errors=True)  # its folder of one file, left in /tmp before
    report = render(results, scenarios, systems, mcctl)
    print(report)
    if args.results:
        write_results(args.results, report)
    return 0


#: The part of a results file that a run rewrites; the analysis around it stays.
TABLE_START, TABLE_END = "<!-- bench/run.py: table -->", "<!-- /bench/run.py: table -->"


def write_results(path: Path, report: str) -> None:
    """Write ``report`` between the table markers of ``path`` (bench/RESULTS.md
    keeps its analysis around them), or as the whole file if it has none."""
    old = path.read_text() if path.exists() else ""
    start, end = old.find(TABLE_START), old.find(TABLE_END)
    if 0 <= start < end:
        report = old[: start + len(TABLE_START)] + "\n" + report + old[end:]
    path.write_text(report)


def render(
    results: dict[tuple[str, str], list[dict[str, float]]],
    scenarios: list[tuple[str, Any]],
    systems: list[str],
    mcctl: list[dict[str, float]],
) -> str:
    reps = max((len(runs) for runs in results.values()), default=0)
    lines = [
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}. Medians over {reps} repetitions; "
        "`x MC` is the peer's figure divided by MissionCommander's, within each repetition (median).",
        "",
        "| scenario | metric | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for name, _ in scenarios:
        metrics: list[str] = []
        for system in systems:
            for figures in results.get((name, system), []):
                metrics += [m for m in figures if m not in metrics]
        for metric in metrics:
            cells = []
            for system in systems:
                runs = [f.get(metric) for f in results.get((name, system), []) if f.get(metric) is not None]
                if not runs:
                    cells.append("n/a")
                    continue
                value = statistics.median(runs)  # type: ignore[type-var]
                cell = f"{value:,.1f}"
                mc_runs = [f.get(metric) for f in results.get((name, "missioncommander"), [])]
                ratios = [
                    p / m
                    for p, m in zip((f.get(metric) for f in results.get((name, system), [])), mc_runs, strict=False)
                    if p and m
                ]
                if system != "missioncommander" and ratios:
                    cell += f" ({statistics.median(ratios):.2f}x MC)"
                cells.append(cell)
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    if not mcctl:
        return "\n".join(lines) + "\n"
    ratio = statistics.median(m["ratio"] for m in mcctl)
    lines += [
        "",
        f"`mcctl client status` against a running mcd: {statistics.median(m['mcctl_ms'] for m in mcctl):.0f} ms, "
        f"`python3 -c pass`: {statistics.median(m['python_ms'] for m in mcctl):.0f} ms: "
        f"**{ratio:.2f}x** bare start-up.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        SYSTEMS[sys.argv[2]][0](int(sys.argv[3]))
    else:
        sys.exit(main())

"""mcd at scale: the figures of issue 21, against a real mcd.

    python3 bench/mcd_scale.py [--instances 1000] [--messages 20000] [--repeat 5]

Scenarios (each prints one line, and the run ends with a summary):

- messages into one hosted client, sent from a library server, with 1 and
  with N idle connected client instances (events/s seen by a subscriber);
- the cost of adding an instance (client.set on a new name) at the first
  and at the N-th, and the time mcd takes to restart and reconnect N
  instances (SIGTERM, start, until every client is connected again);
- mcd's RSS before and after a flood into a hosted client whose events a
  subscriber reads slowly (memory stays bounded, the sender feels it).

Every loop is bounded in count and time; everything runs on loopback.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from mc_control import ControlClient, DaemonUnreachable
from missioncommander import Message, Server


class Daemon:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "mcd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mc_daemon", "--socket", str(self.socket), "--state-dir", str(self.root / "state")],
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self._kill_if_running, self.proc)  # a failed run leaves no mcd behind
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.request("hello")
                return
            except DaemonUnreachable:
                time.sleep(0.02)
        raise SystemExit("mcd did not start within 60 s")

    def request(self, cmd: str, **params: Any) -> dict[str, Any]:
        with ControlClient(self.socket, timeout=120) as c:
            return c.request(cmd, **params)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)

    @staticmethod
    def _kill_if_running(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def cpu_seconds(self) -> float:
        """mcd's CPU time so far (user and system, all threads)."""
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def rss_mib(self) -> float:
        assert self.proc is not None
        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20


def add_clients(daemon: Daemon, control: ControlClient, first: int, count: int, port: int) -> list[float]:
    """Add ``count`` connected client instances; the seconds each took to configure and connect."""
    costs = []
    for i in range(first, first + count):
        start = time.perf_counter()
        control.request("client.set", name=f"c{i}", key="address", value="127.0.0.1")
        control.request("client.set", name=f"c{i}", key="port", value=port)
        control.request("client.connect", name=f"c{i}", wait=True)
        costs.append(time.perf_counter() - start)
    return costs


def flood_rate(daemon: Daemon, server: Server, count: int, tag: int) -> tuple[float, float]:
    """Events/s a subscriber sees while ``server`` floods the hosted client
    ``default`` with ``count`` messages tagged ``tag`` (from the first send
    to the last of them seen; the events of an earlier flood still on their
    way are not counted), and mcd's CPU time per message meanwhile."""
    with ControlClient(daemon.socket, timeout=120) as stream:
        _, events = stream.subscribe(instances=[{"kind": "client", "name": "default"}], events=["message"])
        (target,) = [c for c in server.clients if c.startswith("default-")]
        settled = time.monotonic() + 30  # the last flood's acks come back after its callbacks
        while server.queued(target) and time.monotonic() < settled:
            time.sleep(0.01)
        cpu = daemon.cpu_seconds()
        start = time.perf_counter()
        for n in range(count):
            server.send(target, Message("flood", {"n": n, "tag": tag}))
        seen = 0
        for event in events:
            if event.get("type") == "event" and event["data"]["payload"]["tag"] == tag:
                seen += 1
                if seen == count:
                    break
        return count / (time.perf_counter() - start), (daemon.cpu_seconds() - cpu) / count


def median_rate(daemon: Daemon, server: Server, count: int, repeat: int) -> tuple[float, float, float, float]:
    """The median, lowest and highest of ``repeat`` flood rates, and the
    median of mcd's CPU time per message, after one unmeasured flood.  The
    rate of a single flood swings by 2-5x from run to run on a shared
    2-core machine (three processes' threads take turns with the GIL); the
    CPU time per message is the steadier measure of what an event costs."""
    flood_rate(daemon, server, count // 4, -1)
    runs = [flood_rate(daemon, server, count, tag) for tag in range(repeat)]
    rates = [rate for rate, _ in runs]
    return statistics.median(rates), min(rates), max(rates), statistics.median(cpu for _, cpu in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5, help="floods per rate (the median is the figure)")
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory(prefix="mcscale", dir="/tmp") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.start()
        server = Server(interface="127.0.0.1", port=0, max_queued=args.messages + 10, max_connection_rate=None)
        server.start()
        with ControlClient(daemon.socket, timeout=120) as control:
            control.request("client.set", key="address", value="127.0.0.1")
            control.request("client.set", key="port", value=server.port)
            control.request("client.set", key="client_id", value="default-0")
            control.request("client.connect", wait=True)
            one, low, high, one_cpu = median_rate(daemon, server, args.messages, args.repeat)
            print(
                f"messages into a hosted client, 1 instance: {one:,.0f}/s "
                f"(median of {args.repeat}, {low:,.0f}-{high:,.0f}); mcd CPU {one_cpu * 1e6:.1f} us/message",
                flush=True,
            )
            first = add_clients(daemon, control, 1, 20, server.port)
            rest = add_clients(daemon, control, 21, n - 40, server.port)
            last = add_clients(daemon, control, n - 19, 20, server.port)
            print(
                f"adding a connected client instance: {statistics.median(first) * 1e3:.1f} ms at the first 20, "
                f"{statistics.median(last) * 1e3:.1f} ms at {n} ({sum(first + rest + last):.1f} s for all)",
                flush=True,
            )
            many, low, high, many_cpu = median_rate(daemon, server, args.messages, args.repeat)
            print(
                f"messages into a hosted client, {n} instances: {many:,.0f}/s "
                f"(median of {args.repeat}, {low:,.0f}-{high:,.0f}; {many / one:.2f}x); "
                f"mcd CPU {many_cpu * 1e6:.1f} us/message ({one_cpu / many_cpu:.2f}x the rate it allows)",
                flush=True,
            )
        start = time.perf_counter()
        daemon.stop()
        stopped = time.perf_counter() - start
        start = time.perf_counter()
        daemon.start()
        deadline = time.monotonic() + 120
        while len(server.clients) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        restarted = time.perf_counter() - start
        print(
            f"{n} instances: stop {stopped:.2f} s, "
            f"restart until all {len(server.clients)} reconnected {restarted:.2f} s",
            flush=True,
        )
        # Memory under a flood that a slow subscriber reads.
        before = daemon.rss_mib()
        with ControlClient(daemon.socket, timeout=120) as slow:
            slow.subscribe()
            (target,) = [c for c in server.clients if c.startswith("default-")]
            sent = 0
            flood_until = time.monotonic() + 8
            while time.monotonic() < flood_until and sent < 2_000_000:
                try:
                    server.send(target, Message("flood", {"n": sent, "fill": "x" * 200}))
                    sent += 1
                except Exception:  # queue full: the backpressure the sender should feel
                    time.sleep(0.001)
            after = daemon.rss_mib()
            queued = server.queued(target)
        print(
            f"flood with a slow subscriber: mcd RSS {before:.0f} -> {after:.0f} MiB after {sent:,} messages "
            f"in 8 s; {queued:,} waiting at the sender",
            flush=True,
        )
        daemon.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    socket.setdefaulttimeout(None)
    sys.exit(main())

"""``mcd --metrics ADDRESS:PORT``: the live figures for Prometheus.

The well-kept ``prometheus-client`` package (the ``metrics`` extra) writes
them in Prometheus' text format, as a WSGI app that the standard library's
``wsgiref`` serves here with bounds on what scrapers cost; a collector
reads ``DaemonCore.stats`` at each scrape, so nothing is counted twice and
nothing runs between scrapes.
Every figure is docs/STATS.md's, named ``missioncommander_<figure>`` and
labelled with the instance's ``kind`` and ``instance`` name; with
``--metrics-per-client``, a server's figures per client too, as
``missioncommander_server_client_<figure>`` labelled ``instance`` and
``client``.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from mc_control.events import host_port
from missioncommander._config import split_host_port
from missioncommander._loop import ACCEPT_PAUSE, AcceptTrouble, one_connections_error
from missioncommander._quiet import Quiet, more

from .core import CoreError, DaemonCore

log = logging.getLogger("mcd.metrics")

PREFIX = "missioncommander_"
#: Figures that only grow: Prometheus counters (``_total``).
COUNTERS = (
    "messages_sent",
    "bytes_sent",
    "messages_received",
    "bytes_received",
    "resent",
    "connects",
    "reconnects",
    "resumes",
    "sessions_lost",
    "slow_clients_cut",
)
#: Figures that are a level now: Prometheus gauges.
GAUGES = (
    "queued",
    "queued_bytes",
    "max_queued",
    "max_queued_bytes",
    "unwritten",
    "inbound_waiting",
    "inbound_waiting_bytes",
    "max_inbound",
    "max_inbound_bytes",
    "peer_max_inbound",
    "peer_max_inbound_bytes",
    "requests_in_flight",
    "senders_waiting",
    "clients",
    "detached",
    "max_clients",
)
#: Yes/no figures: gauges of 1 or 0 (``running``: a server between start
#: and stop, what an alert on a server that stopped listening watches).
FLAGS = ("running",)
#: An instance's figures: ``missioncommander_<figure>{kind, instance}``.
INSTANCE_LABELS = ("kind", "instance")
#: A server's figures per client, under names of their own
#: (``missioncommander_server_client_<figure>{instance, client}``): in the
#: same family as the server's totals, a ``sum()`` would count every
#: message twice (Prometheus' rule: a sum over all labels must mean something).
CLIENT_PREFIX = PREFIX + "server_client_"
CLIENT_LABELS = ("instance", "client")

Rows = list[tuple[tuple[str, ...], dict[str, Any]]]


def parse_address(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT``, ``[IPv6]:PORT`` or ``PORT`` (then loopback, 127.0.0.1)."""
    host, port = split_host_port(text, "--metrics")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics wants ADDRESS:PORT (a port from 1 to 65535), not {text!r}")
    return host, int(port)


class StatsCollector:
    """A prometheus-client collector over the daemon's ``stats``."""

    def __init__(self, core: DaemonCore, per_client: bool = False) -> None:
        self.core = core
        #: Also each server's figures per client (``--metrics-per-client``):
        #: off by default, as a series per client id grows without bound
        #: with the clients a server has seen.
        self.per_client = per_client

    def rows(self, result: dict[str, Any]) -> tuple[Rows, Rows]:
        """(labels, figures) of every instance of a ``stats`` result, and
        (``per_client``) of every client of its servers."""
        instances: Rows = []
        clients: Rows = []
        for entry in result["instances"]:
            kind, name = entry["kind"], entry["name"]
            instances.append(((kind, name), entry["stats"]))
            if kind == "server" and self.per_client:
                try:
                    (detail,) = self.core.stats("server", name)["instances"]
                except CoreError:  # removed meanwhile: it simply is not there any more
                    continue
                for client_id, figures in (detail.get("clients") or {}).items():
                    if figures is not None:
                        clients.append(((name, client_id), figures))
        return instances, clients

    def collect(self) -> Iterator[Any]:
        result = self.core.stats(None, None)
        instances, clients = self.rows(result)
        yield from self.families(PREFIX, INSTANCE_LABELS, instances)
        yield from self.families(CLIENT_PREFIX, CLIENT_LABELS, clients)
        yield from self.daemon_families(result["daemon"])

    @staticmethod
    def families(prefix: str, labels: tuple[str, ...], rows: Rows) -> Iterator[Any]:
        """The families of one kind of row; a family no row has a figure
        for (a server's ``max_clients`` among its clients) is left out."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        for figure in COUNTERS:
            counter = CounterMetricFamily(prefix + figure, f"{figure} (docs/STATS.md)", labels=labels)
            for values, figures in rows:
                if figures.get(figure) is not None:
                    counter.add_metric(values, figures[figure])
            if counter.samples:
                yield counter
        for figure in GAUGES:
            gauge = GaugeMetricFamily(prefix + figure, f"{figure} (docs/STATS.md)", labels=labels)
            for values, figures in rows:
                value = figures.get(figure)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    gauge.add_metric(values, value)
            if gauge.samples:
                yield gauge
        for figure in FLAGS:
            flag = GaugeMetricFamily(prefix + figure, f"{figure}: 1 or 0 (docs/STATS.md)", labels=labels)
            for values, figures in rows:
                if isinstance(figures.get(figure), bool):
                    flag.add_metric(values, float(figures[figure]))
            if flag.samples:
                yield flag
        connected = GaugeMetricFamily(
            prefix + "connected", "a client connected (1) or not; a server's clients connected", labels=labels
        )
        rtt = GaugeMetricFamily(
            prefix + "rtt_seconds", "the heartbeat's round trip, smoothed (docs/STATS.md)", labels=labels
        )
        refusals = CounterMetricFamily(
            prefix + "refusals",
            "connections refused, by the ERROR code they got (tls_handshake: a failed TLS handshake)",
            labels=(*labels, "code"),
        )
        # A cluster node's own (docs/CLUSTER.md): whether it reaches Redis and
        # takes newcomers, the clients it took over from nodes that died, how
        # often its pub/sub connection died (broken, or silent), and whether
        # another node runs under its id.
        ready = GaugeMetricFamily(
            prefix + "cluster_ready", "a cluster node reaches Redis and takes newcomers (1) or not", labels=labels
        )
        takeovers = CounterMetricFamily(
            prefix + "cluster_takeovers", "clients resumed here after the node holding them died", labels=labels
        )
        resubscribes = CounterMetricFamily(
            prefix + "cluster_resubscribes",
            "times a cluster node found its Redis pub/sub connection dead (broken, or silent) and subscribed again",
            labels=labels,
        )
        same_id = GaugeMetricFamily(
            prefix + "cluster_same_node_id",
            "another cluster node runs with this node's node_id (1), a configuration to mend, or not (0)",
            labels=labels,
        )
        for values, figures in rows:
            connected.add_metric(values, float(figures.get("connected") or 0))
            if figures.get("rtt_smoothed_ms") is not None:
                rtt.add_metric(values, figures["rtt_smoothed_ms"] / 1e3)
            for code, count in (figures.get("refusals") or {}).items():
                refusals.add_metric((*values, code), count)
            cluster = figures.get("cluster")
            if isinstance(cluster, dict):
                ready.add_metric(values, float(bool(cluster.get("ready"))))
                takeovers.add_metric(values, cluster.get("takeovers") or 0)
                resubscribes.add_metric(values, cluster.get("resubscribes") or 0)
                same_id.add_metric(values, float(bool(cluster.get("same_node_id"))))
        families = (connected, rtt, refusals, ready, takeovers, resubscribes, same_id)
        yield from (family for family in families if family.samples)

    @staticmethod
    def daemon_families(daemon: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        yield GaugeMetricFamily("mcd_uptime_seconds", "seconds since mcd started", value=daemon["uptime"])
        yield GaugeMetricFamily(
            "mcd_event_subscribers", "control connections streaming events", value=daemon["event_subscribers"]
        )
        yield CounterMetricFamily(
            "mcd_events_published", "events published since mcd started", value=daemon["events_published"]
        )
        yield CounterMetricFamily(
            "mcd_events_dropped", "events subscribers cut off for lagging never read", value=daemon["events_dropped"]
        )
        yield CounterMetricFamily(
            "mcd_subscribers_cut_off",
            "event subscribers cut off for falling too far behind",
            value=daemon["subscribers_cut_off"],
        )


#: Scrapes served at once; a connection past them is closed at once.
#: Prometheus scrapes one at a time (a person with curl adds one).
MAX_SCRAPES = 8
#: Seconds a scrape may take to send its request, or to take each part of
#: the answer, before its connection is closed (Prometheus' own scrape
#: timeout is 10 s by default).
SCRAPE_TIMEOUT = 10.0


class _Handler(WSGIRequestHandler):
    """One scrape: no access log, and a deadline on each read and write."""

    timeout = SCRAPE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Endpoint(ThreadingMixIn, WSGIServer):
    """A WSGI server over prometheus-client's app with the bounds its own
    ``start_http_server`` lacks: it starts a thread for every connection,
    which waits as long as the peer sends nothing (a few hundred idle
    connections were a few hundred threads in mcd), prints a traceback for
    a peer that resets, and spins when accept() fails for want of
    descriptors."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, max_scrapes: int) -> None:
        self.address_family = family
        #: Set by close(): ends a pause after a failed accept at once.
        self.closed = threading.Event()
        self._slots = threading.BoundedSemaphore(max_scrapes)
        self._max_scrapes = max_scrapes
        self._trouble = AcceptTrouble(log, "metrics scrapes")
        self._busy = Quiet()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = super().get_request()
        except OSError as exc:
            if not one_connections_error(exc):
                # Out of descriptors: the connection stays in the backlog
                # and select() says so at once; pause instead of spinning.
                self._trouble.failed(exc)
                self.closed.wait(ACCEPT_PAUSE)
            raise  # socketserver goes back to waiting
        self._trouble.accepted()
        return request

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        unsaid = self._busy.due()
        if unsaid is not None:
            log.warning(
                "metrics: %d scrapes under way already; closed a connection from %s%s",
                self._max_scrapes,
                host_port(*client_address[:2]),
                more(unsaid),
            )
        return False  # socketserver closes it

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except RuntimeError as exc:  # can't start new thread: a limit on threads
            self._slots.release()
            self.shutdown_request(request)
            self._trouble.failed(OSError(errno.EAGAIN, str(exc)))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that went away, sent junk or said nothing in time: its
        # business, not a traceback on mcd's standard error.
        log.debug("metrics: a scrape from %s failed", host_port(*client_address[:2]), exc_info=True)


class MetricsServer:
    """The HTTP endpoint, on a thread of its own (and one per scrape, at
    most ``max_scrapes``)."""

    def __init__(
        self, core: DaemonCore, address: tuple[str, int], per_client: bool = False, max_scrapes: int = MAX_SCRAPES
    ) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415
        from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(core, per_client))
        ProcessCollector(registry=registry)  # mcd's own CPU, memory and descriptors
        # The family of the address asked for (an IPv6 one needs AF_INET6).
        family, _, _, _, sockaddr = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.httpd = _Endpoint((str(sockaddr[0]), address[1]), family, max_scrapes)
        self.httpd.set_app(make_wsgi_app(registry))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="mcd-metrics", daemon=True)
        self.thread.start()
        self.port: int = self.httpd.server_port
        #: Where Prometheus scrapes (``daemon.status`` tells it).
        self.url = f"http://{host_port(address[0], self.port)}/metrics"
        log.info("metrics on %s", self.url)

    def close(self) -> None:
        self.httpd.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

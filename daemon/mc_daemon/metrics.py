"""``mcd --metrics ADDRESS:PORT``: the live figures for Prometheus.

The well-kept ``prometheus-client`` package (the ``metrics`` extra) serves
them in Prometheus' text format; a collector reads ``DaemonCore.stats`` at
each scrape, so nothing is counted twice and nothing runs between scrapes.
Every figure is docs/STATS.md's, named ``missioncommander_<figure>`` and
labelled with the instance's ``kind`` and ``instance`` name; with
``--metrics-per-client``, a server's figures per client too, as
``missioncommander_server_client_<figure>`` labelled ``instance`` and
``client``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from mc_control.events import host_port

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
    "requests_in_flight",
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
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
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
        # takes newcomers, and the clients it took over from nodes that died.
        ready = GaugeMetricFamily(
            prefix + "cluster_ready", "a cluster node reaches Redis and takes newcomers (1) or not", labels=labels
        )
        takeovers = CounterMetricFamily(
            prefix + "cluster_takeovers", "clients resumed here after the node holding them died", labels=labels
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
        yield from (family for family in (connected, rtt, refusals, ready, takeovers) if family.samples)

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


class MetricsServer:
    """The HTTP endpoint, on a thread of prometheus-client's."""

    def __init__(self, core: DaemonCore, address: tuple[str, int], per_client: bool = False) -> None:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
        from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(core, per_client))
        ProcessCollector(registry=registry)  # mcd's own CPU, memory and descriptors
        self.httpd, self.thread = start_http_server(address[1], addr=address[0], registry=registry)
        self.port: int = self.httpd.server_port
        #: Where Prometheus scrapes (``daemon.status`` tells it).
        self.url = f"http://{host_port(address[0], self.port)}/metrics"
        log.info("metrics on %s", self.url)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

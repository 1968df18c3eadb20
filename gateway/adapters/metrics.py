"""Prometheus exposition (prometheus-client): served over HTTP on a loopback address, and
written to a node_exporter textfile-collector file.

Every value comes from the ledger and the home when it is scraped or written (`gather`,
from `gateway.pipeline.metrics`), so a restart loses nothing and two processes never
disagree.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.core.errors import SettingsInvalid

Labels = tuple[str, ...]


@dataclasses.dataclass
class Histogram:
    """Observations counted into buckets by upper bound (cumulative, as Prometheus has
    them), with their number and sum."""

    bounds: Sequence[float]
    counts: list[int] = dataclasses.field(default_factory=list)
    total: int = 0
    sum: float = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i in range(bisect.bisect_left(self.bounds, value), len(self.bounds)):
            self.counts[i] += 1
        self.total += 1
        self.sum += value


@dataclasses.dataclass(frozen=True)
class Family:
    """One metric and its samples: a value per label set, or a histogram per label set."""

    kind: Literal["gauge", "counter", "histogram"]
    name: str
    doc: str
    labels: Labels = ()
    values: Sequence[tuple[Labels, float]] = ()
    histograms: Sequence[tuple[Labels, Histogram]] = ()


def _metric(family: Family) -> Metric:
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.doc, labels=family.labels)
        for labels, h in family.histograms:
            buckets = [
                (repr(float(le)), float(n))
                for le, n in zip(h.bounds, h.counts or [0] * len(h.bounds), strict=True)
            ]
            histogram.add_metric(list(labels), [*buckets, ("+Inf", float(h.total))], h.sum)
        return histogram
    kind = GaugeMetricFamily if family.kind == "gauge" else CounterMetricFamily
    metric = kind(family.name, family.doc, labels=family.labels)
    for labels, value in family.values:
        metric.add_metric(list(labels), value)
    return metric


class _Gathered(Collector):
    def __init__(self, gather: Callable[[], list[Family]]) -> None:
        self.gather = gather

    def collect(self) -> Iterator[Metric]:
        for family in self.gather():
            yield _metric(family)


def loopback(listen: str) -> tuple[str, int]:
    """`ADDRESS:PORT` to serve metrics on, refusing any address but loopback (the
    metrics name partners and counts: they are for this host's Prometheus or a proxy)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        address = None
    if address is None or not port.isdigit():
        raise SettingsInvalid(
            f"metrics.listen: {listen!r} is not ADDRESS:PORT, e.g. 127.0.0.1:9817"
        )
    if not address.is_loopback:
        raise SettingsInvalid(
            f"metrics.listen: {host} is not a loopback address: serve metrics on 127.0.0.1 or ::1 "
            "and let Prometheus reach them through a proxy with TLS, or use metrics.textfile"
        )
    return str(address), int(port)


class Exporter:
    """The gateway's metrics, gathered afresh at each scrape or write."""

    def __init__(self, gather: Callable[[], list[Family]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Gathered(gather))
        self._server: object | None = None
        self.port = 0

    def text(self) -> bytes:
        """The exposition, as a scrape would get it."""
        return bytes(generate_latest(self.registry))

    def write(self, path: Path) -> None:
        """Write the exposition to `path` for node_exporter: a temporary file in the same
        folder renamed over it, so the collector never reads half a file."""
        write_to_textfile(str(path), self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve `/metrics` on `host:port` (port 0: any free one, then in `self.port`)."""
        server, thread = start_http_server(port, host, self.registry)
        thread.name = "metrics-http"
        self._server, self._thread, self.port = server, thread, server.server_port

    def stop(self) -> None:
        """Stop serving, and wait for the server's thread to end."""
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._thread.join(5)
            self._server = None

"""Prometheus metrics for the admin API's /metrics (one registry per gateway).

Names follow Prometheus conventions: the unit as suffix (``_bytes``, ``_seconds``),
``_total`` on counters (added by the client library), one ``direction`` vocabulary
for every protocol (``in``: from the caller toward the upstream, ``out``: back to
the caller; hoopy.session.IN/OUT). No ``_created`` series: they double every
counter's series count and say nothing an operator reads.
"""
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

disable_created_metrics()

# Latency of an operation from its decision to its end, as recorded by its event's duration_ms:
# sub-millisecond statements up to long exec sessions.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60, 300, float("inf"))


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.sessions_open = Gauge("hoopy_sessions_open", "Sessions open now",
                                   ["protocol", "connection"], registry=r)
        self.sessions = Counter("hoopy_sessions", "Sessions started",
                                ["protocol", "connection"], registry=r)
        # Counted for every operation and every read: plain Python (see PlainCounter), same exposition.
        self.operations = PlainCounter("hoopy_operations", "Operations judged, by outcome",
                                       ["protocol", "connection", "outcome"], registry=r)
        self.operation_duration = PlainHistogram(
            "hoopy_operation_duration_seconds", "Time from an operation's decision to its end",
            ["protocol", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.approvals_pending = Gauge("hoopy_approvals_pending", "Approvals waiting for a reviewer",
                                       registry=r)
        self.bytes = PlainCounter("hoopy_proxied_bytes", "Bytes proxied, by direction (in: from the caller)",
                                  ["protocol", "connection", "direction"], registry=r)
        self.auth_failures = Counter("hoopy_auth_failures", "Failed authentications",
                                     ["protocol", "connection"], registry=r)
        self.redactions = Counter("hoopy_redactions", "Values masked",
                                  ["protocol", "connection"], registry=r)
        self.store_errors = Counter("hoopy_store_errors", "Failed state store writes", registry=r)
        self.upstream_up = Gauge("hoopy_upstream_up", "1 when the connection's upstream answered its "
                                 "last check (a session's connect or the probe), 0 when it did not",
                                 ["connection"], registry=r)
        self._children: dict = {}

    def child(self, metric, *labels):
        """``metric.labels(*labels)``, looked up once per label set: ``labels()`` validates and
        locks on every call and costs more than the increment (once or twice a statement)."""
        key = (metric._name, labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c


# The metrics every operation and every read of a connection touch (a PostgreSQL statement: four
# times). prometheus_client's child ``inc`` is four Python calls and a lock; these children are a
# plain attribute added to, on the reactor thread that does all the counting, and read by the
# registry at each scrape, exposed exactly as a Counter and a Histogram of those labels are.


class _Count:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Observed:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= bound


class _Plain:
    def __init__(self, name: str, documentation: str, labelnames, registry):
        self._name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict = {}
        registry.register(self)

    def labels(self, *values):
        values = tuple(str(v) for v in values)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self._name}: {len(self.labelnames)} label values expected")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child()
        return child

    def describe(self):
        return list(self.collect())  # the registry's check of names taken twice


class PlainCounter(_Plain):
    def _child(self):
        return _Count()

    def collect(self):
        family = CounterMetricFamily(self._name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value)
        yield family


class PlainHistogram(_Plain):
    def __init__(self, name, documentation, labelnames, registry, buckets=DURATION_BUCKETS):
        self.bounds = tuple(float(b) for b in buckets)
        if self.bounds[-1] != float("inf"):
            self.bounds += (float("inf"),)
        super().__init__(name, documentation, labelnames, registry)

    def _child(self):
        return _Observed(self.bounds)

    def collect(self):
        family = HistogramMetricFamily(self._name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            running, buckets = 0, []
            for bound, n in zip(self.bounds, list(child.counts)):
                running += n
                buckets.append((floatToGoString(bound), running))
            family.add_metric(values, buckets, child.sum)
        yield family

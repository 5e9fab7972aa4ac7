"""Prometheus metrics for the admin API's /metrics (one registry per gateway).

Names follow Prometheus conventions: the unit as suffix (``_bytes``, ``_seconds``),
``_total`` on counters (added by the client library), one ``direction`` vocabulary
for every protocol (``in``: from the caller toward the upstream, ``out``: back to
the caller; hoopy.session.IN/OUT). No ``_created`` series: they double every
counter's series count and say nothing an operator reads.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

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
        self.operations = Counter("hoopy_operations", "Operations judged, by outcome",
                                  ["protocol", "connection", "outcome"], registry=r)
        self.operation_duration = Histogram(
            "hoopy_operation_duration_seconds", "Time from an operation's decision to its end",
            ["protocol", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.approvals_pending = Gauge("hoopy_approvals_pending", "Approvals waiting for a reviewer",
                                       registry=r)
        self.bytes = Counter("hoopy_proxied_bytes", "Bytes proxied, by direction (in: from the caller)",
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

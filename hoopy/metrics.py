"""Prometheus metrics for the admin API's /metrics (one registry per gateway)."""
from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.sessions_open = Gauge("hoopy_sessions_open", "Sessions open now",
                                   ["protocol", "connection"], registry=r)
        self.sessions = Counter("hoopy_sessions", "Sessions started",
                                ["protocol", "connection"], registry=r)
        self.operations = Counter("hoopy_operations", "Operations judged, by outcome",
                                  ["protocol", "connection", "outcome"], registry=r)
        self.approvals_pending = Gauge("hoopy_approvals_pending", "Approvals waiting for a reviewer",
                                       registry=r)
        self.bytes = Counter("hoopy_bytes_proxied", "Bytes proxied",
                             ["protocol", "connection", "direction"], registry=r)
        self.auth_failures = Counter("hoopy_auth_failures", "Failed authentications",
                                     ["protocol", "connection"], registry=r)
        self.redactions = Counter("hoopy_redactions", "Values masked",
                                  ["protocol", "connection"], registry=r)
        self.store_errors = Counter("hoopy_store_errors", "Failed state store writes", registry=r)

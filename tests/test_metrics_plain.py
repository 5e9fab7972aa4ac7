"""The plain counters and histogram of hoopy.metrics (those every operation touches) are exposed
exactly as prometheus_client's own Counter and Histogram of the same labels and values are."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hoopy.metrics import DURATION_BUCKETS, PlainCounter, PlainHistogram

LABELS = st.sampled_from([("pg", "billing"), ("ssh", "web"), ("http", "api"), ("pg", 'a"b\\c')])
AMOUNT = st.one_of(st.floats(0, 100, allow_nan=False), st.sampled_from([float(b) for b in DURATION_BUCKETS] + [0.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, AMOUNT), max_size=60))
def test_exposition_is_prometheus_clients(ops):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    pc = PlainCounter("hoopy_x", "Things", ["protocol", "connection"], registry=ours)
    ph = PlainHistogram("hoopy_x_seconds", "Time", ["protocol", "connection"], registry=ours)
    c = Counter("hoopy_x", "Things", ["protocol", "connection"], registry=theirs)
    h = Histogram("hoopy_x_seconds", "Time", ["protocol", "connection"], buckets=DURATION_BUCKETS,
                  registry=theirs)
    for labels, amount in ops:
        pc.labels(*labels).inc(amount)
        c.labels(*labels).inc(amount)
        ph.labels(*labels).observe(amount)
        h.labels(*labels).observe(amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_a_name_taken_twice_is_refused_as_prometheus_client_refuses_it():
    r = CollectorRegistry()
    PlainCounter("hoopy_y", "Y", ["a"], registry=r)
    try:
        Counter("hoopy_y", "Y again", ["a"], registry=r)
    except ValueError:
        pass
    else:
        raise AssertionError("a second collector of the same name was registered")


def test_wrong_label_count_is_an_error():
    p = PlainCounter("hoopy_z", "Z", ["a", "b"], registry=CollectorRegistry())
    for values in [("x",), ("x", "y", "z")]:
        try:
            p.labels(*values)
        except ValueError:
            continue
        raise AssertionError(values)
    assert p.labels("x", 1) is p.labels("x", "1")  # values are label strings, as prometheus_client makes them

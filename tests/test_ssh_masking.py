"""Line masking of exec output (hoopy.ssh.masking), sans-IO."""
from hypothesis import given, settings, strategies as st

from hoopy.policy.masking import MASK, parse_detector
from hoopy.ssh.masking import LineMasker

EMAIL = parse_detector("email")


def run(chunks, **kw):
    m = LineMasker([EMAIL], **kw)
    out = b"".join(m.feed(c) for c in chunks) + m.flush()
    return out, m.counts


def test_a_value_split_across_packets_is_still_masked():
    out, counts = run([b"user: alice@exa", b"mple.com\nnext line\n"])
    assert out == f"user: {MASK}\nnext line\n".encode()
    assert counts == {"email": 1}


def test_partial_line_is_held_until_the_end():
    m = LineMasker([EMAIL])
    assert m.feed(b"no newline yet bob@example.org") == b""
    assert m.flush() == f"no newline yet {MASK}".encode()


def test_binary_output_without_matches_is_unchanged():
    data = bytes(range(256)) * 50
    out, counts = run([data[:1000], data[1000:]])
    assert out == data and counts == {}


def test_long_lines_are_not_held_forever():
    m = LineMasker([EMAIL], max_hold=100)
    assert m.feed(b"x" * 150) == b"x" * 150


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.integers(min_value=0, max_value=500))
def test_without_matches_bytes_are_preserved_whatever_the_split(data, cut):
    data = data.replace(b"@", b"_")
    out, _ = run([data[:cut], data[cut:]])
    assert out == data

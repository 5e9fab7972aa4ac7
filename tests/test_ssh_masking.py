"""Masking of an SSH output stream (hoopy.ssh.masking), sans-IO, attacked at every cut.

The property that matters: whatever way the bytes are cut (SSH packets, the
gateway's own flushes, one byte at a time), the client gets exactly what it
would get if the whole output had been masked at once, and no value, or any
piece of one, goes out.
"""
import json

from hypothesis import given, settings, strategies as st

from hoopy.policy.masking import MASK, luhn_ok, parse_detector
from hoopy.ssh.masking import StreamMasker

DETECTORS = tuple(parse_detector(p) for p in ("email", "credit_card", "us_ssn"))
EMAIL = DETECTORS[:1]
M = MASK.encode()


def run(chunks, detectors=DETECTORS, **kw):
    m = StreamMasker(detectors, **kw)
    out = b"".join(m.feed(c) for c in chunks) + m.flush()
    return out, m.counts


def cut(data: bytes, points) -> list:
    points = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# --- values and what surrounds them ---------------------------------------------------------

def _card(prefix_digits):
    digits = "4" + "".join(str(d) for d in prefix_digits)[:14]
    digits = digits.ljust(15, "0")
    check = next(str(c) for c in range(10) if luhn_ok(digits + str(c)))
    return digits + check


emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._%+-", min_size=1, max_size=20),
    st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10), min_size=1, max_size=3),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6))
cards = st.lists(st.integers(0, 9), min_size=14, max_size=14).map(_card)
ssns = st.tuples(st.integers(1, 665), st.integers(1, 99), st.integers(1, 9999)).map(
    lambda t: f"{t[0]:03d}-{t[1]:02d}-{t[2]:04d}")
values = st.one_of(emails, cards, ssns)
# What can sit next to a value without becoming part of it: no digits or address characters, and
# no space or dash just before a value (a card number may have those between its digit groups).
separators = st.sampled_from(["\n", "\r\n", " :", '", "', "\t:", "\x1b[0m\n", " é", " 日本", ";",
                              "\x1b]0;title\x07\n", "\x1b[31m;", "\x1b[2J\x1b[H", " (", ")"])
escapes = st.sampled_from(["\x1b[1m", "\x1b[0;31m", "\x1b[K", "\x9b0m", "\x1b(B"])


@st.composite
def documents(draw):
    """(the output, what masking it must give, how many values)"""
    parts, expected, n = [], [], 0
    for _ in range(draw(st.integers(1, 8))):
        sep = draw(separators)
        parts.append(sep)
        expected.append(sep)
        value = draw(values)
        if draw(st.booleans()):  # a terminal escape inside the value: still the same value on screen
            esc = draw(escapes)
            k = draw(st.integers(1, len(value) - 1))
            parts.append(value[:k] + esc + value[k:])
            expected.append(MASK + esc)
        else:
            parts.append(value)
            expected.append(MASK)
        n += 1
    tail = draw(separators)
    parts.append(tail)
    expected.append(tail)
    return "".join(parts).encode(), "".join(expected).encode(), n


@settings(max_examples=400, deadline=None)
@given(documents(), st.lists(st.integers(0, 10_000), max_size=12))
def test_every_value_is_masked_at_every_cut(doc, points):
    data, expected, n = doc
    out, counts = run(cut(data, points))
    assert out == expected
    assert sum(counts.values()) == n


@settings(max_examples=60, deadline=None)
@given(documents())
def test_a_value_dripped_one_byte_at_a_time_is_masked(doc):
    data, expected, n = doc
    m = StreamMasker(DETECTORS)
    out = bytearray()
    for i in range(len(data)):
        out += m.feed(data[i:i + 1])
        # Nothing that went out is a piece of a value: what was sent is a prefix of the answer.
        assert expected.startswith(bytes(out)), (bytes(out), expected)
    out += m.flush()
    assert bytes(out) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_the_same_output_however_the_bytes_are_split(data, points):
    whole, _ = run([data])
    assert run(cut(data, points))[0] == whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.integers(min_value=0, max_value=500))
def test_without_matches_bytes_are_preserved_whatever_the_split(data, k):
    data = data.replace(b"@", b"_").translate(bytes.maketrans(b"0123456789", b"abcdefghij"))
    out, _ = run([data[:k], data[k:]])
    assert out == data


def test_the_old_seam_a_value_across_the_64k_flush_point():
    """Issue 10: `cat` of a one-line 329 KB JSON file leaked the address straddling 64 KiB."""
    rows = [{"id": i, "email": f"user{i}@example.com", "note": "x" * 40} for i in range(4000)]
    data = json.dumps(rows).encode()
    assert len(data) > 300_000 and b"\n" not in data
    for size in (65536, 32768, 16384, 1000, 7):
        out, counts = run([data[i:i + size] for i in range(0, len(data), size)])
        assert b"@example.com" not in out and counts == {"email": 4000}, size
    # Every possible cut near one value.
    i = data.index(b"user2000@")
    for k in range(i - 3, i + 25):
        out, counts = run([data[:k], data[k:]])
        assert b"user2000" not in out and counts == {"email": 4000}, k


def test_a_prompt_shows_at_once():
    m = StreamMasker(DETECTORS)
    for prompt in (b"root@web-1:~# ", b"[alice@host src]$ ", b"Password: ", b">>> ", b"mysql> ",
                   b"Continue? [y/N] ", b"\x1b[01;32muser@host\x1b[00m:\x1b[01;34m~\x1b[00m$ "):
        assert m.feed(prompt) == prompt


def test_only_a_possible_value_waits_and_goes_once_it_ends():
    m = StreamMasker(DETECTORS)
    assert m.feed(b"contact: alice@exa") == b"contact: "
    assert m.feed(b"mple.com") == b""  # finished, but ".au" could follow
    assert m.feed(b"\n$ ") == M + b"\n$ "
    assert m.feed(b"card 4111 1111") == b"card "
    assert m.feed(b" 1111 1111") == b""
    assert m.feed(b"\r\n") == M + b"\r\n"
    assert m.counts == {"email": 1, "credit_card": 1}


def test_a_finished_value_that_goes_on_is_one_value():
    out, counts = run([b"to: alice@example.com", b".au\n"])
    assert out == b"to: " + M + b"\n" and counts == {"email": 1}
    out, _ = run([b"4111111111111", b"111\n"])  # a Luhn-valid prefix is not the number
    assert out == M + b"\n"


def test_utf8_split_inside_a_character_next_to_a_value():
    data = "é alice@example.com 日本\n".encode()
    for k in range(len(data) + 1):
        out, _ = run([data[:k], data[k:]])
        assert out == "é [REDACTED] 日本\n".encode(), k


def test_escape_sequences_around_and_inside_values_are_kept():
    data = b"\x1b[01;34malice@example.com\x1b[0m\n"  # ls --color
    assert run([data])[0] == b"\x1b[01;34m" + M + b"\x1b[0m\n"
    data = b"ali\x1b[1mce@exam\x1b[0mple.com\n"
    for k in range(len(data) + 1):
        assert run([data[:k], data[k:]])[0] == M + b"\x1b[1m\x1b[0m\n", k


def test_what_is_held_is_bounded():
    m = StreamMasker(EMAIL, max_hold=1000)
    sent = 0
    for _ in range(100):
        sent += len(m.feed(b"a" * 97))  # one endless word: a possible address all along
        assert m.held <= 1000
    assert sent >= 9700 - 1000
    # Output that is not a value is never held at all, however long the line.
    m = StreamMasker(EMAIL)
    assert m.feed(b"x " * 100_000) == b"x " * 100_000 and m.held == 0


def test_a_long_word_does_not_stall_the_scan():
    import time

    t0 = time.monotonic()
    run([b"a" * 65536 + b" x", b"@" * 65536, b"1" * 65536 + b" ", b"a@" + b"b." * 30000 + b" "])
    assert time.monotonic() - t0 < 2


def test_binary_output_without_matches_is_unchanged():
    data = bytes(range(256)).replace(b"@", b"_") * 50
    out, counts = run([data[:1000], data[1000:]])
    assert out == data and counts == {}


def test_custom_regex_patterns_stream_too():
    d = (parse_detector("regex:tok_[A-Za-z0-9]{8}"),)
    data = b"key=tok_AbCd1234 done\n"
    for k in range(len(data) + 1):
        assert run([data[:k], data[k:]], d)[0] == b"key=" + M + b" done\n", k


@settings(max_examples=300, deadline=None)
@given(st.text("ab@.-_ 0123456789x%|\n:", max_size=80))
def test_the_alphabets_cover_what_each_builtin_pattern_consumes(text):
    """Only the trailing run of these characters is searched for an unfinished value."""
    import regex as rx

    from hoopy.ssh.masking import ALPHABETS

    for d in DETECTORS:
        alphabet = rx.compile(ALPHABETS[d.name] + "*")
        for m in d.pattern.finditer(text):
            assert alphabet.fullmatch(m.group(0)), (d.name, m.group(0))

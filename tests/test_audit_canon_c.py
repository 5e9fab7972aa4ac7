"""The C encodings of audit events (hoopy/audit/_canon.c) against the Python code they bypass
(hoopy/audit/chain.py: ``_canonical_python``, ``_link_v2_python``, ``link_bytes``): the same text
for every value the gateway can put in event data, the same link for every row, and None (the
Python path decides) for whatever C does not write exactly the same way. The frozen vectors
(tests/test_chain_vectors.py) run here once more with the C module turned off."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st

from hoopy.audit import chain

C_DUMPS, C_LINK = chain._C_DUMPS, chain._C_LINK
needs_c = pytest.mark.skipif(C_DUMPS is None, reason="the C module is not built (test_the_c_module_is_built says why)")
SOURCE = Path(chain.__file__).with_name("_canon.c")
ROOT = Path(__file__).resolve().parent.parent


def _compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return bool(cc) and shutil.which(cc[0]) is not None and headers.exists() \
        and Path("/usr/include/openssl/evp.h").exists()


def test_the_c_module_is_built_where_a_compiler_is():
    """CI must not test only the fallback: with a compiler, the headers and OpenSSL's, the module
    is there, built from this very source, and chain.py uses it."""
    if not _compiler():
        pytest.skip("no C compiler, Python or OpenSSL headers: the Python code is used, as designed")
    try:
        from hoopy.audit import _canon
    except ImportError as e:
        pytest.fail(f"hoopy/audit/_canon.c is not built ({e}): pip install -e . or "
                    "python3 setup.py build_ext --inplace")
    assert _canon.SOURCE == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), \
        "the built module is from another version of _canon.c: rebuild it"
    if os.environ.get("HOOPY_CANON") != "python":
        assert (C_DUMPS, C_LINK) == (_canon.dumps, _canon.link)


def test_hoopy_canon_python_turns_it_off():
    code = "from hoopy.audit import chain; print(chain._C_DUMPS is None and chain._C_LINK is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "HOOPY_CANON": "python", "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "True"


# --- data: canonical_json ----------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(), max_size=12)  # with lone surrogates, controls, astral
_LEAF = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
         | st.integers(min_value=-2**63 - 2, max_value=-2**63 + 2) | st.integers(min_value=2**64 - 2, max_value=2**64 + 2)
         | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-5, 1e-4, 1e16, 1e22, 5e-324])
         | _TEXT)
_DATA = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                     | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=25)


def _plain(obj, depth=0) -> bool:
    """What the C module must write itself: exact types, string keys, no lone surrogate."""
    if depth > 64:
        return False
    t = type(obj)
    if t is str:
        try:
            obj.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if obj is None or t in (bool, int, float):
        return True
    if t in (list, tuple):
        return all(_plain(v, depth + 1) for v in obj)
    if t is dict:
        return all(type(k) is str and _plain(k) and _plain(v, depth + 1) for k, v in obj.items())
    return False


def _reference(obj) -> str:
    """The standard library, as canonical_json has always written (the frozen CANONICAL vectors)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


@needs_c
@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(_TEXT, _DATA, max_size=8))
@example({"é": 1, "e": 2, "E": 3, "\u00e9\u0301": 4, "😀": 5, "\uffff": 6, "\x7f\x80\u2028": [1.5, -0.0]})
@example({"t": "\x00\x01\x1f\x7f\"\\/\n\t\b\f\r", "n": 2**64, "m": -2**63 - 1, "x": [[{"b": (1, "x")}]]})
@example({"s": "bad\udc80", "k": "ok"})
def test_c_dumps_is_the_python_path(obj):
    got = C_DUMPS(obj)
    want = chain._canonical_python(obj)
    assert want == _reference(obj)
    if _plain(obj):
        assert got == want  # written by C, and the same text
    else:
        assert got is None  # the Python path decides
    assert chain.canonical_json(obj) == want


class _S(str):
    pass


class _I(int):
    pass


class _D(dict):
    pass


def _nested(n):
    v: list = [1]
    for _ in range(n):
        v = [v]
    return v


@needs_c
@pytest.mark.parametrize("obj", [
    {"s": _S("x")}, {"i": _I(3)}, {"d": _D(a=1)}, {_S("k"): 1}, {1: "int key"}, {None: 1}, {"b": b"x"},
    {"set": frozenset()}, {"bad": "\udc80"}, {"bad\ud800": 1}, {"deep": _nested(70)}])
def test_c_dumps_leaves_the_rest_to_python(obj):
    assert C_DUMPS(obj) is None
    assert chain.canonical_json(obj) == _reference(obj)


@needs_c
def test_a_cycle_is_refused_as_before():
    loop: dict = {}
    loop["self"] = loop
    assert C_DUMPS(loop) is None
    with pytest.raises(ValueError):
        chain.canonical_json(loop)


# --- the chain link ------------------------------------------------------------------------------

_VALUE = st.none() | st.integers(min_value=-2**70, max_value=2**70) | _TEXT
_ODD = st.booleans() | st.floats() | st.binary(max_size=3) | st.just(["x"]) | st.builds(_S, _TEXT) | st.builds(_I)


def _python_link(prefix: bytes, prev, values):
    return hashlib.sha256(prefix + prev.encode() + b"\n" + chain._array_bytes(list(values))).hexdigest()


def _check_link(values, prev, prefix, as_tuple):
    vals = tuple(values) if as_tuple else values
    got = C_LINK(prefix, prev, vals)
    try:
        want = _python_link(prefix, prev, vals)
    except (TypeError, UnicodeEncodeError):
        assert got is None  # the Python path refuses it, as it always did
        return None
    simple = prev.isascii() and all(v is None or type(v) in (int, str) for v in values) and all(
        type(v) is not str or _plain(v) for v in values)
    if simple:
        assert got == want  # hashed by C, the same link
    else:
        assert got is None or got == want
    if prefix:
        assert chain.link_v2(prev, vals) == want
    return got


_PREV = st.sampled_from([chain.GENESIS, "ab" * 32, "x\u00e9", ""])
_PREFIX = st.sampled_from([b"", chain._V2_PREFIX_BYTES])


@needs_c
@settings(max_examples=1500, deadline=None)
@given(st.lists(_VALUE, max_size=14), _PREV, _PREFIX, st.booleans())
def test_c_link_is_the_python_link(values, prev, prefix, as_tuple):
    _check_link(values, prev, prefix, as_tuple)


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.lists(_VALUE, min_size=11, max_size=12), st.data())
def test_c_link_of_rows_of_the_writers_width(values, data):
    """Rows as the writer and verify link them: 11 values (v1) or 12 (v2), every position."""
    prev = data.draw(_PREV)
    got = _check_link(values, prev, data.draw(_PREFIX), data.draw(st.booleans()))
    assert got is not None or not prev.isascii() or not all(type(v) is not str or _plain(v) for v in values)


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.lists(_VALUE, max_size=12), _ODD, st.data(), _PREV, _PREFIX)
def test_c_link_leaves_odd_values_to_python(values, odd, data, prev, prefix):
    values.insert(data.draw(st.integers(min_value=0, max_value=len(values))), odd)
    _check_link(values, prev, prefix, False)


@needs_c
def test_the_vectors_take_the_c_link():
    """The frozen vectors (tests/test_chain_vectors.py) are linked by C, not by the fallback."""
    from tests.test_chain_vectors import V1, V2

    prev = chain.GENESIS
    for row, expected in V1:
        assert C_LINK(b"", prev, [row[f] for f in chain.FIELDS_V1]) == expected
        prev = expected
    prev = chain.GENESIS
    for row, _, expected in V2:
        assert C_LINK(chain._V2_PREFIX_BYTES, prev, [row[f] for f in chain.FIELDS_V2]) == expected
        prev = expected


@pytest.fixture
def python_only(monkeypatch):
    monkeypatch.setattr(chain, "_C_DUMPS", None)
    monkeypatch.setattr(chain, "_C_LINK", None)


def test_the_frozen_vectors_without_the_c_module(python_only):
    """The fallback still writes every frozen vector (the C module is optional)."""
    from tests import test_chain_vectors as v

    v.test_v1_links_are_what_hoopy_0_1_wrote()
    v.test_v2_links_and_their_exact_bytes()
    v.test_the_writers_link_is_link()
    v.test_a_lone_surrogate_in_a_chained_column_still_fails_to_link()
    ns = {"Color": v.Color, "S": v._S, "I": v._I, "datetime": v.datetime, "uuid": v.uuid}
    for source, expected in v.CANONICAL:
        assert chain.canonical_json(eval(source, ns)) == expected


# --- the writer's _clean_event: nothing to clean --------------------------------------------------

def _ascii_python(*texts) -> bool:
    return all(t is None or (type(t) is str and t.isascii()) for t in texts)


@needs_c
@settings(max_examples=800, deadline=None)
@given(st.lists(st.none() | _TEXT | st.integers() | st.builds(_S, st.text(max_size=4)), max_size=8))
@example(["a", None, "b\x7f"])
@example(["a", "\x80"])
@example([_S("x")])
def test_c_ascii_is_the_python_check(texts):
    assert chain._C_ASCII(*texts) == _ascii_python(*texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | _TEXT, min_size=7, max_size=7))
def test_clean_event_is_the_same_with_and_without_c(fields):
    """Whether the C check or the loop decides, the event is left alone or cleaned the same way."""
    from unittest import mock

    from hoopy.audit import writer
    from hoopy.audit.events import Event

    session, identity, connection, protocol, peer, kind, outcome = fields
    ev = Event(kind=kind or "k", outcome=outcome, session=session, identity=identity, connection=connection,
               protocol=protocol, peer=peer)
    with_c = writer._clean_event(ev)
    with mock.patch.object(writer, "_C_ASCII", None):
        without = writer._clean_event(ev)
    assert with_c == without
    assert (with_c is ev) == (without is ev)

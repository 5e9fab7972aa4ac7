#!/usr/bin/env python3
"""Check a hoopy evidence archive's events.jsonl without hoopy.

    python3 verify_events.py events.jsonl --key ed25519:BASE64 [--key ...]

Recomputes every hash link and checks every signature of the chain head with
the public key(s) you give: get each gateway node's key from its operator
(``hoopy audit key`` on the gateway host prints it), never from the archive
itself, whose copy (public_keys.json) could have been replaced along with the
events. Without --key only the links are checked, which anyone able to
rewrite the events could also have recomputed.

Needs Python 3.8+ only; uses the ``cryptography`` package when it is
installed, else a plain-Python Ed25519 check (RFC 8032; slower, same answer).
Exit 0: every link holds (and, with --key, every signature verifies and at
least one event is signed); 1: it names the first problem.

The bytes each hash and signature cover are defined in hoopy/audit/chain.py
and hoopy/audit/signing.py; this file restates them so it can run alone.
"""
import base64
import hashlib
import json
import sys

GENESIS = "0" * 64
FIELDS_V1 = ("seq", "time_us", "gateway", "session", "identity", "connection",
             "protocol", "peer", "kind", "outcome", "data")
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TABLE = str.maketrans({**{chr(i): _SHORT.get(chr(i), "\\u%04x" % i) for i in range(0x20)},
                        '"': '\\"', "\\": "\\\\"})


def _value(v):
    if v is None:
        return "null"
    if isinstance(v, str):
        return '"' + v.translate(_TABLE) + '"'
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise TypeError("a chained column holds %s" % type(v).__name__)


def link(prev, row):
    """The frozen link (hoopy/audit/chain.py): v1 without ``writes``, v2 with."""
    if row.get("writes") is None:
        body = "%s\n[%s]" % (prev, ",".join(_value(row[f]) for f in FIELDS_V1))
    else:
        body = "hoopy-chain-v2\n%s\n[%s]" % (prev, ",".join(_value(row[f]) for f in FIELDS_V1 + ("writes",)))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def head_message(seq, hash_):
    return ("hoopy-chain-head-v1\n%d\n%s\n" % (seq, hash_)).encode()


# --- Ed25519 verification -----------------------------------------------------------------

def _verify_cryptography(public, message, signature):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        return True
    except InvalidSignature:
        return False


_P = 2 ** 255 - 19
_Q = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    A = (y1 - x1) * (y2 - x2) % _P
    B = (y1 + x1) * (y2 + x2) % _P
    C = 2 * t1 * t2 * _D % _P
    D = 2 * z1 * z2 % _P
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F % _P, G * H % _P, F * G % _P, E * H % _P)


def _mul(s, p):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(b):
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % _P)


def _verify_python(public, message, signature):
    """RFC 8032 section 5.1.7, as its reference code does it."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    left = _mul(s, _G)
    right = _add(r, _mul(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % _P == 0 and \
        (left[1] * right[2] - right[1] * left[2]) % _P == 0


try:
    import cryptography  # noqa: F401

    verify_signature = _verify_cryptography
except ImportError:  # pragma: no cover - exercised by the tests with the fallback forced
    verify_signature = _verify_python


def parse_key(text):
    text = text.strip()
    if not text.startswith("ed25519:"):
        try:
            with open(text) as f:
                text = f.read().strip()
        except OSError:
            raise ValueError("a key is ed25519:BASE64 (as `hoopy audit key` prints it) or a file holding it")
    raw = base64.b64decode(text[len("ed25519:"):].split()[0])
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(raw).hexdigest()[:16], raw


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    keys = {}
    path = None
    while args:
        a = args.pop(0)
        if a == "--key" and args:
            try:
                kid, raw = parse_key(args.pop(0))
            except (ValueError, IndexError) as e:
                print("bad --key: %s" % e)
                return 2
            keys[kid] = raw
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            path = a
    path = path or "events.jsonl"
    prev = None
    n = 0
    signed = 0
    last = None
    last_seq = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if "data_json" in ev:
                if json.loads(ev["data_json"]) != ev["data"]:
                    print("broken: event %s: its data differs from the data its hash covers" % ev["seq"])
                    return 1
                row = dict(ev, data=ev["data_json"])
            else:  # an archive from before data_json: hoopy's canonical form then
                row = dict(ev, data=json.dumps(ev["data"], sort_keys=True, separators=(",", ":"),
                                              ensure_ascii=False, default=str))
            if prev is not None and ev["prev"] != prev:
                print("broken: event %s: its link to the event before does not match" % ev["seq"])
                return 1
            if last_seq is not None and ev["seq"] != last_seq + 1:
                print("broken: event %s: the chain jumps from event %s (removed)" % (ev["seq"], last_seq))
                return 1
            if link(ev["prev"], row) != ev["hash"]:
                print("broken: event %s: its content does not match its hash" % ev["seq"])
                return 1
            sig = ev.get("signature")
            if sig is not None and keys:
                try:
                    _, kid, b64 = sig.split(":", 2)
                    raw_sig = base64.b64decode(b64)
                except ValueError:
                    print("broken: event %s: its signature is malformed" % ev["seq"])
                    return 1
                if kid not in keys:
                    print("broken: event %s: signed by key %s, which is not among the keys given" % (ev["seq"], kid))
                    return 1
                if not verify_signature(keys[kid], head_message(ev["seq"], ev["hash"]), raw_sig):
                    print("broken: event %s: its signature does not verify (forged, or re-linked after signing)"
                          % ev["seq"])
                    return 1
            if sig is not None:
                signed += 1
                last = ev
            prev = ev["hash"]
            last_seq = ev["seq"]
            n += 1
    print("ok: %d events, every link holds" % n)
    if not keys:
        print("signatures: %d present, NOT checked: give each gateway's public key with --key "
              "(from its operator, not from this archive)" % signed)
        return 0
    if n and last is None:
        print("broken: no event in this archive is signed by the keys given")
        return 1
    if last is not None:
        print("signatures: %d valid; last signed event %s at %s; %d event(s) after it unsigned"
              % (signed, last["seq"], last.get("time"), last_seq - last["seq"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

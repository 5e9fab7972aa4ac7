"""A compressed answer must not carry the injected credential past the scrubber (the gzscrub round).

The gateway injects an upstream credential and scrubs it from responses; a body it did not decode
(a compressed one on a connection without masking) went out unsearched, so a caller asking an
upstream that echoes request headers (httpbin's /gzip, a debug page behind a compressing proxy)
for gzip read the credential. Now: such a connection asks the upstream for ``identity``; a
compressed body that comes anyway is decoded (bounded by mask_limit), scrubbed and sent decoded;
a coding the gateway cannot decode is refused (502). A connection that injects nothing passes
compressed bodies through byte for byte. Real ``twistd -n hoopy``; the upstream is
tests/wire_peers.RawUpstream answering each request with its own head, compressed as scripted.
"""
from __future__ import annotations

import gzip
import json
import re
import socket
import time
import zlib

import brotli
import pytest

from tests.support import HoopyProcess, free_port, ident
from tests.wire_peers import RawUpstream, raw

CALLER = ident("caller")
SECRET = "Bearer gz/scrub+Secret-7777=abcd"
CORE = b"gz/scrub+secret-7777=abcd"  # lower case, without its scheme
MASK_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = RawUpstream()
    port, plain_port = free_port(), free_port()
    body = CALLER.toml(scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_headers = {{ Authorization = "env:API_AUTH" }}
upstream_timeout = "5s"
mask_limit = "{MASK_LIMIT}"

[connections.plain]
type = "http"
listen = "tcp:{plain_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_timeout = "5s"
mask_limit = "{MASK_LIMIT}"

[[grants]]
identity = "caller"
connection = "api"
allow = ["GET /v1/**", "HEAD /v1/**"]

[[grants]]
identity = "caller"
connection = "plain"
allow = ["GET /v1/**", "HEAD /v1/**"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("gzscrub"), body, env={"API_AUTH": SECRET})
    gw.start()
    gw.port, gw.plain_port, gw.up = port, plain_port, up
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


def deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def zstd_raw_frame(data: bytes) -> bytes:
    """A zstd frame of one raw (stored) block: valid zstd, the bytes in it as they are."""
    assert len(data) < 256
    return (b"\x28\xb5\x2f\xfd" + b"\x20" + bytes([len(data)])
            + (1 | (len(data) << 3)).to_bytes(3, "little") + data)


def split_member(data: bytes) -> bytes:
    """Two gzip members, the credential cut between them."""
    i = data.lower().find(CORE) + 7
    assert i > 7
    return gzip.compress(data[:i]) + gzip.compress(data[i:])


CODINGS = {  # name: (Content-Encoding, compress)
    "gzip": (b"gzip", gzip.compress),
    "x-gzip": (b"x-gzip", gzip.compress),
    "deflate zlib": (b"deflate", zlib.compress),
    "deflate raw": (b"deflate", deflate_raw),
    "br": (b"br", brotli.compress),
    "gzip across a member boundary": (b"gzip", split_member),
}


def echo_compressed(encoding: bytes, compress, framing: str = "length", ctype: bytes = b"application/json"):
    """An upstream answering with the request's head (the injected credential in it), compressed."""
    def answer(head: bytes, body: bytes):
        data = json.dumps({"headers": head.decode("latin-1").split("\r\n")[1:], "pad": "p" * 300}).encode()
        z = compress(data)
        h = b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nContent-Encoding: %b\r\n" % (ctype, encoding)
        if framing == "chunked":
            parts = [z[i:i + 7] for i in range(0, len(z), 7)]
            return h + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        whole = h + b"Content-Length: %d\r\n\r\n%b" % (len(z), z)
        if framing == "bytewise":
            def trickle(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(whole)):
                    sock.sendall(whole[i:i + 1])
                    time.sleep(0.0005)
                    yield
            return trickle
        return whole
    return answer


def script(world, path: str, fn) -> bytes:
    world.up.script[path] = fn
    return path.encode()


def get(port: int, path: bytes, method: bytes = b"GET", extra: bytes = b"Accept-Encoding: gzip, deflate, br, zstd\r\n"):
    msg = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + CALLER.token.encode()
           + b"\r\n" + extra + b"Connection: close\r\n\r\n")
    return raw(port, msg, timeout=10, wait_close=True)


def split(out: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        plain, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if not n:
                break
            plain, rest = plain + rest[:n], rest[n + 2:]
        body = plain
    return (int(m.group(1)) if m else 0), head, body


def decodings(body: bytes) -> list[bytes]:
    """The body as a client could read it, every way one might try."""
    out = [body]
    for fn in (gzip.decompress, zlib.decompress, lambda b: zlib.decompress(b, -zlib.MAX_WBITS), brotli.decompress,
               lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)):
        try:
            out.append(fn(body))
        except Exception:
            pass
    return out


def leaked(out: bytes) -> bool:
    _, _, body = split(out)
    return any(CORE in d.lower() or CORE[:12] in d.lower() or CORE[-12:] in d.lower()
               for d in decodings(body) + [out])


def records(world, path: str, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in world.events("http.request") if e["data"].get("path") == path]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def record_clean(world, path: bytes) -> dict:
    recs = records(world, path.decode())
    assert recs, "no record"
    text = json.dumps(recs).lower()
    assert CORE.decode() not in text and CORE[:12].decode() not in text and CORE[-12:].decode() not in text, recs
    return recs[0]["data"]


def asked_identity(world, mark: int) -> None:
    reqs = world.up.since(mark)
    assert reqs, "the upstream saw no request"
    for head, _ in reqs:
        enc = re.findall(rb"(?im)^accept-encoding:\s*(.*?)\r?$", head)
        assert enc == [b"identity"], head


@pytest.mark.parametrize("framing", ["length", "chunked", "bytewise"])
@pytest.mark.parametrize("name", list(CODINGS))
def test_a_compressed_echo_is_decoded_and_scrubbed_never_handing_over_the_credential(world, name, framing):
    encoding, compress = CODINGS[name]
    path = script(world, f"/v1/gz-{re.sub(r'[^a-z]+', '-', name)}-{framing}", echo_compressed(encoding, compress, framing))
    mark = world.up.mark()
    out = get(world.port, path)
    assert not leaked(out), out
    status, head, body = split(out)
    assert status == 200, out
    assert not re.search(rb"(?im)^content-encoding:", head), head  # sent decoded
    doc = json.loads(body)  # whole, and plain JSON
    assert any("Authorization: " + "*" * 10 in h for h in doc["headers"]), doc  # the echo, scrubbed
    assert doc["pad"] == "p" * 300
    asked_identity(world, mark)
    record_clean(world, path)


@pytest.mark.parametrize("encoding, body", [
    (b"zstd", lambda data: zstd_raw_frame(data[:200])),
    (b"gzip, gzip", lambda data: gzip.compress(gzip.compress(data))),
    (b"compress", lambda data: data),
    (b"identity, br", lambda data: b"\xff" + data),  # br that is no brotli: corrupt
])
def test_a_coding_the_gateway_cannot_decode_is_refused_and_recorded(world, encoding, body):
    path = script(world, "/v1/gz-refused-" + re.sub(r"[^a-z]+", "-", encoding.decode()),
                  echo_compressed(encoding, body, ctype=b"application/octet-stream"))
    out = get(world.port, path)
    assert not leaked(out), out
    status, _, text = split(out)
    assert status == 502, out
    assert b"scrub" in text and b"credential" in text, text
    rec = record_clean(world, path)
    assert "the credential the gateway injects" in json.dumps(rec), rec  # the reason, recorded


def test_gzip_gzip_as_two_headers_is_refused_too(world):
    def answer(head, _):
        z = gzip.compress(gzip.compress(head))
        return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(z), z))
    path = script(world, "/v1/gz-two-headers", answer)
    out = get(world.port, path)
    assert not leaked(out) and split(out)[0] == 502, out
    record_clean(world, path)


def test_a_gzip_bomb_is_refused_at_mask_limit_without_the_credential(world):
    # the credential first (a client decoding the start would read it), then 200 MiB of zeros
    def answer(head, _):
        body = bomb_bytes(head)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    def bomb_bytes(head):
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [c.compress(head)]
        zeros = bytes(1 << 20)
        for _ in range(200):
            parts.append(c.compress(zeros))
        return b"".join(parts) + c.flush()

    path = script(world, "/v1/gz-bomb", answer)
    started = time.monotonic()
    out = get(world.port, path)
    assert time.monotonic() - started < 8, "not refused early"
    assert not leaked(out), out[:500]
    status, _, text = split(out)
    assert status == 502 and b"mask_limit" in text, out[:500]
    assert "mask_limit" in json.dumps(record_clean(world, path))


def test_head_with_a_content_encoding_keeps_its_head_and_asks_for_identity(world):
    def answer(head, _):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                b"X-Echo: " + SECRET.encode() + b"\r\nContent-Length: 1234\r\n\r\n")
    path = script(world, "/v1/gz-head", answer)
    mark = world.up.mark()
    out = get(world.port, path, method=b"HEAD")
    assert not leaked(out), out
    status, head, body = split(out)
    assert status == 200 and body == b"", out
    assert re.search(rb"(?im)^content-encoding: gzip\r?$", head) and re.search(rb"(?im)^content-length: 1234", head)
    asked_identity(world, mark)
    record_clean(world, path)


def test_only_a_connection_that_injects_a_credential_decodes(world):
    """The same gzip answer: decoded on the injecting connection, byte for byte through the other."""
    z = gzip.compress(b'{"hello": "' + b"w" * 5000 + b'"}')
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nETag: \"e1\"\r\n"
              b"Content-Length: %d\r\n\r\n%b" % (len(z), z))
    path = script(world, "/v1/gz-passthrough", lambda h, b: answer)
    mark = world.up.mark()
    status, head, body = split(get(world.plain_port, path))
    assert status == 200 and body == z, head
    assert re.search(rb"(?im)^content-encoding: gzip\r?$", head) and re.search(rb"(?im)^etag: \"e1\"", head)
    # the caller's Accept-Encoding goes upstream as it was sent where nothing is injected
    (up_head, _), = world.up.since(mark)
    assert re.findall(rb"(?im)^accept-encoding:\s*(.*?)\r?$", up_head) == [b"gzip, deflate, br, zstd"], up_head
    status, head, body = split(get(world.port, path))
    assert status == 200 and body == gzip.decompress(z), head
    assert not re.search(rb"(?im)^content-encoding:", head), head


def test_a_range_request_on_an_injecting_connection_asks_for_the_whole_body(world):
    """Slices would hand an echoed credential over a piece a request (each piece too short to be
    found by the scrubber): the injecting connection asks the upstream for the whole body; the
    connection that injects nothing forwards Range and If-Range as the caller sent them."""
    def answer(head, _):
        data = json.dumps({"headers": head.decode("latin-1").split("\r\n")[1:]}).encode()
        ranged = re.search(rb"(?im)^range:\s*bytes=(\d+)-(\d+)", head)
        if ranged:
            a, b = int(ranged.group(1)), int(ranged.group(2))
            part = data[a:b + 1]
            return (b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n%b" % (a, b, len(data), len(part), part))
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%b"
                % (len(data), data))
    path = script(world, "/v1/ranged", answer)
    pieces = b""
    for a in range(0, 600, 8):
        mark = world.up.mark()
        extra = b"Range: bytes=%d-%d\r\nIf-Range: \"e1\"\r\n" % (a, a + 7)
        out = get(world.port, path, extra=extra)
        status, head, body = split(out)
        assert status == 200, head
        assert not leaked(out), out
        pieces += body[a:a + 8]
        (up_head, _), = world.up.since(mark)
        assert not re.search(rb"(?im)^(range|if-range):", up_head), up_head
    assert CORE not in pieces.lower() and CORE[:12] not in pieces.lower()
    mark = world.up.mark()
    status, head, body = split(get(world.plain_port, path, extra=b"Range: bytes=0-7\r\nIf-Range: \"e1\"\r\n"))
    assert status == 206 and len(body) == 8, head
    (up_head, _), = world.up.since(mark)
    assert re.search(rb"(?im)^range: bytes=0-7\r?$", up_head) and re.search(rb"(?im)^if-range: \"e1\"", up_head)

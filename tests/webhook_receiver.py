"""A webhook receiver for the notification tests (no tests in here), written as a user of
hoopy would write one from docs/operators.md, without importing hoopy.

Run as ``python tests/webhook_receiver.py PORT LOGFILE SECRET [FAIL_FIRST]``: an HTTP server on
127.0.0.1:PORT. POST /json: checks ``Hoopy-Signature`` (HMAC-SHA256 of "t.body" with SECRET,
at most 5 minutes old), answers 401 if it does not verify, 204 if it does; POST /slack: 200.
The first FAIL_FIRST posts get 503. /hang accepts and never answers. Each post is one JSON
line in LOGFILE: path, headers, body, whether the signature verified, the status sent.
"""
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def main(port, logfile, secret, fail_first=0):
    log = open(logfile, "a", buffering=1)
    state = {"left": int(fail_first)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            if self.path == "/hang":
                time.sleep(60)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            valid = verify(secret.encode(), self.headers.get("Hoopy-Signature", ""), body)
            if state["left"] > 0:
                state["left"] -= 1
                status = 503
            elif self.path == "/json":
                status = 204 if valid else 401
            else:
                status = 200
            log.write(json.dumps({"path": self.path, "headers": dict(self.headers), "status": status,
                                  "valid": valid, "body": body.decode("utf-8", "replace")}) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])

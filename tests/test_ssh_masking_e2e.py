"""Masking through the real gateway and sshd: exec with and without a terminal, shells, stderr,
recordings (issue 10 §3)."""
from __future__ import annotations

import json
import subprocess
import time

from tests.test_ssh import agent_key, setup, sshd  # noqa: F401  (fixtures)

MASKING = '\n[[masking]]\nconnection = "web"\npatterns = ["email", "credit_card", "us_ssn"]\n'


def _json_file(tmp_path, n=4000):
    rows = [{"id": i, "email": f"user{i}@example.com", "note": "x" * 40} for i in range(n)]
    path = tmp_path / "customers.json"
    path.write_text(json.dumps(rows))  # one line, about 329 KB, as in the attack
    return path


def _cast(s):
    (start,) = s.sessions()
    return s.gw.recordings / f"{start['session']}.cast"


def _wait_events(s, kind, n=1, timeout=10):
    deadline = time.monotonic() + timeout
    while len(s.gw.events(kind)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return s.gw.events(kind)


def test_a_one_line_json_file_leaks_no_address_without_or_with_a_terminal(setup, tmp_path):
    path = _json_file(tmp_path)
    s = setup(allow=[f"exec cat {path}"], extra=MASKING)
    r = subprocess.run(s.ssh_args() + [f"cat {path}"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"@example.com" not in r.stdout, r.stdout.count(b"@example.com")
    assert r.stdout.count(b"[REDACTED]") == 4000
    r = subprocess.run(s.ssh_args() + [f"cat {path} 1>&2"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"@example.com" not in r.stderr and r.stderr.count(b"[REDACTED]") == 4000
    # ssh -tt: the terminal's output is masked too, and so is its recording.
    r = subprocess.run(s.ssh_args("-tt") + [f"cat {path}"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"@example.com" not in r.stdout and r.stdout.count(b"[REDACTED]") == 4000
    evs = _wait_events(s, "redaction", 3)
    assert [e["data"]["patterns"] for e in evs] == [{"email": 4000}] * 3
    cast = s.gw.recordings / f"{s.sessions()[-1]['session']}.cast"
    text = cast.read_text()
    assert "@example.com" not in text and text.count("[REDACTED]") == 4000
    markers = [json.loads(line)[2] for line in text.splitlines()[1:] if json.loads(line)[1] == "m"]
    assert markers and all(m.startswith("redacted ") and "email" in m for m in markers)
    assert sum(int(m.split()[1]) for m in markers) == 4000
    (ev,) = [e for e in s.gw.events("ssh.exec") if e["data"]["pty"]]
    assert ev["data"]["redacted"] == {"email": 4000} and ev["data"]["recording"] == cast.name
    assert s.gw.hoopy("audit", "verify").returncode == 0


def test_a_shell_on_a_terminal_is_masked_and_recorded_masked(setup, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("alice@example.com\n4111 1111 1111 1111\n078-05-1120\n")
    s = setup(allow=["shell"], extra=MASKING)
    r = s.ssh(None, "-tt", input=f"cat {secret}\nexit\n")
    assert r.returncode == 0, r.stderr
    assert "alice@example.com" not in r.stdout and "4111" not in r.stdout and "078-05" not in r.stdout
    assert r.stdout.count("[REDACTED]") >= 3
    cast = _cast(s)
    _wait_events(s, "recording.sealed")
    shown = subprocess.run(["asciinema", "cat", str(cast)], capture_output=True, text=True, check=True).stdout
    assert "alice@example.com" not in shown and "[REDACTED]" in shown
    (red,) = _wait_events(s, "redaction")
    assert red["data"]["patterns"] == {"email": 1, "credit_card": 1, "us_ssn": 1}
    (sealed,) = s.gw.events("recording.sealed")
    assert sealed["data"]["redacted"] == {"email": 1, "credit_card": 1, "us_ssn": 1}
    assert red["data"]["where"] == "terminal output" and red["data"]["recording"] == cast.name


def test_a_value_dripped_slowly_is_masked_and_a_prompt_still_shows(setup):
    s = setup(allow=["exec sh"], extra=MASKING)
    drip = "for c in a l i c e @ e x a m p l e . c o m; do printf %s $c; sleep 0.05; done; echo\n"
    r = s.ssh("sh", input=drip + "printf 'Password: '\n")
    assert r.stdout == "[REDACTED]\nPassword: ", r
    # The prompt goes out before the command ends: an interactive program is usable.
    p = subprocess.Popen(s.ssh_args() + ["sh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    p.stdin.write(b"printf 'Continue? [y/N] '; read answer; echo got-$answer\n")
    p.stdin.flush()
    assert p.stdout.read(len(b"Continue? [y/N] ")) == b"Continue? [y/N] "
    p.stdin.write(b"y\n")
    p.stdin.close()
    assert p.stdout.read() == b"got-y\n"
    p.wait(timeout=30)

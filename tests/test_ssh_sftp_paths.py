"""SFTP by path (`sftp read GLOB`, `sftp write GLOB`) against a real sshd, with the real sftp and scp
clients: every file request judged on the path the upstream resolves."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from tests.test_ssh import CLIENT_OPTS, agent_key, setup, sshd  # noqa: F401  (fixtures)


def sftp_batch(s, tmp_path, commands: str, name="batch"):
    batch = tmp_path / name
    batch.write_text(commands)
    # `-b`: stop at the first failing command unless it starts with `-`.
    return subprocess.run(["sftp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, "-b", str(batch),
                           "agent@127.0.0.1"], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "srv"
    (root / "pub").mkdir(parents=True)
    (root / "in").mkdir()
    (root / "pub" / "a.txt").write_text("public\n")
    (root / "secret.txt").write_text("secret\n")
    os.symlink(root / "secret.txt", root / "pub" / "link.txt")  # a link out of the granted tree
    os.symlink(root, root / "pub" / "up")  # a directory link back up
    return root


def test_sftp_read_and_write_rules_judge_the_resolved_path(setup, tmp_path, tree):
    s = setup(allow=[f"sftp read {tree}/pub/**", f"sftp write {tree}/in/**"])
    got = tmp_path / "got"
    got.mkdir()
    up = tmp_path / "upload.bin"
    up.write_bytes(os.urandom(300_000))

    # Allowed: read under pub, write under in.
    r = sftp_batch(s, tmp_path, f"get {tree}/pub/a.txt {got}/a.txt\nput {up} {tree}/in/up.bin\nls {tree}/pub\n")
    assert r.returncode == 0, r.stderr
    assert (got / "a.txt").read_text() == "public\n"
    assert (tree / "in" / "up.bin").read_bytes() == up.read_bytes()

    # Refused, each on its own line (the `-` keeps the batch going): the symlink, `..`, the
    # directory link, writing where only reading is granted, reading where only writing is.
    attempts = [f"get {tree}/pub/link.txt {got}/l1", f"get {tree}/pub/../secret.txt {got}/l2",
                f"get {tree}/pub/up/secret.txt {got}/l3", f"put {up} {tree}/pub/new.bin",
                f"get {tree}/in/up.bin {got}/l4", f"rename {tree}/in/up.bin {tree}/pub/moved.bin",
                f"rm {tree}/pub/a.txt", f"mkdir {tree}/pub/d", f"symlink {tree}/secret.txt {tree}/in/s",
                f"ls {tree}"]
    r = sftp_batch(s, tmp_path, "".join(f"-{a}\n" for a in attempts), "batch2")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in got.iterdir()) == ["a.txt"]
    assert not (tree / "pub" / "new.bin").exists() and not (tree / "pub" / "moved.bin").exists()
    assert (tree / "pub" / "a.txt").exists() and not (tree / "pub" / "d").exists()
    assert not (tree / "in" / "s").exists() and (tree / "in" / "up.bin").exists()
    # Each refused (the client reports a refused stat of a glob as "not found").
    failed = [ln for ln in r.stderr.splitlines() if "ermission denied" in ln or "not found" in ln]
    assert len(failed) == len(attempts), r.stderr

    time.sleep(0.3)
    refused = [e for e in s.gw.events("operation") if e["outcome"] == "refused"]
    units = " ".join(" ".join(e["data"]["units"]) for e in refused)
    assert f"sftp.read {tree}/secret.txt" in units  # the link, the `..` and the dir link, resolved
    assert f"sftp.write {tree}/pub/new.bin" in units and f"sftp.write {tree}/pub/moved.bin" in units
    # The upload's event has its size and the SHA-256 of what was written.
    (close,) = [e["data"] for e in s.gw.events("sftp.close") if e["data"]["path"].endswith("up.bin")
                and e["data"]["bytes_written"]]
    assert close["sha256"] == hashlib.sha256(up.read_bytes()).hexdigest()
    assert close["bytes_written"] == 300_000
    opens = [e["data"] for e in s.gw.events("sftp.open")]
    assert all(o.get("rule") for o in opens)


def test_scp_obeys_the_same_rules(setup, tmp_path, tree):
    s = setup(allow=[f"sftp read {tree}/pub/**", f"sftp write {tree}/in/**"])
    up = tmp_path / "x.bin"
    up.write_bytes(b"x" * 1000)
    scp = ["scp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS]
    assert subprocess.run(scp + [str(up), f"agent@127.0.0.1:{tree}/in/x.bin"], capture_output=True,
                          timeout=60).returncode == 0
    assert (tree / "in" / "x.bin").exists()
    r = subprocess.run(scp + [str(up), f"agent@127.0.0.1:{tree}/x.bin"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and not (tree / "x.bin").exists(), r
    r = subprocess.run(scp + [f"agent@127.0.0.1:{tree}/pub/link.txt", str(tmp_path / "stolen")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not (tmp_path / "stolen").exists(), r


def test_a_held_sftp_write_waits_for_a_reviewer(setup, tmp_path, tree):
    s = setup(allow=[f"sftp read {tree}/**"], approve=[f"sftp write {tree}/in/**"])
    up = tmp_path / "x.bin"
    up.write_bytes(b"held\n")
    batch = tmp_path / "b"
    batch.write_text(f"put {up} {tree}/in/held.bin\n")
    p = subprocess.Popen(["sftp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, "-b", str(batch),
                          "agent@127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    assert "sftp open" in row["operation"] and not (tree / "in" / "held.bin").exists()
    assert s.gw.hoopy("approve", row["id"], token=s.reviewer.token).returncode == 0
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert (tree / "in" / "held.bin").read_bytes() == b"held\n"


def test_plain_sftp_still_grants_everything_and_relative_paths_resolve_upstream(setup, tmp_path, tree):
    s = setup(allow=["sftp"], deny=[f"sftp write {tree}/pub/**"])
    up = tmp_path / "x.bin"
    up.write_bytes(b"y")
    r = sftp_batch(s, tmp_path, f"cd {tree}\nput {up} in/rel.bin\n-put {up} pub/rel.bin\n-put {up} in/../pub/r2\n")
    assert r.returncode == 0, r.stderr
    assert (tree / "in" / "rel.bin").exists()
    assert not (tree / "pub" / "rel.bin").exists() and not (tree / "pub" / "r2").exists()

"""Retry-after-approval over SSH with the real ssh client and a real sshd: exit 126 at once
with the approval id on stderr; after approval the identical command runs once."""
import re

from tests.test_ssh import agent_key, setup as ssh_setup, sshd  # noqa: F401  (fixtures)
import pytest


@pytest.fixture
def setup(ssh_setup):
    return ssh_setup  # (the gateway's ssh listener answers once it has started: tests/support.py)


def approval_id(err: str) -> str:
    return re.search(r"held for approval (ap-[0-9a-f]+)", err).group(1)


def test_ssh_exec_is_refused_at_once_then_runs_once(setup, tmp_path):
    s = setup(approve=["exec touch *"], extra='approvals = "retry"')
    target = tmp_path / "restarted"
    r = s.ssh(f"touch {target}", timeout=15)
    assert r.returncode == 126, r.stderr
    aid = approval_id(r.stderr)
    assert "run the same command again after it is approved" in r.stderr
    assert f"hoopy approve {aid}" in r.stderr and "runs once" in r.stderr
    assert not target.exists()
    r = s.ssh(f"touch {target}")  # again while pending: the same approval
    assert r.returncode == 126 and f"approval {aid} is still pending" in r.stderr

    assert s.gw.hoopy("approve", aid, token=s.reviewer.token).returncode == 0
    other = tmp_path / "other"
    r = s.ssh(f"touch {other}")
    assert r.returncode == 126 and approval_id(r.stderr) != aid and not other.exists()
    r = s.ssh(f"touch {target}")
    assert r.returncode == 0, r.stderr
    assert target.exists()
    target.unlink()
    r = s.ssh(f"touch {target}")  # once only
    assert r.returncode == 126 and approval_id(r.stderr) != aid and not target.exists()
    runs = [e for e in s.gw.events("operation") if e["outcome"] == "allowed" and e["data"].get("approval") == aid]
    assert len(runs) == 1 and runs[0]["data"]["text"] == f"touch {target}"
    assert s.gw.hoopy("audit", "verify").returncode == 0


def test_a_held_shell_in_retry_mode_is_refused_and_then_opens(setup):
    s = setup(approve=["shell"], extra='approvals = "retry"')
    r = s.ssh(None, "-tt", input="echo inside\nexit\n", timeout=15)
    assert r.returncode == 126 and "inside" not in r.stdout
    aid = approval_id(r.stdout + r.stderr)
    assert s.gw.hoopy("approve", aid, token=s.reviewer.token).returncode == 0
    r = s.ssh(None, "-tt", input="echo inside\nexit\n", timeout=30)
    assert r.returncode == 0 and "inside" in r.stdout, r.stdout + r.stderr


def test_a_compound_line_is_approved_whole_and_the_same_parts_otherwise_joined_are_not(setup, tmp_path):
    s = setup(allow=["exec echo *"], approve=["exec touch *"], extra='approvals = "retry"')
    a, b = tmp_path / "a", tmp_path / "b"
    line = f"touch {a} && echo done"
    r = s.ssh(line)
    assert r.returncode == 126
    aid = approval_id(r.stderr)
    row = s.gw.get(f"/approvals/{aid}", s.reviewer.token)[1]
    assert row["mode"] == "retry" and "echo done" in row["operation"]
    assert s.gw.hoopy("approve", aid, token=s.reviewer.token).returncode == 0
    # The same parts joined otherwise (a `;` runs the echo even if touch fails) are not what was approved.
    r = s.ssh(f"touch {a} ; echo done")
    assert r.returncode == 126 and approval_id(r.stderr) != aid and not a.exists()
    r = s.ssh(line)
    assert r.returncode == 0 and "done" in r.stdout and a.exists(), r.stderr
    assert not b.exists()

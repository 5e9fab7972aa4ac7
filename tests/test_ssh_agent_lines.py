"""What agents send, against a real sshd through a real gateway: each command line allowed,
refused, held or unjudgeable, and what actually ran upstream (a marker file that must or must
not exist). Also fixed attribution of an identity."""
from __future__ import annotations

import pwd
import subprocess
import time

import pytest

from hoopy.ssh.shell import dialect_of
from tests.support import ident
from tests.test_ssh import CLIENT_OPTS, agent_key, connection_toml, grant, sshd  # noqa: F401  (fixtures)


# (name, line, expect, markers): expect is "allow" (the markers exist afterwards), "refuse"
# (exit 126, no marker exists), "held" (held, then approved: the markers exist), "unjudgeable"
# (refused for `agent`; for `agent2`, whose grant says unjudgeable = "approve", held then run).
# M stands for the markers' folder. A marker `!x` must NOT exist afterwards.
LINES = [
    ("plain", "touch M/ok-1", "allow", ["ok-1"]),
    ("cd-and", "cd M && touch M/ok-2", "allow", ["ok-2"]),
    ("timeout-sh-c", "timeout 120 sh -c 'touch M/ok-3'", "allow", ["ok-3"]),
    ("bash-lc", "bash -lc \"touch M/ok-4\"", "allow", ["ok-4"]),
    ("and-list", "true && touch M/ok-5", "allow", ["ok-5"]),
    ("or-list", "false || touch M/ok-6", "allow", ["ok-6"]),
    ("pipe-tee", "echo hi | tee M/w-7", "allow", ["w-7"]),
    ("redirect", "echo hi > M/w-8", "allow", ["w-8"]),
    ("append", "echo hi >> M/w-9", "allow", ["w-9"]),
    ("heredoc-quoted", "cat > M/w-10 <<'EOF'\nhello $USER `id`\nEOF", "allow", ["w-10"]),
    ("stderr-merge", "ls /etc/hosts > M/w-11 2>&1", "allow", ["w-11"]),
    ("read-redirect", "cat < /etc/hosts > M/w-12", "allow", ["w-12"]),
    ("group-redirect", "{ echo a; echo b; } > M/w-13", "allow", ["w-13"]),
    ("subshell", "(touch M/ok-14)", "allow", ["ok-14"]),
    ("if", "if true; then touch M/ok-15; fi", "allow", ["ok-15"]),
    ("for", "for i in 1 2; do touch M/ok-16; done", "allow", ["ok-16"]),
    ("env-locale", "env LANG=C touch M/ok-17", "allow", ["ok-17"]),
    ("prefix-locale", "LC_ALL=C touch M/ok-18", "allow", ["ok-18"]),
    ("nice-nohup", "nice -n 5 nohup touch M/ok-19", "allow", ["ok-19"]),
    ("stdbuf", "stdbuf -oL touch M/ok-20", "allow", ["ok-20"]),
    ("command", "command touch M/ok-21", "allow", ["ok-21"]),
    ("exec", "exec touch M/ok-22", "allow", ["ok-22"]),
    ("xargs", "echo M/ok-23 | xargs mkdir -p", "allow", ["ok-23"]),
    ("grep-to-file", "grep -c localhost /etc/hosts > M/w-24", "allow", ["w-24"]),
    ("nested-sh", "sh -c \"sh -c 'touch M/ok-25'\"", "allow", ["ok-25"]),
    ("relative-after-cd", "cd / && cd M && echo x > w-26", "allow", ["w-26"]),
    ("comment", "touch M/ok-27 # a comment", "allow", ["ok-27"]),
    ("quoted-path", "touch 'M/ok-28'", "allow", ["ok-28"]),
    ("semicolon", "touch M/ok-29; true", "allow", ["ok-29"]),
    ("negation", "! false && touch M/ok-30", "allow", ["ok-30"]),
    ("or-else", "echo done && touch M/ok-32 || echo failed", "allow", ["ok-32"]),
    ("devnull", "touch M/ok-33 2>/dev/null", "allow", ["ok-33"]),
    ("background-wait", "touch M/ok-34 & wait", "allow", ["ok-34"]),
    ("test", "test -d M && touch M/ok-35", "allow", ["ok-35"]),
    ("bracket", "[ -d M ] && touch M/ok-36", "allow", ["ok-36"]),
    ("case", "case x in x) touch M/ok-37;; esac", "allow", ["ok-37"]),
    ("while", "while false; do :; done; touch M/ok-38", "allow", ["ok-38"]),
    ("heredoc-plain", "cat > M/w-40 <<-EOF\n\tplain\n\tEOF", "allow", ["w-40"]),
    ("newlines", "touch M/ok-41a\ntouch M/ok-41b", "allow", ["ok-41a", "ok-41b"]),
    # Refused: the whole line, so nothing of it runs (the allowed part neither).
    ("no-rule", "touch M/no-42", "refuse", ["!no-42"]),
    ("one-part-refused", "touch M/ok-43; touch M/no-43", "refuse", ["!ok-43", "!no-43"]),
    ("deny-rule", "touch M/denied-44", "refuse", ["!denied-44"]),
    ("write-no-rule", "echo hi > M/no-45", "refuse", ["!no-45"]),
    ("ld-preload", "env LD_PRELOAD=/nonexistent.so touch M/ok-46", "refuse", ["!ok-46"]),
    ("bash-env", "BASH_ENV=/tmp/x sh -c 'touch M/ok-47'", "refuse", ["!ok-47"]),
    ("path", "PATH=/usr/bin touch M/ok-48", "refuse", ["!ok-48"]),
    ("dev-tcp", "touch M/ok-49 > /dev/tcp/127.0.0.1/9", "refuse", ["!ok-49"]),
    ("inside-sh-c", "timeout 5 sh -c 'touch M/ok-50; touch M/no-50'", "refuse", ["!ok-50", "!no-50"]),
    ("pipe-to-sh", "echo touch M/ok-51 | sh", "refuse", ["!ok-51"]),
    ("deny-rm", "touch M/ok-52 && rm -rf M/ok-1", "refuse", ["!ok-52", "ok-1"]),
    ("env-S", "env -S 'touch M/ok-53'", "refuse", ["!ok-53"]),
    ("bash-i", "echo touch M/ok-54 | bash -i", "refuse", ["!ok-54"]),
    ("exec-a", "exec -a touch busybox touch M/ok-55", "refuse", ["!ok-55"]),
    ("tee-no-rule", "echo x | tee M/no-56", "refuse", ["!no-56"]),
    # Unjudgeable: refused, or held where the grant says unjudgeable = "approve".
    ("arith", "touch M/ok-$((57))", "unjudgeable", ["ok-57"]),
    ("cmd-subst", "touch $(echo M/ok-58)", "unjudgeable", ["ok-58"]),
    ("eval", "eval touch M/ok-59", "unjudgeable", ["ok-59"]),
    ("variable", "x=M/ok-60; mkdir -p $x", "unjudgeable", ["ok-60"]),
    ("deny-expansion", "x=M/denied-70; touch $x", "refuse", ["!denied-70"]),  # $x could be denied-*
    ("function", "f() { touch M/ok-61; }; f", "unjudgeable", ["ok-61"]),
    ("relative-unknown", "touch M/ok-62 > w-62", "unjudgeable", ["ok-62"]),
    ("braces", "touch M/ok-6{3,4}", "unjudgeable", ["ok-63", "ok-64"]),
    ("backquote", "touch M/ok-`echo 65`", "unjudgeable", ["ok-65"]),
    ("dotdot", "touch M/ok-66 > M/../m/w-66", "unjudgeable", ["ok-66"]),
    # Held by an approve rule, then approved: all of the line runs.
    ("held", "touch M/held-67", "held", ["held-67"]),
    ("held-part", "touch M/ok-68 && touch M/held-68", "held", ["ok-68", "held-68"]),
    ("held-inside", "sh -c 'touch M/held-69'", "held", ["held-69"]),
]


def login_shell(user: str) -> str:
    return pwd.getpwnam(user).pw_shell


@pytest.fixture
def agents(hoopy_gateway, sshd, agent_key, tmp_path):  # noqa: F811
    key, pub = agent_key
    marks = tmp_path / "m"
    marks.mkdir()
    m = str(marks)
    agent, agent2, alice = ident("agent"), ident("agent2"), ident("alice")
    shell_name = "bash" if dialect_of(login_shell(sshd.user)) == "bash" else "sh"
    conn, port = connection_toml(sshd, extra=f'upstream_shell = "{shell_name}"')
    allow = [f"exec touch {m}/ok-*", "exec echo *", "exec true", "exec false", "exec grep -c *", "exec ls *",
             "exec cat", "exec mkdir -p *", f"write {m}/w-*", "read /etc/hosts"]
    approve = [f"exec touch {m}/held-*"]
    deny = [f"exec touch {m}/denied-*", "exec rm *"]
    body = (agent.toml(ssh_keys=[pub]) + 'model = "fixed-model"\nmcp_server = "ssh-mcp"\n'
            + agent2.toml(ssh_keys=[pub]) + alice.toml(kind="human", roles=["reviewer"]) + conn
            + grant("agent", allow, approve, deny)
            + grant("agent2", allow, approve, deny) + 'unjudgeable = "approve"\n')
    gw = hoopy_gateway(body)
    return gw, port, key, marks, alice


def _ssh(port, key, user, line, **kw):
    return ["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, f"{user}@127.0.0.1", line]


def _run_held(gw, argv, reviewer):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (row,) = gw.wait_pending(reviewer.token)
        r = gw.hoopy("approve", row["id"], token=reviewer.token)
        assert r.returncode == 0, r.stderr
        out, err = p.communicate(timeout=30)
        return p.returncode, err, row
    finally:
        if p.poll() is None:
            p.kill()


def test_what_agents_send(agents):
    gw, port, key, marks, alice = agents
    assert len(LINES) >= 60
    wrong = []
    for name, line, expect, markers in LINES:
        text = line.replace("M/", f"{marks}/").replace("M ", f"{marks} ").replace("M\n", f"{marks}\n")
        if text.endswith(" M"):
            text = text[:-1] + str(marks)
        argv = _ssh(port, key, "agent", text)
        if expect in ("allow", "refuse", "unjudgeable"):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            rc, err = r.returncode, r.stderr
            if expect == "allow" and rc != 0:
                wrong.append((name, f"exit {rc}: {err.strip()}"))
            if expect in ("refuse", "unjudgeable"):
                if rc != 126 or "hoopy: refused:" not in err:
                    wrong.append((name, f"not refused: exit {rc}: {err.strip()}"))
                if expect == "unjudgeable" and "cannot judge" not in err:
                    wrong.append((name, f"refused without saying what cannot be judged: {err.strip()}"))
        if expect == "held":
            rc, err, row = _run_held(gw, argv, alice)
            if rc != 0 or "held for approval" not in err:
                wrong.append((name, f"held: exit {rc}: {err.strip()}"))
            if name == "held-part":
                # The reviewer reads every part with what judged it.
                shown = gw.hoopy("approvals", row["id"]).stdout
                if "-- parts:" not in shown or f"exec touch {marks}/ok-68  (allow" not in shown \
                        or f"exec touch {marks}/held-68  (approve" not in shown:
                    wrong.append((name, f"hoopy approvals ID does not show the parts: {shown}"))
        time.sleep(0.05)
        for mark in markers:
            must_not = mark.startswith("!")
            if must_not or expect in ("allow", "held", "refuse"):
                exists = (marks / mark.lstrip("!")).exists()
                if exists == must_not:
                    wrong.append((name, f"{mark}: {'ran' if exists else 'did not run'} upstream"))
            elif (marks / mark).exists():
                wrong.append((name, f"{mark}: ran upstream although unjudgeable"))
    assert not wrong, "\n".join(f"{n}: {w}" for n, w in wrong)
    assert (marks / "w-10").read_text() == "hello $USER `id`\n"
    assert (marks / "w-40").read_text() == "plain\n"

    # Every refused line is an `operation` event that names what refused it; nothing of it ran.
    refused = [e for e in gw.events("operation") if e["outcome"] == "refused"]
    assert len(refused) == sum(1 for _, _, e, _ in LINES if e in ("refuse", "unjudgeable"))
    one = next(e for e in refused if "no-43" in e["data"]["text"])
    assert [p["outcome"] for p in one["data"]["parts"]] == ["allow", "deny"]
    assert one["data"]["parts"][0]["rule"] == f"exec touch {marks}/ok-*"
    # The here-document's write is on the record with its size and hash.
    heredoc = next(e for e in gw.events("operation") if "w-10" in e["data"]["text"])
    import hashlib
    (h,) = heredoc["data"]["heredocs"]
    assert h["sha256"] == hashlib.sha256(b"hello $USER `id`\n").hexdigest() and h["bytes"] == 17

    # The unjudgeable lines, for an identity whose grant holds them: they run once approved,
    # and the reviewer sees each part.
    for name, line, expect, markers in LINES:
        if expect != "unjudgeable" or name not in ("arith", "eval", "variable"):
            continue
        text = line.replace("M/", f"{marks}/")
        rc, err, row = _run_held(gw, _ssh(port, key, "agent2", text), alice)
        assert rc == 0 and "cannot judge" in err, (name, err)
        assert all((marks / mk).exists() for mk in markers), name
    r = gw.hoopy("approvals", "--all")
    assert r.returncode == 0
    shown = gw.hoopy("approvals", row["id"])
    assert "cannot judge" in shown.stdout or "unjudgeable" in shown.stdout, shown.stdout


def test_fixed_attribution_is_recorded_and_a_claim_beside_it(agents):
    gw, port, key, marks, alice = agents
    r = subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "-o",
                        "SetEnv=HOOPY_MODEL=claimed-model HOOPY_TOOL_CALL=call-7", "agent@127.0.0.1", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    attrs = [e["data"] for e in gw.events("session.attribution")]
    assert {"model": "fixed-model", "mcp_server": "ssh-mcp", "source": "identity"} in attrs
    assert {"tool_call": "call-7", "claimed_model": "claimed-model", "source": "claimed"} in attrs
    out = gw.hoopy("sessions", "--json")
    import json
    (s,) = json.loads(out.stdout)
    assert s["model"] == "fixed-model" and s["mcp_server"] == "ssh-mcp" and s["tool_call"] == "call-7"
    assert gw.hoopy("audit", "verify").returncode == 0
    # Another identity without fixed attribution: the client's value is shown, marked claimed.
    r = subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "-o",
                        "SetEnv=HOOPY_MODEL=m2", "agent2@127.0.0.1", "true"], capture_output=True, timeout=30)
    assert {"model": "m2", "source": "claimed"} in [e["data"] for e in gw.events("session.attribution")]


def test_check_upstream_shell_reads_the_login_shell(sshd, tmp_path):  # noqa: F811
    """What `hoopy check --connect` calls: the configured upstream_shell against the real one."""
    import asyncio
    import threading

    from hoopy import config as cm
    from hoopy.ssh.upstream import check_upstream_shell

    real = login_shell(sshd.user)
    results = {}
    for configured in ("bash", "sh", "zsh"):
        conn, _ = connection_toml(sshd, extra=f'upstream_shell = "{configured}"')
        path = tmp_path / f"{configured}.toml"
        path.write_text(f'[gateway]\nstate = "{tmp_path}/x.db"\n' + conn)
        settings = cm.load(path).connections["web"].settings

        def run():
            results[configured] = asyncio.run(check_upstream_shell(settings))

        t = threading.Thread(target=run)
        t.start()
        t.join(60)
    right = dialect_of(real)
    for configured, problem in results.items():
        if dialect_of(configured) == right:
            assert problem is None, (configured, problem)
        else:
            assert problem and real in problem and "upstream_shell" in problem, (configured, problem)

"""An exec with a terminal (`ssh -t host CMD`): the keys typed reach the program, and a pager's `!cmd`,
`vi`'s `:!sh` or `ed`'s `!` run a shell from inside a granted command. So such an exec needs the
`shell` grant as well as its exec rule, unless every program it runs is one known to take no
commands from the terminal (hoopy.ssh.shell.NO_TERMINAL_ESCAPE).

Against a real sshd through a real gateway, with real `less`, `vi` and `ed` upstream: each escape is
shown to work where `shell` is granted (the control), and never to run where it is not.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from hoopy.ssh import shell
from tests.support import HoopyProcess, ident
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen

PROGRAMS = ["less", "vi", "ed"]

# (name, line, the keys that run `touch MARK` from inside it, the keys that leave it). F is a file
# of 200 lines (more than a screen: the pager waits for keys), D its folder.
ESCAPES = [
    ("less", "less F", "!touch MARK\n", "\nq"),
    ("less-path", "/usr/bin/less F", "!touch MARK\n", "\nq"),
    ("less-piped", "cat F | less", "!touch MARK\n", "\nq"),
    ("less-timeout", "timeout --foreground 60 less F", "!touch MARK\n", "\nq"),
    ("less-sh-c", "sh -c 'less F'", "!touch MARK\n", "\nq"),
    ("less-cd", "cd D && less F", "!touch MARK\n", "\nq"),
    ("less-env", "env LANG=C.UTF-8 less F", "!touch MARK\n", "\nq"),
    ("less-nice", "nice -n 5 less F", "!touch MARK\n", "\nq"),
    ("vi", "vi F", ":!touch MARK\n", "\n:q!\n"),
    ("ed", "ed F", "!touch MARK\n", "q\n"),
]
ALLOW = ["exec less *", "exec less", "exec /usr/bin/less *", "exec cat", "exec /bin/cat *", "exec vi *", "exec ed *", "exec cat *", "exec sleep *", "exec echo *"]


def _need():
    for p in PROGRAMS:
        assert shutil.which(p), f"{p} is needed upstream for the terminal escape tests (.ci/run installs it)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need()
    root = tmp_path_factory.mktemp("terminal")
    data = root / "data"
    data.mkdir()
    f = data / "file.txt"
    f.write_text("".join(f"line {i}\n" for i in range(200)))
    marks = root / "marks"
    marks.mkdir()
    sshd = Sshd(root / "sshd").start()
    key = root / "agent_key"
    pub = keygen(key)
    ids = {n: ident(n) for n in ("keys", "shell", "held", "denied")}
    alice = ident("alice")
    conn, port = connection_toml(sshd)
    body = "".join(i.toml(ssh_keys=[pub]) for i in ids.values()) + alice.toml(kind="human", roles=["reviewer"]) + conn
    body += grant("keys", ALLOW)
    body += grant("shell", ALLOW + ["shell"])
    body += grant("held", ALLOW, approve=["shell"])
    body += grant("denied", ALLOW + ["shell"], deny=["shell"])
    gw = HoopyProcess(root, body, approval_timeout="60s").start()
    gw.reviewer = alice
    try:
        yield gw, port, key, f, marks
    finally:
        gw.stop()
        sshd.stop()


class Terminal:
    """`ssh -tt` with its keys from a pipe and everything it prints collected."""

    def __init__(self, lab, who, line):
        gw, port, key, _, _ = lab
        self.p = subprocess.Popen(["ssh", "-tt", "-p", str(port), "-i", str(key), *CLIENT_OPTS,
                                   f"{who}@127.0.0.1", line],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for chunk in iter(lambda: os.read(self.p.stdout.fileno(), 65536), b""):
            self.out.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.out).decode("utf-8", "replace")

    def keys(self, text: str):
        try:
            self.p.stdin.write(text.encode())
            self.p.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def wait_output(self, timeout=20):
        deadline = time.monotonic() + timeout
        while not self.out and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self, quit_keys="", timeout=20) -> int:
        self.keys(quit_keys)
        try:
            self.p.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait()


def _line(text, f, mark):
    return text.replace("F", str(f)).replace("D", str(f.parent)).replace("MARK", str(mark))


def _wait_for(path, timeout=20) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


@pytest.mark.parametrize("name, line, keys, quit_keys", ESCAPES)
def test_the_escape_is_real_where_shell_is_granted(lab, name, line, keys, quit_keys):
    """The control: with `shell` granted the program runs on the terminal and its escape runs a command."""
    gw, port, key, f, marks = lab
    mark = marks / f"control-{name}"
    t = Terminal(lab, "shell", _line(line, f, mark))
    t.wait_output()
    t.keys(_line(keys, f, mark))
    ran = _wait_for(mark)
    t.close(quit_keys)
    assert ran, t.text[-2000:]


@pytest.mark.parametrize("name, line, keys, quit_keys", ESCAPES)
def test_an_exec_on_a_terminal_needs_the_shell_grant(lab, name, line, keys, quit_keys):
    gw, port, key, f, marks = lab
    mark = marks / f"refused-{name}"
    t = Terminal(lab, "keys", _line(line, f, mark))
    t.wait_output()
    t.keys(_line(keys, f, mark))
    rc = t.close(quit_keys)
    time.sleep(0.2)
    assert rc == 126 and "hoopy: refused: no grant allows shell (exec on a terminal:" in t.text, (rc, t.text)
    assert not mark.exists()
    # A deny rule on `shell` refuses it too, whatever allows it.
    mark = marks / f"denied-{name}"
    t = Terminal(lab, "denied", _line(line, f, mark))
    t.wait_output()
    t.keys(_line(keys, f, mark))
    rc = t.close(quit_keys)
    assert rc == 126 and "denied by rule 'shell'" in t.text, (rc, t.text)
    assert not mark.exists()


def test_without_a_terminal_the_exec_rule_is_enough(lab):
    """No terminal, no keys: less copies its file (as cat), the exec rule alone grants it."""
    gw, port, key, f, marks = lab
    r = subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "keys@127.0.0.1", f"less {f}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == f.read_text(), r.stderr


@pytest.mark.parametrize("line", ["cat F", "sleep 0", "echo on-a-terminal", "cat F | cat", "/bin/cat F",
                                  "timeout 5 cat F", "cd D && cat F > /dev/null"])
def test_programs_that_take_no_commands_need_no_shell_grant(lab, line):
    gw, port, key, f, marks = lab
    t = Terminal(lab, "keys", _line(line, f, marks / "unused"))
    rc = t.close(timeout=30)
    assert rc == 0 and "hoopy:" not in t.text, (rc, t.text)


def test_a_held_shell_grant_holds_the_terminal_exec(lab):
    gw, port, key, f, marks = lab
    mark = marks / "held"
    t = Terminal(lab, "held", f"less {f}")
    try:
        (row,) = gw.wait_pending(gw.reviewer.token, timeout=30)
        t.keys(f"!touch {mark}\n")
        time.sleep(0.5)
        assert not mark.exists()  # nothing runs while held: the keys wait in the window
        shown = gw.hoopy("approvals", row["id"], token=gw.reviewer.token).stdout
        assert "shell (exec on a terminal: `less` may run commands typed at it)" in shown, shown
        r = gw.hoopy("deny", row["id"], "--reason", "no pager", token=gw.reviewer.token)
        assert r.returncode == 0, r.stderr
        assert t.close("\nq") == 126 and "denied" in t.text, t.text
        assert not mark.exists()
    finally:
        t.close("\nq")


def test_the_judge_rule_fails_closed():
    """In memory: which lines need `shell` on a terminal."""
    needs = ["less /x", "vi /x", "git log", "systemctl status nginx", "journalctl -u api", "man ls", "top",
             "python3", "sh", "bash", "sudo -i", "/tmp/cat /x", "./cat /x", "$X /x", "cat /x | less",
             "cat /x && vi /y", "echo $(id)", "xargs less", "mysql", "ssh other", "watch ls", "tmux"]
    free = ["cat /x", "tail -f /var/log/syslog", "ls -la /srv", "/usr/bin/cat /x", "sleep 41", "echo hi",
            "cd /srv && ls", "grep -n x /y | sort | uniq -c", "cat > /tmp/x <<'EOF'\nhi\nEOF", "true",
            "timeout 5 sh -c 'tail -n 5 /x'", "df -h", "ps aux", "rm -i /tmp/x"]
    for line in needs:
        u = shell.terminal_unit(shell.analyze(line, "bash").parts)
        assert u is not None and u.kind == "shell", line
    for line in free:
        assert shell.terminal_unit(shell.analyze(line, "bash").parts) is None, line

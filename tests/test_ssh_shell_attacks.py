"""The command-line judge attacked: lines an agent with a narrow grant sends to make the upstream
shell run, write or read what no rule allows. Each was found by running it against a real shell;
each must be refused by the judge (in memory) and, through the real gateway to a real sshd, must
leave no trace upstream (a marker file that must not exist, a file that must not change).

The upstream login shell of the tests is /bin/sh (dash); what only bash does is sent as
`bash -c '...'`, which the gateway judges with bash's grammar and the upstream runs with bash.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time

import pytest

from hoopy.config import Grant
from hoopy.policy.service import _judge_unit
from hoopy.protocols import parse_rule
from hoopy.ssh import shell
from tests.support import HoopyProcess, ident
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen

# The narrow grant (the paths are the fixture's folders): A is readable, O writable, M holds markers.
NARROW_ALLOW = ["exec echo *", "exec ls *", "exec cat A/*", "exec systemctl status *", "exec git status",
                "exec true", "read A/**", "write O/*", "sftp read A/**", "sftp write U/**"]
NARROW_DENY = ["exec rm *"]
# A broad grant with a deny rule: the deny rule must hold whatever the spelling.
BROAD_ALLOW = ["exec *", "read /**", "write /**"]


def _bash(inner: str) -> str:
    return "bash -c " + shlex.quote(inner)


# (name, identity, line). Every line must be refused and leave no marker M/<name>; A/conf must
# keep its content ("original\n"). The markers are made by `touch M/<name>`, written as T.
ATTACKS = [
    # bash evaluates array subscripts in a literal string wherever it reads a variable name or
    # does arithmetic: `a[$(cmd)]` runs cmd, with no `$(` the parser ever sees outside quotes.
    ("dbl-bracket-eq", "narrow", _bash("echo hi; [[ 'a[$(T)]' -eq 0 ]]")),
    ("dbl-bracket-lt", "narrow", _bash("echo hi; [[ 1 -lt 'a[$(T)]' ]]")),
    ("dbl-bracket-v", "narrow", _bash("echo hi; [[ -v 'a[$(T)]' ]]")),
    ("test-v", "narrow", _bash("echo hi; test -v 'a[$(T)]'")),
    ("bracket-v", "narrow", _bash("echo hi; [ -v 'a[$(T)]' ]")),
    ("arith-quoted", "narrow", _bash("echo hi; (( 'a[$(T)]' ))")),
    ("arith-expansion-quoted", "narrow", _bash("echo $(( 'a[$(T)]' ))")),
    ("unset-pipestatus", "narrow", _bash("echo hi; unset 'PIPESTATUS[$(T)]'")),
    ("unset-variable", "narrow", _bash("echo hi; x='PIPESTATUS[$(T)]'; unset $x")),
    ("wait-p", "narrow", _bash("echo hi & wait -n -p 'a[$(T)]'")),
    # tree-sitter-bash drops an escaped space after `{` and reads the rest as a comment; the shell
    # (bash and dash) reads `{ #` as one word and runs what follows the `;`.
    ("brace-escaped-space", "narrow", "echo {\\ #; touch M/brace-escaped-space"),
    ("brace-escaped-space-word", "narrow", "echo a{\\ #; touch M/brace-escaped-space-word"),
    ("brace-escaped-space-bash", "narrow", _bash("echo {\\ #; touch M/brace-escaped-space-bash")),
    # ... reads `{}` as an empty group and `#; touch` as a comment; the shell reads the word `{}#`.
    ("empty-group-hash", "narrow", "echo a; {}#; touch M/empty-group-hash"),
    ("empty-group-hash-bash", "narrow", _bash("echo a; {}#; touch M/empty-group-hash-bash")),
    # ... takes a line break into a word when the next line starts with a backslash: one echo to
    # the parser, an echo and a touch to the shell.
    ("newline-escaped", "narrow", "echo hi\n\\touch M/newline-escaped"),
    ("newline-escaped-bash", "narrow", _bash("echo hi\n\\touch M/newline-escaped-bash")),
    # ... reads `$'\\'` and what follows up to the next quote as one ANSI-C string; bash ends it.
    ("ansi-c-escaped-backslash", "narrow", _bash("echo $'\\\\'; touch M/ansi-c-escaped-backslash #'")),
    # ... splits a word after a quote: `'r'\m` is r and m to it, rm to the shell; a redirection's
    # file is judged by its first piece (O/sub) and opened by the whole (O/sub/../../m/...).
    ("quote-split-deny", "broad", "'r'\\m -f M/x; touch M/quote-split-deny"),
    ("quote-split-redirect", "narrow", "echo pwned > 'O/sub'\\/../../m/quote-split-redirect"),
    # bash's `{NAME}>file` opens a descriptor and assigns its number to NAME: PATH=10 (or so), and
    # `ls` runs U/10/ls, which the agent uploaded (sftp write U/**).
    ("named-fd-path", "narrow", _bash("cd U && echo hi {PATH}>O/named-fd && ls x")),
    # In a BIG5 (GBK, Shift-JIS) locale, bash reads the last byte of `中` and the backslash after it
    # as one character: the quote the judge saw escaped opens a string, and `touch` is code.
    ("big5-backslash", "narrow", "LC_ALL=zh_TW.BIG5 " + _bash("echo 中\\' '; touch M/big5-backslash #'")),
    # `command cd DIR` (both shells) and bash's `time cd DIR` move the shell: a relative write after
    # it was judged in the directory before (O), and landed in DIR.
    ("command-cd", "narrow", "cd O && command cd M && echo x > command-cd"),
    ("command-p-cd", "narrow", "cd O && command -p cd M && echo x > command-p-cd"),
    ("time-cd", "narrow", _bash("cd O && time cd M && echo x > time-cd")),
    ("time-p-cd", "narrow", _bash("cd O && time -p cd M && echo x > time-p-cd")),
    # tree-sitter-bash reads `! { ...; }`, `! if ...` and bash's `time { ...; }` as commands named
    # `{` and `if`, the commands inside as their arguments: a deny rule never saw the rm.
    ("negated-group", "broad", "! { rm -f M/x; }; touch M/negated-group"),
    ("negated-if", "broad", "! if true; then rm -f M/x; fi; touch M/negated-if"),
    ("time-group", "broad", _bash("time { rm -f M/x; }; touch M/time-group")),
    ("time-dbl-bracket", "broad", _bash("time [[ 'a[$(rm -f M/x)]' -eq 1 ]]; touch M/time-dbl-bracket")),
    # With PATH unset, bash looks for programs in the current directory: `ls` is U/ls.
    ("unset-path", "narrow", _bash("cd U && unset PATH && ls x")),
    # xargs -e, --eof and --max-lines take their value only attached (-eSTR, --eof=STR): the next
    # word is the command, not the value.
    ("xargs-e", "narrow", "echo M/xargs-e | xargs -e touch echo"),
    ("xargs-eof", "narrow", "echo M/xargs-eof | xargs --eof touch echo"),
    ("xargs-max-lines", "narrow", "echo M/xargs-max-lines | xargs --max-lines touch echo"),
    # A deny rule names a program, however it is spelled: by its path, a copy of it, or after an
    # env assignment whose name is no identifier (env takes it as one; the judge took it as the command).
    ("deny-bin-path", "broad", "/bin/rm -f M/x; touch M/deny-bin-path"),
    ("deny-usr-bin-path", "broad", "/usr/bin/rm -f M/x; touch M/deny-usr-bin-path"),
    ("deny-copied-binary", "broad", "cp /bin/rm M/rm && M/rm -f M/x; touch M/deny-copied-binary"),
    ("deny-env-odd-name", "broad", "env 'X-Y=1' rm -f M/x; touch M/deny-env-odd-name"),
]

# Lines that write A/conf (only readable) by reopening a descriptor the line opened for reading.
REWRITES = [
    ("stdin-reopened", "echo pwned <A/conf >/dev/stdin"),
    ("dev-fd-reopened", "echo pwned 3<A/conf >/dev/fd/3"),
    ("proc-fd-reopened", "echo pwned 3<A/conf >/proc/self/fd/3"),
    ("group-stdin-reopened", "{ echo pwned >/dev/stdin; } <A/conf"),
    ("tee-fd-reopened", "echo pwned | tee /dev/fd/3 3<A/conf"),
    ("sh-c-stdin-reopened", "sh -c 'echo pwned >/dev/stdin' <A/conf"),
]


def _fill(text: str, d: dict, name: str = "") -> str:
    """A, O, U, M (a word of their own or before a /) become the fixture's folders; $(T) a touch."""
    text = re.sub(r"(?<![\w.\-/])([AOUM])(?=/|\s|$)", lambda m: str(d[m.group(1)]), text)
    return text.replace("$(T)", f"$(touch {d['M']}/{name})")


def _grant(allow, deny):
    rules = lambda xs: tuple(parse_rule("ssh", x) for x in xs)  # noqa: E731
    return [Grant("agent", "web", rules(allow), (), rules(deny), None, 0, "deny")]


def _verdict(grants, line, shell_name="sh"):
    js = [_judge_unit(grants, u) for u in shell.analyze(line, shell_name).units]
    if any(j.outcome == "deny" for j in js):
        return "deny"
    return "approve" if any(j.outcome == "approve" for j in js) else "allow"


DIRS = {"A": "/srv/app", "O": "/tmp/out", "U": "/tmp/up", "M": "/tmp/m"}


@pytest.mark.parametrize("name, who, line", ATTACKS + [(n, "narrow", l) for n, l in REWRITES])
def test_the_judge_refuses(name, who, line):
    allow = [_fill(r, DIRS) for r in (NARROW_ALLOW if who == "narrow" else BROAD_ALLOW)]
    g = _grant(allow, NARROW_DENY)
    text = _fill(line, DIRS, name)
    assert _verdict(g, text) == "deny", shell.analyze(text).parts
    assert _verdict(g, text, "bash") == "deny", shell.analyze(text, "bash").parts


# --- against a real sshd, through the real gateway ---------------------------------------------

def _big5_locale():
    """The upstream has a BIG5 locale (.ci/run makes it; as root the fixture makes it too)."""
    if "zh_tw.big5" not in subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower():
        subprocess.run(["localedef", "-f", "BIG5", "-i", "zh_TW", "zh_TW.BIG5"], capture_output=True)
    assert "zh_tw.big5" in subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower(), \
        "the zh_TW.BIG5 locale is missing (localedef -f BIG5 -i zh_TW zh_TW.BIG5, see .ci/run)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _big5_locale()
    root = tmp_path_factory.mktemp("attacks")
    d = {k: root / k.lower() for k in ("A", "O", "U", "M")}
    for p in d.values():
        p.mkdir()
    (d["O"] / "sub").mkdir()
    ls = d["U"] / "ls"  # what `ls` is with PATH unset, in U
    ls.write_text(f"#!/bin/sh\ntouch {d['M']}/unset-path\n")
    ls.chmod(0o755)
    for n in range(10, 16):  # what `{PATH}>file` makes PATH (the lowest free descriptor from 10)
        (d["U"] / str(n)).mkdir()
        ls = d["U"] / str(n) / "ls"
        ls.write_text(f"#!/bin/sh\ntouch {d['M']}/named-fd-path\n")
        ls.chmod(0o755)
    sshd = Sshd(root / "sshd").start()
    key = root / "agent_key"
    pub = keygen(key)
    narrow, broad = ident("narrow"), ident("broad")
    conn, port = connection_toml(sshd)
    dd = {k: str(v) for k, v in d.items()}
    body = (narrow.toml(ssh_keys=[pub]) + broad.toml(ssh_keys=[pub]) + conn
            + grant("narrow", [_fill(r, dd) for r in NARROW_ALLOW], (), NARROW_DENY)
            + grant("broad", BROAD_ALLOW, (), NARROW_DENY))
    gw = HoopyProcess(root, body).start()
    try:
        yield gw, port, key, d
    finally:
        gw.stop()
        sshd.stop()


def _ssh(lab, who, line, timeout=30):
    gw, port, key, d = lab
    return subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, f"{who}@127.0.0.1", line],
                          capture_output=True, text=True, timeout=timeout)


def test_the_marker_mechanism_works(lab):
    gw, port, key, d = lab
    r = _ssh(lab, "narrow", f"echo hi > {d['O']}/ok")
    assert r.returncode == 0, r.stderr
    assert (d["O"] / "ok").read_text() == "hi\n"
    r = _ssh(lab, "broad", f"touch {d['M']}/control")
    assert r.returncode == 0 and (d["M"] / "control").exists(), r.stderr
    (d["M"] / "control").unlink()


@pytest.mark.parametrize("name, who, line", ATTACKS)
def test_nothing_unjudged_runs_upstream(lab, name, who, line):
    gw, port, key, d = lab
    text = _fill(line, {k: str(v) for k, v in d.items()}, name)
    r = _ssh(lab, who, text)
    time.sleep(0.05)
    ran = (d["M"] / name).exists()
    assert not ran and r.returncode == 126 and "hoopy: refused:" in r.stderr, (ran, r.returncode, r.stderr)


@pytest.mark.parametrize("name, line", REWRITES)
def test_a_readable_file_is_not_written_through_a_descriptor(lab, name, line):
    gw, port, key, d = lab
    conf = d["A"] / "conf"
    conf.write_text("original\n")
    r = _ssh(lab, "narrow", _fill(line, {k: str(v) for k, v in d.items()}, name))
    written = conf.read_text() != "original\n"
    assert not written and r.returncode == 126 and "hoopy: refused:" in r.stderr, (written, r.returncode, r.stderr)


def test_what_the_parser_passes_over_is_unjudgeable():
    assert "passes over" in shell.analyze("echo {\\ #; id").parts[0].text
    with pytest.raises(ValueError):
        parse_rule("ssh", "exec echo {\\ #")
    for line in ("echo hi\n\\id", "'r'\\m -rf /", "echo > '/tmp/out/d'\\/../x", "echo $'\\\\'; id #'",
                 "echo $'a\\'", "echo { }["):
        assert "otherwise than the shell" in shell.analyze(line, "bash").parts[0].text, line
    # A double-quoted word keeps the blanks and line breaks tree-sitter leaves out of its pieces.
    for line, words in (('echo " " b', [" ", "b"]), ('echo "a\nb"', ["a\nb"]), ('echo "-x\n\t"', ["-x\n\t"]),
                        ('echo "a\\"b" c"d"e', ['a"b', "cde"])):
        assert shell.analyze(line).parts[0].key.split(shell.SEP)[1:] == words, line
    # What it does place is judged as before.
    assert [p.kind for p in shell.analyze("echo {a\\ b} 'c d' \"e $f\" a\\ b").parts] == ["exec"]


def test_a_builtin_run_by_a_program_is_a_program():
    """nice, env, timeout, xargs, exec find a name in PATH: `nice cd /x` runs a program called cd
    (needing a rule), and moves nothing; `command` and bash's `time` run the builtin here."""
    g = _grant(["exec echo *", "write /o/*"], [])
    for line in ("nice cd /x", "env test -v x", "timeout 5 : x", "xargs cd", "exec cd /x", "nice command ls"):
        assert _verdict(g, line, "bash") == "deny", line
        assert [p.kind for p in shell.analyze(line, "bash").parts] == ["exec"], line
    assert parts_of("cd /o && nice cd /x && echo a > f")[1] == ("write", "/o/f")
    assert parts_of("cd /o && command cd /x && echo a > f")[0] == ("write", "/x/f")
    assert parts_of("cd /o && time cd /x && echo a > f")[0] == ("write", "/x/f")
    assert parts_of("cd /o && time cd /x && echo a > f", "sh")[1] == ("write", "/o/f")  # dash: a program


def parts_of(line, shell_name="bash"):
    return [(p.kind, p.text) for p in shell.analyze(line, shell_name).parts]


def test_bash_evaluation_of_names_and_arithmetic_stays_judged():
    """What is left of the arithmetic and name checks: numbers and plain names pass, subscripts
    in any builtin that takes a name are unjudgeable, even where a rule grants the builtin."""
    g = _grant(["exec echo *", "exec printf *", "exec read *", "exec getopts *"], [])
    for ok in ("[[ 1 -eq 1 ]]; echo ok", "[[ 1 -lt 2 && -v HOME ]]; echo ok", "(( 1 + 0x1f * 36#zz )); echo ok",
"test -d /tmp; echo ok", "[ -v x ] && echo ok", "unset x y; echo ok",
               "echo a & wait", "echo a & wait -n %1", "printf '%s\\n' 'a[1]'", "read -r line"):
        assert _verdict(g, ok, "bash") == "allow", (ok, shell.analyze(ok, "bash").parts)
    for bad in ("printf -v 'a[$(id)]' x", "read 'a[$(id)]'", "getopts ab 'a[$(id)]'", "read -a 'a[$(id)]'",
                "[[ x -eq 1 ]]; echo ok", "[[ 'a' -ne 1 ]]; echo ok", "(( x )); echo ok", "(( a[1] )); echo ok",
"unset 'a[1]'; echo ok", "echo & wait -p x", "echo & wait -np PATH",
                "[ -v 'a[0]' ]; echo ok", "[[ -R 'a[0]' ]]; echo"):
        assert _verdict(g, bad, "bash") == "deny", (bad, shell.analyze(bad, "bash").parts)
    # $((...)) is a word the shell expands (a rule must spell it); what is in it is judged too.
    assert [p.kind for p in shell.analyze("echo $(( (1 + 2) * 3 ))", "bash").parts] == ["exec"]
    assert "unjudgeable" in [p.kind for p in shell.analyze("echo $(( 'a[$(id)]' ))", "bash").parts]


# --- SFTP by path ----------------------------------------------------------------------------

async def _sftp(lab, who="narrow"):
    import asyncssh

    gw, port, key, d = lab
    conn = await asyncssh.connect("127.0.0.1", port, username=who, client_keys=[str(key)], known_hosts=None)
    return conn, await conn.start_sftp_client()


def _in_thread(coro_fn):
    """Run an asyncio client in its own thread (the tests' reactor owns this thread's loop)."""
    import asyncio
    import threading

    out = {}

    def run():
        try:
            asyncio.run(coro_fn())
        except BaseException as e:  # re-raised in the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the SFTP client did not finish"
    if "error" in out:
        raise out["error"]


def test_sftp_judges_a_name_by_its_bytes(lab):
    """A name that is not UTF-8 was judged by how it is shown (`\\xff`, four characters), another
    file than the byte 0xff: with a directory named `p\\xff` and a link named p<0xff> to U, a write
    to `U/p<0xff>/../x` was judged as U/x and written beside U."""
    import asyncssh

    gw, port, key, d = lab
    escape = d["U"].parent / "sftp-bytes-escape"
    u = str(d["U"]).encode()

    async def attack():
        conn, s = await _sftp(lab)
        async with conn:
            await s.mkdir(u + b"/p\\xff")  # a directory whose name is shown like the byte
            await s.symlink(u + b"/p\xff", u)  # asyncssh: (link, target) here; a link to U, in U
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                f = await s.open(u + b"/p\xff/../sftp-bytes-escape", "wb")
                await f.write(b"escaped\n")
                await f.close()
            # What stays inside U is still written, by its bytes.
            f = await s.open(u + b"/p\xff/inside\xfe", "wb")
            await f.write(b"ok\n")
            await f.close()

    _in_thread(attack)
    assert not escape.exists()
    assert (d["U"] / os.fsdecode(b"inside\xfe")).read_bytes() == b"ok\n"
    shown = [e["data"] for e in gw.events("sftp.open")]
    assert any(o["path"].endswith("/p\\xff/inside\\xfe") for o in shown), shown


def test_sftp_refuses_a_link_the_server_cannot_resolve(lab):
    """OpenSSH's REALPATH follows 32 links, the kernel 40. A chain of 36 links inside U ending in
    a link moved up a level (created as `U/a/last -> ../escape`, judged U/escape, then renamed to
    `U/last`, pointing beside U): REALPATH of U/l0 failed, the gateway judged the name U/l0 itself,
    and the server's open followed the chain out of U. Now a link the server cannot resolve is
    refused, for a chain the agent builds and one already there."""
    import asyncssh

    gw, port, key, d = lab
    escape = d["U"].parent / "escape"
    u = str(d["U"]).encode() + b"/chain"
    there = d["U"] / "there"  # a chain made on the host by someone else
    there.mkdir()
    os.symlink("../../escape", there / "last")
    for i in range(35, -1, -1):
        os.symlink("last" if i == 35 else f"l{i + 1}", there / f"l{i}")

    async def attack():
        conn, s = await _sftp(lab)
        async with conn:
            await s.mkdir(u)
            await s.mkdir(u + b"/a")
            try:  # (refused now: a target with '..', see the next test)
                await s.symlink(u + b"/a/last", b"../../escape")  # asyncssh: (link, target); judged U/escape
                for i in range(35, -1, -1):
                    await s.symlink(u + b"/l%d" % i, b"last" if i == 35 else b"l%d" % (i + 1))
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied):
                pass  # a link to a chain the server cannot resolve is refused: the chain stops there
            try:
                await s.rename(u + b"/a/last", u + b"/last")  # now U/chain/last -> ../../escape: beside U
            except asyncssh.SFTPError:
                pass
            try:
                f = await s.open(u + b"/l0", "wb")
                await f.write(b"escaped\n")
                await f.close()
            except asyncssh.SFTPError:
                pass
            t = str(there).encode()
            for how in ("wb", "rb"):
                with pytest.raises(asyncssh.SFTPNoSuchFile, match="does not resolve"):
                    await s.open(t + b"/l0", how)
            # A new file is still created (nothing is there yet: judged in its directory).
            f = await s.open(t + b"/new", "wb")
            await f.write(b"ok\n")
            await f.close()

    _in_thread(attack)
    assert not escape.exists()
    assert (there / "new").read_bytes() == b"ok\n"


def test_sftp_refuses_a_link_that_points_elsewhere_once_moved(lab):
    """`U/a/l -> ../M/planted` is judged as U/M/planted (inside U); renamed to U/l (both ends in U)
    it points at M/planted: a link out of the granted tree, for whatever follows it next (a
    redirection judged as U/l, a program, another service)."""
    import asyncssh

    gw, port, key, d = lab
    u = str(d["U"]).encode() + b"/moved"

    async def attack():
        conn, s = await _sftp(lab)
        async with conn:
            await s.mkdir(u)
            await s.mkdir(u + b"/a")
            for target in (b"../../m/planted", b"/" + u.lstrip(b"/") + b"/a/../x"):
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="'..'"):
                    await s.symlink(u + b"/a/l", target)
                    await s.rename(u + b"/a/l", u + b"/l")
            await s.symlink(u + b"/a/ok", b"sub/x")  # a link down the tree stays a link into it

    _in_thread(attack)
    moved = d["U"] / "moved"
    assert not (moved / "l").is_symlink() and not (moved / "a" / "l").is_symlink()
    assert os.readlink(moved / "a" / "ok") == "sub/x"


# --- the judgement is bounded --------------------------------------------------------------------

@pytest.mark.parametrize("unit", [")", "a|", "<>", "'|", "x=(", "])", "a;", '"a" ', "(( 1+"])
def test_a_crafted_line_cannot_hold_the_reactor(unit):
    """tree-sitter-bash's error recovery is quadratic: 32 KiB of `)` took ten seconds (in C,
    holding the GIL: every protocol of the gateway stopped), 256 KiB about ten minutes."""
    line = (unit * (256 * 1024 // len(unit)))[:256 * 1024 - 64]
    t0 = time.thread_time()  # (CPU time: what holds the GIL; a loaded machine's waits are not it)
    parts = shell.analyze(line).parts
    took = time.thread_time() - t0
    assert took < 1.0, took  # the bound is 0.1 s of parsing
    assert parts[0].kind == "unjudgeable", parts[0]


def test_a_long_here_document_is_still_judged():
    body = "server { listen 80; root /srv/www; }  # a config line\n" * 4000  # 216 KiB
    line = f"cat > /etc/app/conf.d/x.conf <<'EOF'\n{body}EOF"
    parts = shell.analyze(line).parts
    assert [(p.kind, p.text) for p in parts] == [("write", "/etc/app/conf.d/x.conf")]


def test_a_crafted_line_through_the_gateway_is_refused_at_once(lab):
    t0 = time.monotonic()
    r = _ssh(lab, "narrow", ")" * (120 * 1024))  # (an argument holds at most 128 KiB)
    assert r.returncode == 126 and "takes the parser" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 10
    assert _ssh(lab, "narrow", "echo still").stdout == "still\n"


def test_a_part_cannot_draw_more_parts_for_the_reviewer():
    """A quoted line break in one part was printed as is: `echo 'x<newline>   exec ls  (allow: …)'`
    drew a fake part, allowed, in the list a reviewer approves."""
    from hoopy.policy.review import review_text

    line = "echo 'x\n   exec ls  (allow: exec ls *)' && rm -rf /srv"
    g = _grant(["exec echo *"], [])
    parts = [{"unit": str(u), "outcome": _judge_unit(g, u).outcome, "rule": _judge_unit(g, u).rule,
              "reason": _judge_unit(g, u).reason} for u in shell.analyze(line).units]
    shown = review_text(line, {"parts": parts}).split("-- parts:")[1]
    assert shown.count("\n") == 2, shown  # two parts, two lines
    assert "exec echo 'x\\n   exec ls  (allow: exec ls *)'" in shown

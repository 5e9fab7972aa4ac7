"""The policy's pure half: rule words, deny > approve > allow > nothing, expiry, no ride-alongs."""
from datetime import datetime, timedelta, timezone

import pytest

from hoopy.config import Grant
from hoopy.policy.rules import Operation, RuleError, Unit
from hoopy.postgres.rules import pg_table_unit
from hoopy.protocols import parse_rule
from hoopy.policy.service import PolicyService


def rules(proto, *texts):
    return tuple(parse_rule(proto, t) for t in texts)


def policy(*grants, now=None):
    class Cfg:
        connections = {}

        class gateway:
            approval_timeout = 60

    Cfg.grants = grants
    return PolicyService(Cfg, None, None, now=now)


def grant(conn, allow=(), approve=(), deny=(), expires=None, proto="ssh", who="agent"):
    return Grant(who, conn, rules(proto, *allow), rules(proto, *approve), rules(proto, *deny), expires, 0)


def exec_op(cmd):
    # The parts the shell will run (issue 12: an exec rule matches each simple command).
    from hoopy.ssh import shell

    return Operation("ssh", "exec", cmd, shell.analyze(cmd).units)


SSH = grant("web", allow=["exec uptime", "exec df -h", "exec systemctl status *"],
            approve=["exec systemctl restart *", "shell"])


@pytest.mark.parametrize("cmd,outcome", [
    ("uptime", "allow"),
    ("df -h", "allow"),
    ("systemctl status nginx", "allow"),
    ("systemctl status nginx.service --no-pager", "allow"),
    ("systemctl restart nginx", "approve"),
    ("uptime ", "allow"),  # (issue 12) what runs is `uptime`: whitespace is not an argument
    ("uptime; rm -rf /", "deny"),
    ("uptime && touch /tmp/x", "deny"),
    ("uptime || touch /tmp/x", "deny"),
    ("uptime | sh", "deny"),
    ("uptime\ntouch /tmp/x", "deny"),
    ("uptime\rtouch /tmp/x", "deny"),
    ("systemctl status $(touch /tmp/x)", "deny"),
    ("systemctl status `touch /tmp/x`", "deny"),
    ("systemctl status x; touch /tmp/x", "deny"),
    ("systemctl status x & touch /tmp/x", "deny"),
    ("systemctl status x > /etc/passwd", "deny"),
    ("systemctl status x < /etc/shadow", "deny"),
    ("systemctl status 'x;y'", "allow"),  # (issue 12) one argument, `x;y`, after quote removal
    ('systemctl status "$HOME"', "deny"),
    ("systemctl status ${IFS}x", "deny"),
    ("systemctl status *", "allow"),  # (issue 12) a glob: each name it expands to the rule's * allows
    ("systemctl status x\\;y", "allow"),  # (issue 12) the argument `x;y`
    ("systemctl status x#", "allow"),  # (issue 12) `#` inside a word is a character
    ("systemctl status ~root", "deny"),
    ("systemctl status {a,b}", "deny"),
    ("(systemctl status x) | sh -c 'rm -rf /'", "deny"),
    ("systemctl restart x; reboot", "deny"),
    ("rm -rf /", "deny"),
])
def test_exec_rules_never_carry_a_second_command(cmd, outcome):
    assert policy(SSH).judge("agent", "web", exec_op(cmd)).outcome == outcome


def test_deny_beats_approve_beats_allow():
    p = policy(grant("web", allow=["exec systemctl *"], approve=["exec systemctl restart *"],
                     deny=["exec systemctl restart sshd"]))
    assert p.judge("agent", "web", exec_op("systemctl status a")).outcome == "allow"
    assert p.judge("agent", "web", exec_op("systemctl restart a")).outcome == "approve"
    j = p.judge("agent", "web", exec_op("systemctl restart sshd"))
    assert j.outcome == "deny" and j.rule == "exec systemctl restart sshd"


def test_deny_in_another_grant_still_wins():
    p = policy(grant("web", allow=["shell"]), grant("web", deny=["shell"]))
    assert p.judge("agent", "web", Operation.single("ssh", "shell", "shell")).outcome == "deny"


def test_deny_by_default_and_per_identity_and_connection():
    p = policy(SSH)
    assert p.judge("agent", "db", exec_op("uptime")).outcome == "deny"
    assert p.judge("other", "web", exec_op("uptime")).outcome == "deny"
    assert "no grant allows exec uptime" in p.judge("other", "web", exec_op("uptime")).reason


def test_remembered_judgements_end_with_the_grant_that_made_them():
    # The policy remembers a judgement per identity, connection and units: it must not
    # outlive the grant it came from, nor a deny rule that has expired come back unseen.
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = [t0]
    allow = grant("web", allow=["exec uptime"], expires=t0 + timedelta(seconds=10))
    deny = grant("web", allow=["exec *"], deny=["exec reboot"], expires=t0 + timedelta(seconds=5))
    later = grant("web", allow=["exec df *"])
    p = policy(allow, deny, later, now=lambda: clock[0])
    seen = [(p.judge("agent", "web", exec_op(c)).outcome, p.judge("agent", "web", exec_op(c)).outcome)
            for c in ("uptime", "reboot", "df -h")]
    assert seen == [("allow", "allow"), ("deny", "deny"), ("allow", "allow")]
    clock[0] = t0 + timedelta(seconds=5)  # the deny rule's grant (and its exec *) expire
    assert p.judge("agent", "web", exec_op("reboot")).outcome == "deny"  # no grant allows it now
    assert p.judge("agent", "web", exec_op("ls")).outcome == "deny"
    assert p.judge("agent", "web", exec_op("uptime")).outcome == "allow"
    clock[0] = t0 + timedelta(seconds=10)
    assert p.judge("agent", "web", exec_op("uptime")).outcome == "deny"
    assert p.judge("agent", "web", exec_op("df -h")).outcome == "allow"
    clock[0] = t0 + timedelta(seconds=1)  # the clock set back: the grants are in force again
    assert p.judge("agent", "web", exec_op("uptime")).outcome == "allow"
    assert p.judge("agent", "web", exec_op("ls")).outcome == "allow"
    assert p.judge("agent", "web", exec_op("reboot")).outcome == "deny"
    # Another identity or connection is judged by its own grants.
    assert p.judge("other", "web", exec_op("uptime")).outcome == "deny"
    assert p.judge("agent", "db", exec_op("uptime")).outcome == "deny"


def test_remembered_parts_are_the_callers_own():
    p = policy(grant("db", allow=["read public.a", "read public.b"], proto="postgres"))
    op = Operation("postgres", "statement", "SELECT", (pg_table_unit("read", "public", "a"),
                                                       pg_table_unit("read", "public", "b")))
    first = p.judge("agent", "db", op)
    first.parts[0]["outcome"] = "tampered"
    assert [x["outcome"] for x in p.judge("agent", "db", op).parts] == ["allow", "allow"]


def test_expired_grants_do_not_exist():
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    g = grant("web", allow=["exec uptime"], expires=now)
    assert policy(g, now=lambda: now - timedelta(seconds=1)).judge("agent", "web", exec_op("uptime")).outcome == "allow"
    assert policy(g, now=lambda: now).judge("agent", "web", exec_op("uptime")).outcome == "deny"


def test_forward_and_sftp():
    p = policy(grant("web", allow=["forward db.internal:5432", "sftp"]))
    fw = lambda t: Operation.single("ssh", "forward", f"forward {t}", t)  # noqa: E731
    assert p.judge("agent", "web", fw("db.internal:5432")).outcome == "allow"
    assert p.judge("agent", "web", fw("db.internal:22")).outcome == "deny"
    assert p.judge("agent", "web", fw("evil:5432")).outcome == "deny"
    assert p.judge("agent", "web", Operation.single("ssh", "sftp", "sftp")).outcome == "allow"
    assert p.judge("agent", "web", Operation.single("ssh", "shell", "shell")).outcome == "deny"


def http_op(method, path):
    return Operation("http", "request", f"{method} {path}", (Unit(method, path),))


def test_http_globs_stay_within_a_segment_unless_double_star():
    p = policy(grant("api", proto="http", allow=["GET /v1/customers/*", "* /health", "GET /files/**"],
                     approve=["POST /v1/refunds"]))
    assert p.judge("agent", "api", http_op("GET", "/v1/customers/42")).outcome == "allow"
    assert p.judge("agent", "api", http_op("GET", "/v1/customers/42/cards")).outcome == "deny"
    assert p.judge("agent", "api", http_op("DELETE", "/v1/customers/42")).outcome == "deny"
    assert p.judge("agent", "api", http_op("DELETE", "/health")).outcome == "allow"
    assert p.judge("agent", "api", http_op("GET", "/files/a/b/c")).outcome == "allow"
    assert p.judge("agent", "api", http_op("POST", "/v1/refunds")).outcome == "approve"
    assert p.judge("agent", "api", http_op("POST", "/v1/refunds/x")).outcome == "deny"


def pg_op(*units):
    return Operation("postgres", "statement", "sql", tuple(units))


def test_postgres_every_table_must_be_covered():
    p = policy(grant("db", proto="postgres", allow=["read public.customers", "read public.invoices"],
                     approve=["write public.invoices"]))
    read_c = pg_table_unit("read", "public", "customers")
    assert p.judge("agent", "db", pg_op(read_c)).outcome == "allow"
    assert p.judge("agent", "db", pg_op(pg_table_unit("read", None, "customers"))).outcome == "allow"
    assert p.judge("agent", "db", pg_op(read_c, pg_table_unit("write", "public", "invoices"))).outcome == "approve"
    # A granted read does not carry an ungranted one with it.
    assert p.judge("agent", "db", pg_op(read_c, pg_table_unit("read", "public", "secrets"))).outcome == "deny"
    assert p.judge("agent", "db", pg_op(pg_table_unit("write", "public", "customers"))).outcome == "deny"
    assert p.judge("agent", "db", pg_op(pg_table_unit("ddl", None, None))).outcome == "deny"
    assert p.judge("agent", "db", pg_op()).outcome == "deny"


def test_postgres_all_and_schema_globs():
    p = policy(grant("db", proto="postgres", allow=["all reporting.*"], deny=["admin"]))
    assert p.judge("agent", "db", pg_op(pg_table_unit("write", "reporting", "x"))).outcome == "allow"
    assert p.judge("agent", "db", pg_op(pg_table_unit("write", "public", "x"))).outcome == "deny"
    assert p.judge("agent", "db", pg_op(pg_table_unit("admin", "reporting", "x"))).outcome == "deny"


@pytest.mark.parametrize("proto,text", [
    ("ssh", "exec"), ("ssh", "shell now"), ("ssh", "forward nohost"), ("ssh", "forward h:port"),
    ("ssh", "login"), ("http", "GET"), ("http", "get /x"), ("http", "GET x"), ("postgres", "select"),
    ("postgres", "read a.b.c.d"), ("postgres", "read x;y"), ("http", ""),
])
def test_bad_rule_words(proto, text):
    with pytest.raises(RuleError):
        parse_rule(proto, text)


def test_path_globs_agree_with_their_regex_on_random_cases():
    import random

    from hoopy.http.rules import _path_matcher, _path_pattern

    rnd = random.Random(2026)
    for _ in range(5000):
        glob = "/" + "".join(rnd.choice(["a", "b", "/", "*", "**", "?", "."]) for _ in range(rnd.randint(0, 7)))
        path = "/" + "".join(rnd.choice("ab/.x") for _ in range(rnd.randint(0, 9)))
        assert _path_matcher(glob)(path) == (_path_pattern(glob).fullmatch(path) is not None), (glob, path)


def test_a_crafted_path_cannot_stall_the_matcher():
    """`GET /x*x*x*x*y` against a long run of x: the regex form backtracks for seconds."""
    import time

    p = policy(grant("api", proto="http", allow=["GET /x*x*x*x*y", "GET /files/**/*-*-*.csv"]))
    t0 = time.perf_counter()
    assert p.judge("agent", "api", http_op("GET", "/" + "x" * 8000)).outcome == "deny"
    assert p.judge("agent", "api", http_op("GET", "/files/" + "a-" * 4000 + "/b")).outcome == "deny"
    assert time.perf_counter() - t0 < 0.5
    assert p.judge("agent", "api", http_op("GET", "/xaxbxcxdy")).outcome == "allow"
    assert p.judge("agent", "api", http_op("GET", "/files/2026/q4/a-b-c.csv")).outcome == "allow"


def _pg(rule):
    from hoopy.protocols import parse_rule

    return parse_rule("postgres", rule)


def test_postgres_lock_rule_word_and_write_implies_lock_on_its_tables():
    from hoopy.policy.rules import Unit

    lock_t = Unit("lock", "public.t")
    advisory = Unit("lock")
    assert _pg("lock public.t").matches(lock_t) and _pg("lock public.t").matches(advisory)
    assert _pg("lock").matches(lock_t) and _pg("lock").matches(advisory)
    assert _pg("write public.t").matches(lock_t)
    assert not _pg("write public.t").matches(Unit("lock", "public.u"))
    assert not _pg("write public.t").matches(advisory)  # advisory locks: lock, or write without tables
    assert _pg("write").matches(advisory) and _pg("all").matches(advisory) and _pg("all public.*").matches(advisory)
    assert not _pg("read public.t").matches(lock_t) and not _pg("lock public.t").matches(Unit("read", "public.t"))
    assert not _pg("lock public.t").matches(Unit("write", "public.t"))


def test_postgres_rules_name_functions_and_quoted_names_literally():
    from hoopy.policy.rules import Unit

    from hoopy.postgres.rules import object_name

    assert _pg("write public.refund()").matches(Unit("write", "public.refund()"))
    assert _pg("write refund()").matches(Unit("write", "public.refund()"))
    assert not _pg("write public.refund()").matches(Unit("write", "public.refund"))
    # A dot inside a quoted name is not a schema separator, on either side.
    assert object_name("public", "a.b") == 'public."a.b"' and object_name("a.b", "c") == '"a.b".c'
    assert _pg('read public."a.b"').matches(Unit("read", object_name("public", "a.b")))
    assert not _pg('read public."a.b"').matches(Unit("read", object_name("public.a", "b")))
    assert not _pg("read public.a").matches(Unit("read", object_name("public.a", "b")))
    # Case: unquoted folds, quoted keeps; glob characters in quotes are literal.
    assert _pg('read public."Customers"').matches(Unit("read", "public.Customers"))
    assert not _pg("read public.Customers").matches(Unit("read", "public.Customers"))
    assert _pg('read public."x*"').matches(Unit("read", "public.x*"))
    assert not _pg('read public."x*"').matches(Unit("read", "public.xy"))
    with pytest.raises(RuleError):
        _pg("read public.f(x)")


def test_postgres_catalog_views_and_functions_that_expose_others_need_a_rule_naming_them():
    from hoopy.policy.rules import Unit

    for subject in ("pg_catalog.pg_stat_activity", "pg_catalog.pg_locks", "pg_catalog.pg_stats",
                    "pg_catalog.pg_authid", "public.pg_stat_statements"):
        u = Unit("read", subject)
        assert not _pg("read pg_catalog.*").matches(u) and not _pg("read *.*").matches(u), subject
        assert _pg(f"read {subject}").matches(u) and _pg("read").matches(u) and _pg("all").matches(u)
    for subject in ("pg_catalog.pg_stat_get_activity()", "pg_catalog.pg_read_file()",
                    "pg_catalog.pg_terminate_backend()", "public.dblink_exec()"):
        u = Unit("admin", subject)
        assert not _pg("admin pg_catalog.*").matches(u) and not _pg("admin *.*").matches(u), subject
        assert _pg(f"admin {subject}").matches(u) and _pg("admin").matches(u)
    assert _pg("read pg_catalog.*").matches(Unit("read", "pg_catalog.pg_class"))
    assert _pg("read pg_catalog.*").matches(Unit("read", "pg_catalog.pg_settings"))
    # In a deny list a glob covers them too: deny wins over what names them.
    deny = parse_rule("postgres", "read pg_catalog.*", deny=True)
    assert deny.matches(Unit("read", "pg_catalog.pg_stat_activity"))
    p = policy(Grant("agent", "db", rules("postgres", "read pg_catalog.pg_stat_activity", "admin"), (),
                     tuple(parse_rule("postgres", r, deny=True) for r in ("read pg_catalog.*", "admin pg_catalog.*")),
                     None, 0))
    assert p.judge("agent", "db", pg_op(Unit("read", "pg_catalog.pg_stat_activity"))).outcome == "deny"
    assert p.judge("agent", "db", pg_op(Unit("admin", "pg_catalog.pg_read_file()"))).outcome == "deny"


def test_tool_calls_with_other_arguments_are_judged_anew():
    # A ToolUnit's arguments are not part of its equality: a remembered judgement of
    # `run command=ls` must never answer `run command=rm -rf /`.
    from hoopy.mcp.rules import ToolUnit

    p = policy(grant("mcp", allow=["tool run command=ls*"], proto="mcp"))

    def call(cmd):
        u = ToolUnit("tool", "run", args={"command": cmd})
        return p.judge("agent", "mcp", Operation("mcp", "tool", f"tools/call run {cmd}", (u,))).outcome

    assert [call("ls -l"), call("rm -rf /"), call("ls"), call("rm -rf /")] == ["allow", "deny", "allow", "deny"]

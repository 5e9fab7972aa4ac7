"""The console's pages: twisted.web.template elements over XML templates.

Everything shown that came from a caller, an upstream or a reviewer (commands,
SQL, bodies, attribution, reasons) goes through ``text()``: control characters
and bidirectional overrides are shown escaped (``\\x1b``), and the template
flattener escapes HTML, so nothing a caller sent is ever markup or a terminal
instruction on a reviewer's screen.
"""
from __future__ import annotations

import json
import time

from twisted.python.filepath import FilePath
from twisted.web.template import Element, XMLFile, renderer, tags

from hoopy.audit.events import iso
from hoopy.policy.review import escape_controls

TEMPLATES = FilePath(__file__).sibling("templates")

NAV = (("inbox", "Inbox"), ("sessions", "Sessions"), ("audit", "Audit"))


def text(value) -> str:
    """Untrusted text, made inert for display (HTML is escaped by the flattener)."""
    if value is None:
        return ""
    return escape_controls(value if isinstance(value, str) else json.dumps(value, default=str))


def when(us) -> str:
    return (iso(us) or "")[:19].replace("T", " ") if us else ""


def csrf_field(csrf: str):
    return tags.input(type="hidden", name="csrf", value=csrf)


class Page(Element):
    """The layout: navigation, who is signed in, and the page's own element in <main>."""

    loader = XMLFile(TEMPLATES.child("layout.xml"))

    def __init__(self, title: str, body: Element, user=None, active: str | None = None, head=()):
        super().__init__()
        self.title_, self.body, self.user, self.active, self.head_ = title, body, user, active, head

    @renderer
    def title(self, request, tag):
        return self.title_

    @renderer
    def head(self, request, tag):
        return list(self.head_)

    @renderer
    def nav(self, request, tag):
        if self.user is None:
            return tag
        return tag(*[tags.a(label, href=f"/ui/{name}", class_="active" if name == self.active else "")
                     for name, label in NAV])

    @renderer
    def who(self, request, tag):
        if self.user is None:
            return ""
        role = "reviewer" if self.user.may_decide else "auditor (reads, never decides)"
        return tags.form(tags.span(text(self.user.identity), class_="me"), " ", tags.span(role, class_="role"),
                         " ", csrf_field(self.user.csrf), tags.button("Sign out", type="submit", id="signout"),
                         method="post", action="/ui/signout", class_="who")

    @renderer
    def main(self, request, tag):
        return tag(self.body)


class SignIn(Element):
    loader = XMLFile(TEMPLATES.child("signin.xml"))

    def __init__(self, csrf: str, error: str | None = None):
        super().__init__()
        self.csrf, self.error_ = csrf, error

    @renderer
    def error(self, request, tag):
        return tag(self.error_) if self.error_ else ""

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(csrf=self.csrf)


def approval_card(a: dict, session: dict | None, user, now_us: int, full: bool = False):
    """One approval with everything a reviewer needs to decide it."""
    requesters = a["_requesters"]
    attribution = []
    for key in ("model", "tool_call", "mcp_server", "application_name"):
        if session and session.get(key):
            attribution.append(tags.li(tags.span(key.replace("_", " "), class_="k"), " ", text(session[key])))
    if a.get("caused_by"):
        attribution.append(tags.li(tags.span("caused by", class_="k"), " ", text(a["caused_by"])))
    left = (a["expires_us"] - now_us) / 1e6 if a.get("expires_us") else None
    facts = tags.dl(
        tags.dt("Requester"), tags.dd(text(a["requester"])),
        tags.dt("Connection"), tags.dd(text(a["connection"]), " ", tags.span(text(a["protocol"]), class_="muted")),
        tags.dt("From"), tags.dd(text(session["peer"] if session else "")),
        tags.dt("Session"), tags.dd(tags.a(a["session"] or "", href=f"/ui/sessions/{a['session']}")
                                    if a.get("session") else ""),
        tags.dt("Rule"), tags.dd(tags.code(text(a["rule"]))),
        tags.dt("Mode"), tags.dd("retry: the caller sends it again once approved" if a.get("mode") == "retry"
                                 else "hold: the caller waits"),
        tags.dt("Asked"), tags.dd(when(a["created_us"]), " (", tags.span(
            "", class_="age", **{"data-since": str(a["created_us"])}), " ago)"),
        class_="facts")
    if a["state"] == "pending" and left is not None:
        facts(tags.dt("Time left"), tags.dd(tags.span("", class_="left", **{"data-until": str(a["expires_us"])})))
    else:
        facts(tags.dt("State"), tags.dd(tags.strong(a["state"]),
                                        (" by ", text(a["reviewer"])) if a.get("reviewer") else "",
                                        (": ", text(a["reason"])) if a.get("reason") else ""))
    if attribution:
        facts(tags.dt("Attribution"), tags.dd(tags.ul(*attribution, class_="attribution")))
    card = tags.article(
        tags.h2(tags.a(tags.code(a["id"]), href=f"/ui/approvals/{a['id']}"), " ",
                tags.span(a["state"], class_=f"state {a['state']}")),
        facts,
        tags.h3("Operation"),
        tags.pre(text(a["operation"]), class_="operation"),
        id=a["id"], class_=f"card {a['state']}",
        **{"data-created": str(a["created_us"])})
    if a["state"] != "pending":
        return card
    if user is None or not user.may_decide:
        return card(tags.p("Auditors read; only a reviewer decides.", class_="muted"))
    if user.identity in requesters:
        return card(tags.p("You asked for this (or your tool call caused it): another reviewer decides.",
                           class_="own"))
    return card(tags.form(
        csrf_field(user.csrf),
        tags.label("Reason (recorded)", tags.textarea("", name="reason", rows="2", maxlength="2000")),
        tags.div(
            tags.button("Approve", type="submit", name="decision", value="approve", class_="approve",
                        formaction=f"/ui/approvals/{a['id']}/approve"),
            tags.button("Deny", type="submit", name="decision", value="deny", class_="deny",
                        formaction=f"/ui/approvals/{a['id']}/deny"),
            class_="buttons"),
        method="post", action=f"/ui/approvals/{a['id']}/deny", class_="decide"))


def cards(approvals: list, sessions: dict, user, now_us: int):
    if not approvals:
        return tags.p("Nothing waits for a decision.", class_="empty", id="empty")
    return [approval_card(a, sessions.get(a["session"]), user, now_us) for a in approvals]


class Inbox(Element):
    loader = XMLFile(TEMPLATES.child("inbox.xml"))

    def __init__(self, approvals, sessions, user, flash=None):
        super().__init__()
        self.approvals, self.sessions, self.user, self.flash_ = approvals, sessions, user, flash

    @renderer
    def flash(self, request, tag):
        return tag(text(self.flash_)) if self.flash_ else ""

    @renderer
    def cards(self, request, tag):
        return tag(cards(self.approvals, self.sessions, self.user, time.time_ns() // 1000))

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(count=str(len(self.approvals)))


class ApprovalPage(Element):
    loader = XMLFile(TEMPLATES.child("approval.xml"))

    def __init__(self, approval, session, user, flash=None):
        super().__init__()
        self.approval, self.session, self.user, self.flash_ = approval, session, user, flash

    @renderer
    def flash(self, request, tag):
        return tag(text(self.flash_)) if self.flash_ else ""

    @renderer
    def card(self, request, tag):
        return approval_card(self.approval, self.session, self.user, time.time_ns() // 1000, full=True)


OUTCOMES = (("", "any outcome"), ("refused", "with a refusal"), ("held", "with an approval"),
            ("masked", "with a redaction"), ("open", "still open"))


class SessionList(Element):
    loader = XMLFile(TEMPLATES.child("sessions.xml"))

    def __init__(self, rows, counts, filters, protocols):
        super().__init__()
        self.rows_, self.counts, self.filters_, self.protocols = rows, counts, filters, protocols

    @renderer
    def page(self, request, tag):
        return tag

    @renderer
    def filters(self, request, tag):
        f = self.filters_

        def select(name, options):
            return tags.select(*[tags.option(label, value=v, **({"selected": "selected"} if f.get(name) == v else {}))
                                 for v, label in options], name=name)

        return tag(
            tags.label("Identity ", tags.input(name="identity", value=f.get("identity", ""))),
            tags.label("Connection ", tags.input(name="connection", value=f.get("connection", ""))),
            tags.label("Protocol ", select("protocol", [("", "any")] + [(p, p) for p in self.protocols])),
            tags.label("Since ", tags.input(type="date", name="since", value=f.get("since", ""))),
            tags.label("Until ", tags.input(type="date", name="until", value=f.get("until", ""))),
            tags.label("Outcome ", select("outcome", OUTCOMES)),
            tags.button("Filter", type="submit"))

    @renderer
    def rows(self, request, tag):
        out = []
        for s in self.rows_:
            c = self.counts.get(s["id"], {})
            attribution = [text(s[k]) for k in ("model", "tool_call", "mcp_server", "application_name") if s.get(k)]
            marks = []
            for key, label in (("refused", "refused"), ("held", "held"), ("masked", "masked")):
                if c.get(key):
                    marks.append(tags.span(f"{c[key]} {label}", class_=f"badge {key}"))
            out.append(tags.tr(
                tags.td(tags.a(tags.code(s["id"]), href=f"/ui/sessions/{s['id']}")),
                tags.td(text(s["identity"])), tags.td(text(s["connection"])), tags.td(text(s["protocol"])),
                tags.td(when(s["started_us"])), tags.td(when(s["ended_us"]) or tags.em("open")),
                tags.td(" · ".join(attribution)),
                tags.td(f"{c.get('operations', 0)} ", *marks),
                class_="refused" if c.get("refused") else ""))
        if not out:
            out.append(tags.tr(tags.td("No session matches.", colspan="8", class_="empty")))
        return tag(*out)


_EVENT_TEXT = ("text", "sql", "command", "path", "review")


class SessionPage(Element):
    loader = XMLFile(TEMPLATES.child("session.xml"))

    def __init__(self, session, events, cast: bool):
        super().__init__()
        self.session, self.events_, self.cast = session, events, cast

    @renderer
    def facts(self, request, tag):
        s = self.session
        items = [("Identity", s["identity"]), ("Connection", s["connection"]), ("Protocol", s["protocol"]),
                 ("From", s["peer"]), ("Start", when(s["started_us"])),
                 ("End", when(s["ended_us"]) or "open"), ("End reason", s.get("end_reason"))]
        items += [(k.replace("_", " "), s.get(k)) for k in ("model", "tool_call", "mcp_server", "application_name")]
        return tag(*[x for k, v in items if v for x in (tags.dt(k), tags.dd(text(v)))])

    @renderer
    def replay(self, request, tag):
        if not self.cast:
            return ""
        return tag(tags.a("▶ Replay the terminal", href=f"/ui/sessions/{self.session['id']}/replay",
                          class_="button", id="replay-link"))

    @renderer
    def events(self, request, tag):
        rows = []
        for e in self.events_:
            data = dict(e["data"])
            what = next((data.pop(k) for k in _EVENT_TEXT if isinstance(data.get(k), str)), "")
            cls = [e["kind"].replace(".", "-")]
            if e["outcome"] in ("refused", "denied", "expired", "failed"):
                cls.append("refusal")
            if e["kind"] == "redaction":
                cls.append("redaction")
            if e["kind"].startswith("approval") or e["outcome"] == "held" or data.get("approval"):
                cls.append("approval")
            rows.append(tags.tr(
                tags.td(str(e["seq"])), tags.td(when(e["time_us"])), tags.td(text(e["kind"])),
                tags.td(text(e["outcome"])), tags.td(tags.pre(text(what)) if what else ""),
                tags.td(tags.code(text(json.dumps({k: v for k, v in data.items() if v is not None},
                                                  default=str, ensure_ascii=False)))),
                class_=" ".join(cls), id=f"e{e['seq']}"))
        return tag(*rows)

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(id=self.session["id"])


class ReplayPage(Element):
    loader = XMLFile(TEMPLATES.child("replay.xml"))

    def __init__(self, session_id, markers, warning=None):
        super().__init__()
        self.sid, self.markers_, self.warning_ = session_id, markers, warning

    @renderer
    def back(self, request, tag):
        return tag(href=f"/ui/sessions/{self.sid}")

    @renderer
    def warning(self, request, tag):
        return tag(text(self.warning_)) if self.warning_ else ""

    @renderer
    def player(self, request, tag):
        return tag(**{"data-cast": f"/ui/sessions/{self.sid}/cast",
                      "data-markers": json.dumps([[round(t, 3), text(label)] for t, label in self.markers_])})

    @renderer
    def markers(self, request, tag):
        if not self.markers_:
            return tag(tags.li("No approvals in this recording.", class_="muted"))
        return tag(*[tags.li(tags.span(f"{t:.1f}s", class_="t"), " ", text(label)) for t, label in self.markers_])

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(id=self.sid)


class AuditPage(Element):
    loader = XMLFile(TEMPLATES.child("audit.xml"))

    def __init__(self, result, csrf):
        super().__init__()
        self.result, self.csrf = result, csrf

    @renderer
    def verify(self, request, tag):
        r = self.result
        if r.ok:
            return tag(tags.p("✔ intact", class_="ok", id="verify"),
                       tags.p(text(str(r))),
                       tags.p("Keep the head somewhere the gateway host cannot write, and compare it later: ",
                              tags.code(r.head_hash)))
        return tag(tags.p("✘ broken", class_="broken", id="verify"), tags.p(text(str(r))))

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(csrf=self.csrf)

"""The auditor's page (``report.html``) and ``controls.md``, both laid out from hoopy.audit.figures.

``report.html`` is one self-contained file: inline CSS, inline SVG charts, no script, no font,
image or style sheet by URL, and a Content-Security-Policy that forbids loading anything, so it
opens offline and shows the same wherever it is opened. Everything taken from the record (an
identity, a rule, a statement, a user name a client sent) is HTML-escaped where it is written,
attributes included; C0/C1 controls and invisible format characters are shown as ``\\xNN``.
``controls.md`` escapes what markdown would render (``<``, ``&``, ``|``, backticks).
"""
from __future__ import annotations

import html

from hoopy.audit.figures import OUTCOMES, _dur
from hoopy.text import escape as _visible

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
COLORS = {"allowed": "#2e7d32", "held": "#ef8f00", "refused": "#c62828", "sessions": "#1565c0"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d4da;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.meta{color:#55606e}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #d0d4da;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0 12px}
th,td{border:1px solid #d0d4da;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.ids{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.ids{color:#55606e}
ul.ev{margin:0;padding-left:18px}
svg{background:#fff;border:1px solid #d0d4da;border-radius:6px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.wrap{word-break:break-all}
@media print{body{background:#fff}main{padding:0}}
"""


def e(value) -> str:
    """Text from the record, safe in HTML text and in quoted attributes."""
    if value is None:
        return "-"
    return html.escape(_visible(str(value)), quote=True)


def _ids(examples) -> str:
    if not examples:
        return ""
    return '<span class="ids">events ' + ", ".join(f"#{e(x)}" for x in examples) + "</span>"


def _num(n, key=None) -> str:
    attr = f' data-count="{e(key)}"' if key else ""
    return f'<td class="n"{attr}>{e(n if n is not None else 0)}</td>'


def _table(head: list, rows: list) -> str:
    """``rows``: lists of already-rendered ``<td>`` cells."""
    if not rows:
        return '<p class="meta">none in this period</p>'
    return ("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(r) + "</tr>" for r in rows) + "</tbody></table>")


def _td(text) -> str:
    return f"<td>{e(text)}</td>"


# --- charts ------------------------------------------------------------------------------------


def activity_svg(activity: dict) -> str:
    buckets = activity.get("buckets") or []
    w, h, left, bottom, top = 1000, 220, 46, 28, 12
    if not buckets:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="no activity" width="{w}" '
                f'height="60" viewBox="0 0 {w} 60"><text x="12" y="34">no events in this period</text></svg>')
    peak = max(max(b["allowed"] + b["held"] + b["refused"], b["sessions"]) for b in buckets) or 1
    plot_w, plot_h = w - left - 10, h - bottom - top
    bw = min(plot_w / len(buckets), 48.0)  # a few buckets: bars, not walls
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             f'aria-label="operations and sessions per {e(activity["bucket"])}" id="chart-activity">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{w - 10}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{e(peak)}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>']
    for i, b in enumerate(buckets):
        x = left + i * bw
        y = top + plot_h
        for outcome in ("allowed", "held", "refused"):
            n = b[outcome]
            if not n:
                continue
            bh = n / peak * plot_h
            y -= bh
            parts.append(f'<rect x="{x + bw * 0.1:.1f}" y="{y:.1f}" width="{bw * 0.55:.1f}" height="{bh:.1f}" '
                         f'fill="{COLORS[outcome]}"><title>{e(b["start"])}: {e(n)} {e(outcome)}</title></rect>')
        if b["sessions"]:
            bh = b["sessions"] / peak * plot_h
            parts.append(f'<rect x="{x + bw * 0.67:.1f}" y="{top + plot_h - bh:.1f}" width="{bw * 0.25:.1f}" '
                         f'height="{bh:.1f}" fill="{COLORS["sessions"]}"><title>{e(b["start"])}: '
                         f'{e(b["sessions"])} sessions started</title></rect>')
    parts.append(f'<text x="{left}" y="{h - 8}" font-size="11">{e(buckets[0]["start"])}</text>')
    parts.append(f'<text x="{w - 10}" y="{h - 8}" font-size="11" text-anchor="end">{e(activity["end"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def refusals_svg(rows: list) -> str:
    rows = rows[:12]
    w, row_h, label_w = 1000, 24, 420
    if not rows:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="no refusals" width="{w}" '
                f'height="44" viewBox="0 0 {w} 44"><text x="12" y="27">no refusals in this period</text></svg>')
    h = row_h * len(rows) + 12
    peak = max(r["count"] for r in rows) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             'aria-label="refusals by rule" id="chart-refusals">']
    for i, r in enumerate(rows):
        y = 6 + i * row_h
        label = r["rule"] if len(r["rule"]) <= 60 else r["rule"][:57] + "..."
        bw = r["count"] / peak * (w - label_w - 60)
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12">{e(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{max(bw, 1):.1f}" height="{row_h - 8}" '
                     f'fill="{COLORS["refused"]}"><title>{e(r["rule"])}: {e(r["count"])}</title></rect>')
        parts.append(f'<text x="{label_w + bw + 6:.1f}" y="{y + 15}" font-size="12">{e(r["count"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- the page ----------------------------------------------------------------------------------


def render_html(f: dict) -> str:
    ch, ops, ap, red, fl = f["chain"], f["operations"], f["approvals"], f["redactions"], f["failed_logins"]
    period = f"{f['since'] or f['first_event'] or 'the beginning'} to {f['until'] or f['exported'] or 'the export'}"
    status = ('<span class="ok" id="chain-status">intact</span>' if ch["ok"]
              else f'<span class="bad" id="chain-status">BROKEN: {e(ch["problem"])}</span>')
    sig = (f"{e(ch['signatures'] or 0)} signatures, "
           + ("checked with the key(s) " + e(", ".join(ch["keys"])) if ch["signatures_checked"]
              else '<span class="bad">not checked at export (no public key)</span>')
           + f"; {e(ch['unsigned'] or 0)} event(s) after the last signature")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           '<meta name="referrer" content="no-referrer">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>hoopy evidence report: {e(f['gateway'])}, {e(period)}</title>",
           f"<style>{CSS}</style></head><body><main>",
           "<h1>Access evidence report</h1>",
           f'<p class="meta">Gateway <b>{e(f["gateway"])}</b>; period <b id="period">{e(period)}</b>; '
           f"exported {e(f['exported'])}. Every count below is computed from this archive's "
           "<code>events.jsonl</code>; event ids (<code>#seq</code>) are its <code>seq</code> numbers.</p>",
           f"<p>Audit chain at export: {status} (up to event {e(ch['head_seq'])}); {sig}.</p>",
           '<div class="cards">']
    for label, n, key in (("events", f["events"]["total"], "events.total"),
                          ("sessions", f["sessions"]["total"], "sessions.total"),
                          ("operations allowed", ops["allowed"], "operations.allowed"),
                          ("refused", ops["refused"], "operations.refused"),
                          ("held", ops["held"], "operations.held"),
                          ("approvals decided", ap["decided"], "approvals.decided"),
                          ("values masked", red["values"], "redactions.values"),
                          ("failed logins", fl["logins"], "failed_logins.logins")):
        out.append(f'<div class="card"><b data-card="{e(key)}">{e(n)}</b>{e(label)}</div>')
    out.append("</div>")

    legend = "".join(f'<span><i style="background:{COLORS[k]}"></i>{e(k)}</span>'
                     for k in ("allowed", "held", "refused")) + \
        f'<span><i style="background:{COLORS["sessions"]}"></i>sessions started</span>'
    out += [f"<h2>Activity over time</h2><p class=\"meta\">operations by outcome and sessions started, "
            f"per {e(f['activity']['bucket'] or 'bucket')}</p>",
            f'<p class="legend">{legend}</p>', activity_svg(f["activity"]),
            "<h2>Refusals by rule</h2>", refusals_svg(f["refusals_by_rule"])]

    out.append("<h2>NIST SP 800-53 controls</h2>")
    rows = []
    for c in f["controls"]:
        ev = "".join(f'<li><b data-count="{e(x["key"])}">{e(x["count"])}</b> {e(x["label"])} {_ids(x["examples"])}</li>'
                     for x in c["evidence"])
        files = ", ".join(f"<code>{e(x)}</code>" for x in c["files"])
        rows.append([f'<td id="{e(c["id"])}"><b>{e(c["id"])}</b><br>{e(c["name"])}</td>', _td(c["enforced"]),
                     f'<td><ul class="ev">{ev}</ul></td>', f"<td>{files}</td>"])
    out.append(_table(["control", "what the gateway enforced", "evidence from this period", "files"], rows))

    out.append("<h2>Sessions per identity (AC-2)</h2>")
    out.append(_table(["identity", "sessions", "protocols", "examples"],
                      [[_td(s["identity"]), _num(s["count"]),
                        _td(", ".join(f"{k} {n}" for k, n in sorted(s["protocols"].items()))),
                        f"<td>{_ids(s['examples'])}</td>"] for s in f["sessions"]["by_identity"]]))
    out.append("<h2>Operations by identity (AC-3)</h2>")
    out.append(_table(["identity", *OUTCOMES],
                      [[_td(r["identity"]), *(_num(r[o]) for o in OUTCOMES)] for r in ops["by_identity"]]))
    out.append("<h2>Refusals by rule (AC-3, AC-6)</h2>")
    out.append(_table(["rule", "refused", "examples"],
                      [[f"<td><code>{e(r['rule'])}</code></td>", _num(r["count"]), f"<td>{_ids(r['examples'])}</td>"]
                       for r in f["refusals_by_rule"]]))
    if f["refused_examples"]:
        out.append("<h3>Some refused operations, as recorded</h3>")
        out.append(_table(["event", "time", "identity", "connection", "operation", "refused by"],
                          [[f'<td class="ids">#{e(r["seq"])}</td>', _td(r["time"]), _td(r["identity"]),
                            _td(r["connection"]), f'<td class="wrap"><code>{e(r["text"])}</code></td>',
                            _td(r["rule"])] for r in f["refused_examples"]]))
    out.append("<h2>Approvals by reviewer (AC-5)</h2>")
    out.append(f'<p>{e(ap["requested"])} approvals asked for in the period; {e(ap["approved"])} approved, '
               f'{e(ap["denied"])} denied, {e(ap["expired"])} expired undecided; decisions by the requester '
               f'itself: <b data-count="approvals.self_decided_summary">{e(ap["self_decided"])}</b>.</p>')
    out.append(_table(["reviewer", "approved", "denied", "time to decision (median)", "longest", "examples"],
                      [[_td(r["reviewer"]), _num(r["approved"]), _num(r["denied"]), _td(_dur(r["median_s"])),
                        _td(_dur(r["max_s"])), f"<td>{_ids(r['examples'])}</td>"] for r in ap["by_reviewer"]]))
    out.append("<h2>Redactions by rule (AC-6)</h2>")
    out.append(_table(["rule", "values masked", "events", "examples"],
                      [[f"<td><code>{e(r['rule'])}</code></td>", _num(r["values"]), _num(r["events"]),
                        f"<td>{_ids(r['examples'])}</td>"] for r in red["by_rule"]]))
    out.append("<h2>Failed logins (AC-2, AU-6)</h2>")
    out.append(f"<p>{e(fl['logins'])} failed logins in {e(fl['events'])} events "
               f"({e(fl['suppressed_events'])} summarizing floods).</p>")
    out.append(_table(["connection", "failed logins", "examples"],
                      [[_td(r["connection"]), _num(r["count"]), f"<td>{_ids(r['examples'])}</td>"]
                       for r in fl["by_connection"]]))
    out.append(_table(["user name tried", "attempts"],
                      [[f"<td><code>{e(r['user'])}</code></td>", _num(r["count"])] for r in fl["by_user"]]))
    out.append("<h2>Connections (SC-7, SC-8)</h2>")
    out.append(_table(["connection", "type", "listens on", "upstream", "callers", "upstream link", "sessions"],
                      [[_td(c["name"]), _td(c["type"]), f"<td><code>{e(c['listen'])}</code></td>",
                        f"<td><code>{e(c['upstream'])}</code></td>", _td(c["tls"]["callers"]),
                        _td(c["tls"]["upstream"]), _num(c["sessions"])] for c in f["connections"]]))
    out.append("<h2>Chain and signatures (AU-9, AU-10)</h2>")
    out.append(_table(["", ""], [
        [_td("chain at export"), f"<td>{status}</td>"],
        [_td("events in the whole chain"), _num(ch["events"])],
        [_td("head"), f"<td><code>{e(ch['head_seq'])} {e(ch['head_hash'])}</code></td>"],
        [_td("signatures in the chain"), _num(ch["signatures"])],
        [_td("checked with"), _td(", ".join(f"{k} ({n})" for k, n in ch["keys"].items()) if ch["signatures_checked"]
                                  else "not checked: no public key at export")],
        [_td("last signed event"), _td(f"#{ch['last_signed_seq']} at {ch['last_signed_time']}"
                                       if ch["last_signed_seq"] else "none")],
        [_td("signed events in this period"), _num(ch["signed_in_period"], "chain.signed_in_period_table")],
        [_td("sessions and approvals rows compared with the chain"), _num(ch["rows_checked"])],
        [_td("sealed recordings matching their hash"), _num(ch["recordings"])],
    ]))
    out.append("<h2>Events by kind (AU-2)</h2>")
    out.append(_table(["kind", "events"], [[f"<td><code>{e(k)}</code></td>", _num(n, f"kind.{k}")]
                                           for k, n in f["events"]["kinds"].items()]))
    out.append('<h2>Checking this archive</h2><p><code>manifest.json</code> lists every file with its SHA-256 '
               "(<code>sha256sum</code> each). <code>python3 verify_events.py events.jsonl --key ed25519:...</code> "
               "recomputes every link and checks every signature offline, with the gateway's public key as its "
               "operator gives it to you (<code>hoopy audit key</code>), never the one in this archive.</p>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


# --- controls.md ---------------------------------------------------------------------------------


def md(value) -> str:
    """Text from the record in a markdown table cell: nothing renders as markup."""
    text = _visible(str(value if value is not None else "-")).replace("\n", " ")
    text = html.escape(text, quote=False)
    for c in "\\`|*_[]#":
        text = text.replace(c, "\\" + c)
    return text


def render_markdown(f: dict) -> str:
    ch = f["chain"]
    period = f"{f['since'] or f['first_event'] or 'the beginning'} to {f['until'] or f['exported'] or 'the export'}"
    lines = ["# NIST SP 800-53 controls and the evidence in this archive", "",
             f"Gateway {md(f['gateway'])}; period {md(period)}. Computed from `events.jsonl` by the same code as "
             "`report.html` (which also charts it); `#N` is the event with `seq` N.", "",
             f"Audit chain at export: **{'intact' if ch['ok'] else 'BROKEN: ' + md(ch['problem'])}**; "
             f"{ch['signatures'] or 0} signatures, "
             + ("checked with the key(s) " + md(", ".join(ch["keys"])) if ch["signatures_checked"]
                else "not checked at export (no public key)") + ".", "",
             "| control | name | how hoopy meets it | evidence from this period | files |", "|---|---|---|---|---|"]
    for c in f["controls"]:
        ev = "<br>".join(f"{x['count']} {md(x['label'])}"
                         + (" (" + ", ".join(f"#{x_}" for x_ in x["examples"]) + ")" if x["examples"] else "")
                         for x in c["evidence"])
        lines.append(f"| {c['id']} | {md(c['name'])} | {md(c['enforced'])} | {ev or '-'} | "
                     f"{', '.join(f'`{x}`' for x in c['files'])} |")
    return "\n".join(lines) + "\n"

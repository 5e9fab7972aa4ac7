"""CSV, XML and HTML masking, sans-IO: fields where the format names them, patterns everywhere.

- CSV: a header cell that names a field (``ssn``, ``SSN``, ``card.number``, or a dotted field's last
  key) masks that column; every other cell is a text value (patterns, JSON in a cell ...).
- XML and HTML: one linear tokenizer of our own. An element or attribute named by a field (its local
  name, any case; a dotted field by the element path) has its content or value masked; so has an
  element that names a field in its ``name``, ``id``, ``itemprop``, ``property`` or ``class``
  (``<input name="ssn" value="...">``, ``<span class="ssn">``), an HTML table column whose ``<th>``
  names one, and the ``<dd>`` after such a ``<dt>``. Text, attribute values, comments, CDATA and
  script/style are text values (decoded, masked, re-encoded where they changed). Patterns then run
  over the whole document too (a match in a tag name or a declaration).
- XML with a document type declaration is refused: no entity is ever expanded, by us or by a client
  that would read one we passed.

Every loop advances through the text; a construct that is not closed runs to the end once (never
re-scanned from each of its characters), so the work is linear in the input.
"""
from __future__ import annotations

import csv
import html as htmllib
import io
import re

from hoopy.http.redaction import MaskError, add_count, merge_counts
from hoopy.policy.masking import MASK

csv.field_size_limit(1 << 30)  # our own limit is mask_limit; the csv module's 128 KiB would refuse real data

_DELIMS = (",", ";", "\t", "|")


def _cell_name(name: str) -> str:
    """A header cell as a CSV reader names its column: a byte order mark before the first one is
    dropped (Excel, Python's utf-8-sig), with the space and quotes around it."""
    return name.strip().lstrip("\ufeff").strip().strip("\"'").casefold()


def _column_field(masker, name: str) -> str | None:
    parts = tuple(_cell_name(name).split("."))
    found = masker.is_field(parts)
    if found is None and parts[-1] in masker.key_names:
        found = next((f for f in masker.fields if f.casefold().rsplit(".", 1)[-1] == parts[-1]), parts[-1])
    return found


def csv_header_delimiter(masker, text: str) -> str | None:
    """The delimiter of a first line that holds a cell naming a field, else None."""
    nl = text.find("\n", 0, 65536)
    first = text[:nl] if nl >= 0 else text[:65536]
    for d in _DELIMS:
        if d in first and any(_column_field(masker, c) for c in first.split(d)):
            return d
    return None


def mask_csv(masker, text: str, counts: dict, delimiter: str | None = None, depth: int = 0) -> str:
    if delimiter is None:
        delimiter = csv_header_delimiter(masker, text)
        if delimiter is None:
            nl = text.find("\n", 0, 65536)
            first = text[:nl] if nl >= 0 else text[:65536]
            delimiter = max(_DELIMS, key=first.count) if any(d in first for d in _DELIMS) else ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False))
    except csv.Error as e:
        raise MaskError(f"the CSV body cannot be read: {e}")
    if not rows:
        return text
    header = rows[0]
    columns = {i: f for i, cell in enumerate(header) if (f := _column_field(masker, cell))}
    if not columns:
        # nothing named: patterns (and structure in cells) only; most bodies have no match at all
        probe: dict = {}
        masker.mask_value_text(text, probe, (), depth + 1)
        if not probe:
            return text
    c: dict = {}
    names = [_cell_name(h) for h in header]
    out_rows = [[masker.mask_value_text(cell, c, (), depth + 1) for cell in header]]
    for row in rows[1:]:
        new = []
        for i, cell in enumerate(row):
            f = columns.get(i)
            if f is not None and cell != "":
                add_count(c, f"field:{f}")
                new.append(MASK)
            else:
                new.append(masker.mask_value_text(cell, c, (names[i],) if i < len(names) else (), depth + 1))
        out_rows.append(new)
    if not c:
        return text
    merge_counts(counts, c)
    term = "\r\n" if "\r\n" in text[:65536] else "\n"
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator=term, quoting=csv.QUOTE_MINIMAL).writerows(out_rows)
    out = buf.getvalue()
    if not text.endswith(("\n", "\r")):
        out = out[:-len(term)]
    return out


# --- markup ------------------------------------------------------------------------------------

_MARKUP = re.compile(r"<!--|<!\[CDATA\[|<!|<\?|</|<(?=[A-Za-z_:])")
_NAME = re.compile(r"[^\s/>]+")
_ATTR = re.compile(r"""([^\s=/>][^\s=/>]*)(?:\s*=\s*(?:"([^"]*)"?|'([^']*)'?|([^\s>]+)))?""")
_TAG_END = re.compile(r"(/?)>")
_WS = re.compile(r"\s*")
_END_TAG = re.compile(r"</\s*([^\s/>]+)[^>]*>")
_XML_REF = re.compile(r"&(lt|gt|amp|quot|apos|#[0-9]+|#[xX][0-9a-fA-F]+);")
_XML_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
MAX_ATTRIBUTES = 1024  # of one tag
MAX_DEPTH = 1024  # open elements; deeper is refused (each costs memory, and no real page goes there)
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr keygen".split())
_RAW = frozenset(("script", "style"))
_RCDATA = frozenset(("textarea", "title"))
_NAMING = ("name", "id", "itemprop", "property", "data-field", "data-name", "field", "key")
# HTML elements whose start closes an open one of these (end tags HTML lets an author leave out)
_CLOSES = {"td": ("td", "th"), "th": ("td", "th"), "tr": ("td", "th", "tr"), "dd": ("dd", "dt"),
           "dt": ("dd", "dt"), "li": ("li",), "p": ("p",), "option": ("option",)}


def _xml_unescape(s: str) -> str:
    if "&" not in s:
        return s

    def one(m):
        r = m.group(1)
        if r[0] == "#":
            try:
                return chr(int(r[2:], 16) if r[1] in "xX" else int(r[1:]))
            except (ValueError, OverflowError):
                return m.group()
        return _XML_NAMED[r]

    return _XML_REF.sub(one, s)


class _Element:
    __slots__ = ("name", "masked", "table", "col", "label")

    def __init__(self, name, masked=None):
        self.name = name
        self.masked = masked  # the field that masks its content, or None
        self.table = None  # for <table>: {column index: field}
        self.col = 0  # for <tr>: the next cell's column; for <td>/<th>: its own
        self.label = None  # for <th>/<dt>: the text read so far


def mask_markup(masker, text: str, counts: dict, html: bool, path: tuple = (), depth: int = 0) -> str:
    """XML or HTML with fields and patterns masked (see the module's docstring)."""
    m = _Markup(masker, text, html, path, depth)
    m.run()
    result = "".join(m.out) if m.counts else text
    # patterns over the whole (a tag name, a declaration, a tag never closed)
    result, more = masker._patterns(result)
    merge_counts(m.counts, more)
    merge_counts(counts, m.counts)
    return result


class _Markup:
    """One pass over a document. Every structure a token consults is kept as it changes (the open
    elements by name, the innermost table and label, the outermost masked element), so a token costs
    the same however deep the document is."""

    def __init__(self, masker, text: str, html: bool, path: tuple, depth: int):
        self.masker, self.text, self.html, self.depth = masker, text, html, depth
        self.unescape = htmllib.unescape if html else _xml_unescape
        self.keep = max([len(p) for _, p in masker._dotted] + [1])  # path keys any field can look at
        self.outer = path
        self.out: list = []
        self.counts: dict = {}
        self.stack: list[_Element] = []
        self.names: list[str] = []
        self.open: dict[str, list[int]] = {}  # element name -> its places in the stack
        self.tables: list[_Element] = []
        self.labels: list[_Element] = []
        self.masked_at = -1  # the outermost masked element's place in the stack, or -1
        self.masked_emitted = False
        self.dd: str | None = None  # the field the last <dt> named: masks the <dd> after it

    # --- the stack -------------------------------------------------------------------------------

    def path(self, *more) -> tuple:
        p = tuple(self.names[-self.keep:]) + more
        if len(self.names) < self.keep:
            p = self.outer + p
        return p[-(self.keep + len(more)):]

    def masked(self):
        return self.stack[self.masked_at] if self.masked_at >= 0 else None

    def push(self, e: _Element):
        if len(self.stack) >= MAX_DEPTH:
            raise MaskError(f"the markup nests elements more than {MAX_DEPTH} deep: refused (browsers and XML "
                            "parsers stop there too)")
        self.open.setdefault(e.name, []).append(len(self.stack))
        if e.masked is not None and self.masked_at < 0:
            self.masked_at = len(self.stack)
        self.stack.append(e)
        self.names.append(e.name)
        if e.name == "table":
            self.tables.append(e)
        if e.label is not None:
            self.labels.append(e)

    def pop_to(self, i: int):
        while len(self.stack) > i:
            e = self.stack.pop()
            self.names.pop()
            self.open[e.name].pop()
            if self.masked_at >= len(self.stack):
                self.masked_at = -1
                self.masked_emitted = False
            if self.tables and self.tables[-1] is e:
                self.tables.pop()
            if self.labels and self.labels[-1] is e:
                self.labels.pop()
                self.close_label(e)

    def close_label(self, e: _Element):
        """A <th> or <dt> ended: does its text name a field?"""
        label = "".join(e.label)
        f = _column_field(self.masker, label) if label.strip() else None
        if f is None:
            return
        if e.name == "dt":
            self.dd = f
        elif self.tables:
            t = self.tables[-1]
            if t.table is None:
                t.table = {}
            t.table[e.col] = f

    # --- text ------------------------------------------------------------------------------------

    def value(self, raw: str, where: tuple, attr: bool) -> str:
        decoded = self.unescape(raw) if "&" in raw else raw
        c: dict = {}
        v = self.masker.mask_value_text(decoded, c, where, self.depth)
        if not c:
            return raw
        merge_counts(self.counts, c)
        return htmllib.escape(v, quote=attr)

    def emit_text(self, raw: str):
        if not raw:
            return
        m = self.masked()
        if m is not None:
            if not self.masked_emitted:
                self.masked_emitted = True
                self.out.append(MASK)
                add_count(self.counts, f"field:{m.masked}")
            return
        if self.labels:
            self.labels[-1].label.append(self.unescape(raw) if "&" in raw else raw)
        self.out.append(self.value(raw, self.path(), False))

    def emit_plain(self, raw: str):
        """Text that is no markup (what follows a tag never closed): fields as key: value, patterns."""
        if self.masked() is not None:
            return self.emit_text(raw)
        c: dict = {}
        v = self.masker.mask_plain_text(raw, c, self.path(), self.depth)
        merge_counts(self.counts, c)
        self.out.append(v if c else raw)

    def raw_value(self, raw: str) -> str:
        c: dict = {}
        v = self.masker.mask_value_text(raw, c, self.path(), self.depth)
        merge_counts(self.counts, c)
        return v if c else raw

    # --- the tokens ----------------------------------------------------------------------------

    def run(self):
        text, n, pos = self.text, len(self.text), 0
        while pos < n:
            m = _MARKUP.search(text, pos)
            if m is None:
                self.emit_text(text[pos:])
                return
            self.emit_text(text[pos:m.start()])
            tok = m.group()
            if tok == "<!--":
                pos = self.comment(m)
            elif tok == "<![CDATA[":
                pos = self.cdata(m)
            elif tok == "<!":
                pos = self.declaration(m)
            elif tok == "<?":
                end = text.find("?>" if not self.html else ">", m.end())
                close = 2 if not self.html else 1
                end = n if end < 0 else end
                self.out.append(text[m.start():end + close])
                pos = end + close
            elif tok == "</":
                pos = self.end_tag(m.start())
            else:
                pos = self.start_tag(m.start())

    def comment(self, m) -> int:
        text, n = self.text, len(self.text)
        end = text.find("-->", m.end())
        end = n if end < 0 else end
        if self.masked() is None:
            self.out += ("<!--", self.value(text[m.end():end], (), False), "-->" if end < n else "")
        return end + 3

    def cdata(self, m) -> int:
        text, n = self.text, len(self.text)
        end = text.find("]]>", m.end())
        end = n if end < 0 else end
        raw = text[m.end():end]
        if self.masked() is not None:
            self.emit_text(raw)
        else:
            self.out += ("<![CDATA[", self.raw_value(raw), "]]>" if end < n else "")
        return end + 3

    def declaration(self, m) -> int:
        text, n = self.text, len(self.text)
        end = text.find(">", m.end())
        end = n if end < 0 else end
        decl = text[m.end():end]
        if not self.html and decl.lstrip()[:7].upper() in ("DOCTYPE", "ENTITY", "ELEMENT", "ATTLIST"):
            raise MaskError("an XML body with a document type declaration is refused: its entities "
                            "could hide values from the masker")
        self.out.append(text[m.start():end + 1])
        return end + 1

    def end_tag(self, start: int) -> int:
        text = self.text
        em = _END_TAG.match(text, start)
        if em is None:
            if text.find(">", start) < 0:  # no tag ends anywhere after: the rest is text
                self.emit_plain(text[start:])
                return len(text)
            self.emit_text("</")
            return start + 2
        name = em.group(1).split(":")[-1].casefold()
        places = self.open.get(name)
        if places:
            self.pop_to(places[-1])
        if self.masked() is None:
            self.out.append(em.group())
        return em.end()

    def start_tag(self, start: int) -> int:
        text, n, html, masker = self.text, len(self.text), self.html, self.masker
        nm = _NAME.match(text, start + 1)
        assert nm is not None  # _MARKUP found "<" before a name's first letter
        qname = nm.group()
        name = qname.split(":")[-1].casefold()
        p = nm.end()
        attrs: list = []
        while True:
            ws = _WS.match(text, p)
            assert ws is not None  # a starred pattern matches, empty at worst
            p = ws.end()
            te = _TAG_END.match(text, p)
            if te is not None:
                break
            am = _ATTR.match(text, p)
            if am is None or am.end() == p:
                if p >= n:
                    break
                p += 1  # a stray "/" or "=": browsers skip it
                continue
            attrs.append(am)
            if len(attrs) > MAX_ATTRIBUTES:
                raise MaskError(f"a tag with more than {MAX_ATTRIBUTES} attributes is refused")
            p = am.end()
        if te is None:  # never closed: the rest is no tag; masked as text
            self.emit_plain(text[start:])
            return n
        stack = self.stack
        if html and name in _CLOSES and stack and stack[-1].name in _CLOSES[name]:
            self.pop_to(len(stack) - 1)
            if name == "tr" and stack and stack[-1].name == "tr":
                self.pop_to(len(stack) - 1)
        parent_masked = self.masked()
        here = self.path(name)
        # does the element name a field, by its own name or by an attribute that names it?
        field = masker.is_field(here)
        named = None
        for am in attrs:
            an = am.group(1).casefold()
            if an in _NAMING or an == "class":
                v = _attr_value(am)
                v = self.unescape(v) if "&" in v else v
                for token in (v.split() if an == "class" else [v]):
                    named = named or _column_field(masker, token)
        col = 0
        if html and name in ("td", "th") and stack and stack[-1].name == "tr":
            col = stack[-1].col
            stack[-1].col += 1
        if html and field is None and name == "td" and self.tables:
            field = (self.tables[-1].table or {}).get(col)
        if html and name == "dd":
            field, self.dd = field or self.dd, None
        if parent_masked is None:
            self.out.append(self.tag(start, qname, nm.end(), attrs, te, here, field or named))
        if te.group(1) or (html and name in _VOID):
            return te.end()
        e = _Element(name, field or named)
        e.col = col
        if html and name in ("th", "dt") and e.masked is None:
            e.label = []
        self.push(e)
        if html and name in _RAW | _RCDATA:
            return self.raw_text(name, te.end())
        return te.end()

    def tag(self, start, qname, prev, attrs, te, here, names_field) -> str:
        """The start tag as it was, attribute values masked."""
        text, masker, html = self.text, self.masker, self.html
        pieces = ["<", qname]
        for am in attrs:
            pieces.append(text[prev:am.start()])  # the space (or stray bytes) before it, as it was
            prev = am.end()
            if am.group(2) is None and am.group(3) is None and am.group(4) is None:
                pieces.append(am.group())
                continue
            an_raw = am.group(1)
            an = an_raw.split(":")[-1].casefold()
            raw = _attr_value(am)
            afield = masker.is_field(here + (an,)) or masker.is_field((an,))
            if afield is None and html and an.startswith("data-"):
                afield = masker.is_field((an[5:],))
            if afield is None and names_field and an in ("value", "content"):
                afield = names_field
            if afield is not None and raw != "":
                add_count(self.counts, f"field:{afield}")
                new = MASK
            else:
                new = self.value(raw, here + (an,), True)
            if new == raw:
                pieces.append(am.group())
            else:
                q = "'" if am.group(3) is not None else '"'
                pieces += (an_raw, "=", q, new, q)
        pieces.append(text[prev:te.end()])
        return "".join(pieces)

    def raw_text(self, name: str, pos: int) -> int:
        """<script> and <style> (raw text: JavaScript, CSS) and <textarea>, <title> (text)."""
        text, n = self.text, len(self.text)
        close = re.compile(r"</%s\s*>" % re.escape(name), re.I).search(text, pos)
        end = close.start() if close else n
        raw = text[pos:end]
        if self.masked() is not None or name in _RCDATA:
            self.emit_text(raw)
        else:
            self.out.append(self.raw_value(raw))
        self.pop_to(len(self.stack) - 1)
        if close is None:
            return n
        if self.masked() is None:
            self.out.append(close.group())
        return close.end()


def _attr_value(am) -> str:
    for g in (2, 3, 4):
        if am.group(g) is not None:
            return am.group(g)
    return ""

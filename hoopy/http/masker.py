"""Body masking, sans-IO: one Masker per connection, for every body format.

``fields`` name keys: a field without a dot masks that key anywhere, a dotted
field ("card.number") the key reached by that path of keys (at any depth;
arrays add no step). Names match in any case ("SSN" is "ssn"). ``patterns``
(hoopy.policy.masking detectors) run over every text value, keys included.

Formats, each read as its reader reads it (see formats.py for the markup and
CSV readers):

- JSON: parsed and walked; a body without a backslash, for built-in patterns, masked as text
  without a walk (``_json_raw``), and not even parsed when hoopy/http/_jsonmask.c (optional; see
  json_codec.py) says it certainly parses. A string value that holds structured text (JSON in
  a JSON string, markup, ``key: value`` text) is read and masked in turn, up to
  ``MAX_DEPTH`` levels, the key path carried on.
- text of any other kind (JavaScript/JSONP, YAML, logs, forms): a key named by a
  field followed by ``:``, ``=`` or ``=>`` (quoted in any way JSON, JavaScript or
  HTML quote it, or bare) has its value masked; text that is JSON, markup or CSV
  with a header as a whole is masked as that.
- CSV (a header names the columns), XML and HTML (element and attribute names;
  HTML also ``name``/``id``/``itemprop``/``class`` and table headers), in formats.py.

Counts name what was masked, never the value: ``{"field:ssn": 2, "email": 1}``.
Everything here is linear in the size of its input (checked by the tests with
hostile inputs); a body the masker cannot read raises MaskError and is refused.
"""
from __future__ import annotations

import re

import attrs

from hoopy.http import json_codec
from hoopy.http.keyvalue import key_regex, value_end
from hoopy.http.redaction import MaskError, add_count, check_ascii_compatible, looks_like_json, merge_counts
from hoopy.policy.masking import MASK, may_be_spelled

MAX_DEPTH = 8  # levels of structure inside strings (JSON in a string in JSON ...) read before refusing

# A character every match of a built-in detector contains: strings without it are skipped cheaply.
HINTS = {"email": "@", "us_ssn": "-"}
# Built-in detectors whose matches never contain a quote or a backslash: on JSON text without
# escapes, a match inside a string is the same match as in the decoded string.
_QUOTELESS = frozenset({"email", "credit_card", "us_ssn"})


@attrs.frozen
class Masker:
    fields: tuple = ()  # "ssn", "card.number"
    detectors: tuple = ()  # hoopy.policy.masking.Detector
    passthrough: tuple = ()  # (text, matcher(method, path)): routes whose unreadable bodies pass
    _plain: frozenset = attrs.field(init=False, repr=False, eq=False)
    _dotted: tuple = attrs.field(init=False, repr=False, eq=False)
    _hinted: tuple = attrs.field(init=False, repr=False, eq=False)
    # Every key a field rule names, each segment of a dotted one (casefolded): a GraphQL alias may rename none.
    field_keys: frozenset = attrs.field(init=False, repr=False, eq=False)
    # The names a text masker looks for: plain fields and the last key of each dotted one.
    key_names: frozenset = attrs.field(init=False, repr=False, eq=False)
    _key_re: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)
    _names_re: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)
    _json_key_re: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)
    _fast: bool = attrs.field(init=False, repr=False, eq=False)
    # Whether anything is masked: read ten times a request, so computed once (the class is frozen)
    active: bool = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen attrs)
        folded = [f.casefold() for f in self.fields]
        s("field_keys", frozenset(k for f in folded for k in f.split(".")))
        s("_plain", frozenset(f for f in folded if "." not in f))
        dotted = tuple((f, tuple(f.casefold().split("."))) for f in self.fields if "." in f)
        s("_dotted", dotted)
        s("key_names", frozenset(self._plain | {parts[-1] for _, parts in dotted}))
        s("_hinted", tuple((d, HINTS.get(d.name)) for d in self.detectors))
        s("_key_re", key_regex(self.key_names))
        names = sorted(self.key_names, key=len, reverse=True)
        s("_names_re", re.compile("|".join(map(re.escape, names)), re.I) if names else None)
        s("_json_key_re", re.compile(r'"(?:%s)"\s*:\s*' % "|".join(map(re.escape, sorted(self._plain, key=len,
                                                                                       reverse=True))), re.I)
          if self._plain else None)
        s("active", bool(self.fields or self.detectors))
        s("_fast", all(d.name in _QUOTELESS for d in self.detectors)
          and all(f.isascii() and '"' not in f and "\\" not in f for f in self.fields))

    @classmethod
    def from_config(cls, maskings) -> "Masker":
        from hoopy.http.rules import route_matcher

        fields: list = []
        detectors: list = []
        passthrough: list = []
        for m in maskings:
            fields += [f for f in m.fields if f not in fields]
            detectors += [d for d in m.patterns if d not in detectors]
            for text in getattr(m, "passthrough", ()):
                if text not in [t for t, _ in passthrough]:
                    passthrough.append((text, route_matcher(text)))
        return cls(tuple(fields), tuple(detectors), tuple(passthrough))

    def applies(self, kind: str) -> bool:
        """Whether a body of this kind is masked (read whole, or as a stream for SSE)."""
        return self.active and kind != "other"

    def passes(self, method: str, path: str) -> bool:
        """A route listed in ``passthrough``: bodies the masker cannot read go through unread."""
        return any(match(method, path) for _, match in self.passthrough)

    # --- dispatch --------------------------------------------------------------

    def mask(self, kind: str, data: bytes) -> tuple[bytes, dict]:
        """Masked bytes and counts; the input itself when nothing matched. MaskError: refuse."""
        try:
            return self._mask(kind, data)
        except UnicodeError:
            # bytes that are not UTF-8 where a rewrite must encode them (JSON in the text): a body
            # the masker cannot read, refused as any other (or passed where ``passthrough`` says)
            raise MaskError("the body holds bytes that are not UTF-8 where it must be rewritten to mask it")

    def _mask(self, kind: str, data: bytes) -> tuple[bytes, dict]:
        if kind == "json":
            return self.mask_json(data)
        if kind in ("csv", "xml", "html"):
            from hoopy.http import formats

            check_ascii_compatible(data)
            text = data.decode("utf-8", "surrogateescape")
            counts: dict = {}
            out = (formats.mask_csv(self, text, counts) if kind == "csv" else
                   formats.mask_markup(self, text, counts, html=(kind == "html")))
            return (data, counts) if not counts else (out.encode("utf-8", "surrogateescape"), counts)
        if kind == "other":
            return self.mask_unlabelled(data)
        return self.mask_sniffed(data)

    def mask_unlabelled(self, data: bytes) -> tuple[bytes, dict]:
        """A body of no type the masker knows (octet-stream, none): JSON if it looks like JSON,
        text if it is text, else refused (binary: the masker cannot read it)."""
        if looks_like_json(data):
            return self.mask_sniffed(data)
        try:
            check_ascii_compatible(data)
            data.decode("utf-8")
        except (MaskError, UnicodeDecodeError):
            raise MaskError("the body is not text the masker can read (binary, or not UTF-8)")
        return self.mask_sniffed(data)

    # --- JSON ---------------------------------------------------------------

    def mask_json(self, data: bytes) -> tuple[bytes, dict]:
        """Masked JSON bytes and counts; the input unchanged when nothing matched."""
        if not data.strip():
            return data, {}
        check_ascii_compatible(data)
        raw = self._fast and b"\\" not in data
        if raw and json_codec.valid is not None and type(data) is bytes and json_codec.valid(data):
            # known to parse: the raw path needs no parse, the walk only when the raw path declines
            done = self._json_raw(data.decode("utf-8", "surrogateescape"))
            if done is not None:
                text, found = done
                return (data, found) if not found else (text.encode("utf-8", "surrogateescape"), found)
            raw = False
        try:
            value, fast = json_codec.loads(data)
        except (ValueError, UnicodeDecodeError):
            if self.fields:
                raise MaskError("the body is declared JSON but is not valid JSON, so it cannot be masked")
            return self.mask_text(data)
        if raw:
            done = self._json_raw(data.decode("utf-8", "surrogateescape"))
            if done is not None:
                text, found = done
                return (data, found) if not found else (text.encode("utf-8", "surrogateescape"), found)
        counts: dict = {}
        try:
            masked = self._walk(value, counts, (), 0)
        except RecursionError:
            raise MaskError("the JSON body is nested too deeply to be masked")
        # Always what was walked, never the input: with a key twice the walk saw only its last value.
        return json_codec.dumps(masked, fast), counts

    def _json_raw(self, text: str):
        """Mask JSON text without escapes directly (no walk): (text, counts), or None when only the
        walk can tell (a dotted field's key appears, or a field's name appears other than as a key).

        Without escapes, a string's text is its value; built-in patterns cannot match across a quote,
        and a plain field's name appearing only as ``"name":`` means every occurrence is a key."""
        counts: dict = {}
        if self.key_names:
            low = text.lower()  # one pass in C; key names are ASCII here (see _fast)
            if any(parts[-1] in low for _, parts in self._dotted):
                return None
            names = sum(low.count(n) for n in self._plain)
            if not text.isascii():
                # the walk matches keys by casefold ("\u017fsn" and "\u00dfn" are "ssn"), which lower() does
                # not see: a name only casefold finds is left to the walk (else its value went out as is)
                folded = text.casefold()
                if (any(parts[-1] in folded for _, parts in self._dotted)
                        or sum(folded.count(n) for n in self._plain) != names):
                    return None
            if names:
                keys = list(self._json_key_re.finditer(text))
                if len(keys) != names:
                    return None
                out: list[str] = []
                pos = 0
                for m in keys:
                    if m.start() < pos:
                        continue  # inside a value already masked
                    end, _ = value_end(text, m.end())
                    out += (text[pos:m.end()], '"', MASK, '"')
                    pos = end
                    add_count(counts, "field:" + m.group()[1:].split('"', 1)[0].casefold())
                out.append(text[pos:])
                text = "".join(out)
        for d, hint in self._hinted:
            if hint is not None and hint not in text and not may_be_spelled(text):
                continue
            if d.name == "credit_card":
                text = self._cards_in_json(d, text, counts)
            else:
                text, n = d.redact(text)
                if n:
                    add_count(counts, d.name, n)
        if counts and json_codec.masked_key(text):
            return None  # a key masked by a pattern: the walk keeps two such keys apart
        return text, counts

    @staticmethod
    def _cards_in_json(d, text: str, counts: dict) -> str:
        """Card numbers in JSON text: inside a string, masked in place; a JSON number, replaced whole
        by the masked string (as the walk does)."""
        out: list[str] = []
        pos = quotes = 0

        def number_bounds(s, e):
            while s > 0 and text[s - 1] in "-+.eE0123456789":
                s -= 1
            while e < len(text) and text[e] in "-+.eE0123456789":
                e += 1
            return s, e

        for m in d.pattern.finditer(text):
            if not d.check(m.group()):
                continue
            s, e = m.span()
            if s < pos:
                continue
            quotes += text.count('"', pos, s)
            if quotes % 2:
                out += (text[pos:s], MASK)
            else:
                s, e = number_bounds(s, e)
                out += (text[pos:s], '"', MASK, '"')
            pos = e
            add_count(counts, d.name)
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _walk(self, value, counts: dict, path: tuple, depth: int):
        plain, dotted, hinted = self._plain, self._dotted, self._hinted
        if isinstance(value, str):
            return self._string(value, counts, path, depth)
        if isinstance(value, dict):
            out: dict = {}
            suffix: dict = {}  # masked key -> the last "#n" given to it in this object (_key)
            for k, v in value.items():
                kf = k.casefold() if isinstance(k, str) else k
                if kf in plain:
                    add_count(counts, f"field:{kf}")
                    out[self._key(k, counts, out, suffix)] = MASK
                    continue
                p = path
                if dotted:
                    p = path + (kf,)
                    hit = next((f for f, parts in dotted if p[-len(parts):] == parts), None)
                    if hit is not None:
                        add_count(counts, f"field:{hit}")
                        out[self._key(k, counts, out, suffix)] = MASK
                        continue
                out[self._key(k, counts, out, suffix) if hinted else k] = (
                    self._walk(v, counts, p, depth) if isinstance(v, (str, dict, list, int, float)) else v)
            return out
        if isinstance(value, list):
            return [self._walk(v, counts, path, depth) if isinstance(v, (str, dict, list, int, float)) else v
                    for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and hinted:
            # a card number sent as a JSON number is the same number to its reader
            text, c = self._patterns(repr(value) if isinstance(value, float) else str(value))
            if c:
                merge_counts(counts, c)
                return MASK
        return value

    def _key(self, key, counts: dict, taken: dict, suffix: dict):
        """A key as sent: by patterns too (an e-mail address as a key is still one); kept unique: the
        first free "#n" (looked for from the last one given to that masked key, ``suffix``: keys are
        only added to ``taken``, so those below it stay taken; from 1 each time, 50,000 address keys
        masking alike took minutes)."""
        if not isinstance(key, str) or not self._hinted:
            return key
        text, c = self._patterns(key)
        if not c:
            return key
        merge_counts(counts, c)
        n = suffix.get(text, 1)
        out = text if n == 1 else f"{text}#{n}"
        while out in taken:
            n += 1
            out = f"{text}#{n}"
        suffix[text] = n
        return out

    # --- text -------------------------------------------------------------------

    def _patterns(self, text: str) -> tuple[str, dict]:
        counts: dict = {}
        for d, hint in self._hinted:
            if hint is not None and hint not in text and not may_be_spelled(text):
                continue
            text, n = d.redact(text)
            if n:
                counts[d.name] = counts.get(d.name, 0) + n
        return text, counts

    def _string(self, s: str, counts: dict, path: tuple, depth: int) -> str:
        """A text value (a JSON string, an attribute, a CSV cell ...): what structure it holds masked
        as that structure, then patterns over it."""
        if depth >= MAX_DEPTH and (self.fields or "\\" in s):
            if self._names_re is not None and self._names_re.search(s) or "\\" in s:
                raise MaskError(f"the body nests structured text more than {MAX_DEPTH} levels deep")
        if self.fields or "\\" in s:
            t = s.lstrip()
            head = t[:1]
            if head in ("{", "[") and (self.fields or "\\" in t):
                try:
                    value, fast = json_codec.loads(t)
                except (ValueError, UnicodeDecodeError):
                    value = None
                if isinstance(value, (dict, list)):
                    c: dict = {}
                    masked = self._walk(value, c, path, depth + 1)
                    if not c:
                        return s
                    merge_counts(counts, c)
                    return json_codec.dumps(masked, fast).decode()
            if self.fields and self._names_re is not None and self._names_re.search(s):
                if head == "<":
                    from hoopy.http import formats

                    c = {}
                    out = formats.mask_markup(self, s, c, html=True, path=path, depth=depth + 1)
                    if c:
                        merge_counts(counts, c)
                        return out
                s = self._text_fields(s, counts, path, depth + 1)
        if self._hinted:
            s, c = self._patterns(s)
            if c:
                merge_counts(counts, c)
        return s

    def _text_fields(self, text: str, counts: dict, path: tuple, depth: int) -> str:
        """Fields in text that is not one parsed document: CSV with a header, or ``key: value`` pairs."""
        from hoopy.http import formats

        delim = formats.csv_header_delimiter(self, text)
        if delim is not None:
            c: dict = {}
            out = formats.mask_csv(self, text, c, delimiter=delim, depth=depth)
            merge_counts(counts, c)
            return out
        if self._key_re is None:
            return text  # no field names: nothing to find as ``key: value``
        parts: list[str] = []
        pos = 0
        for m in self._key_re.finditer(text):
            if m.start() < pos:
                continue
            end, q = value_end(text, m.end())
            if end == m.end():
                continue  # "ssn:" with nothing after it
            key = (m.group("k1") or m.group("k2")).casefold()
            parts += (text[pos:m.end()], f"{q}{MASK}{q}" if q else MASK)
            pos = end
            add_count(counts, f"field:{key}")
        if not parts:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def mask_text(self, data: bytes) -> tuple[bytes, dict]:
        """Text of no particular format: fields where it names them, then patterns."""
        if not self.active:
            return data, {}
        check_ascii_compatible(data)
        text = data.decode("utf-8", "surrogateescape")
        counts: dict = {}
        try:
            masked = self._string(text, counts, (), 0)
        except RecursionError:
            raise MaskError("the body is nested too deeply to be masked")
        if not counts:
            return data, counts
        return masked.encode("utf-8", "surrogateescape"), counts

    def mask_sniffed(self, data: bytes) -> tuple[bytes, dict]:
        """A body whose type does not say what it holds: JSON (or JSON lines) if it parses, markup
        if it starts as markup, else text; refused if it looks like JSON, fields apply, and it does
        not parse."""
        if not looks_like_json(data):
            head = data.lstrip()[:1]
            if head == b"<" and self.active:
                check_ascii_compatible(data)
                return self.mask("html" if not data.lstrip().startswith(b"<?xml") else "xml", data)
            return self.mask_text(data)
        try:
            return self.mask_json(data)
        except MaskError:
            pass
        lines = data.replace(b"\x1e", b"\n").split(b"\n")  # JSON lines, or RS-separated JSON texts
        out: list = []
        counts: dict = {}
        try:
            for ln in lines:
                if ln.strip():
                    json_codec.loads(ln)
        except (ValueError, UnicodeDecodeError, MaskError):
            if self.fields:
                raise MaskError("the body looks like JSON but does not parse, so it cannot be masked")
            return self.mask_text(data)
        for ln in lines:
            m, c = self.mask_json(ln)
            out.append(m)
            merge_counts(counts, c)
        return b"\n".join(out), counts

    def mask_plain_text(self, text: str, counts: dict, path: tuple = (), depth: int = 0) -> str:
        """For format readers: text that is none of the formats (a tag never closed): fields as
        ``key: value``, then patterns."""
        if self.fields and self._names_re is not None and self._names_re.search(text):
            text = self._text_fields(text, counts, path, depth + 1)
        if self._hinted:
            text, c = self._patterns(text)
            merge_counts(counts, c)
        return text

    def mask_value(self, value, counts: dict, path: tuple = ()):
        """A decoded JSON value (an MCP tool's arguments or result) masked as a JSON body's would be:
        fields by key in any case, JSON inside its strings, then patterns."""
        if not self.active:
            return value
        try:
            return self._walk(value, counts, tuple(p.casefold() for p in path), 0)
        except RecursionError:
            raise MaskError("the value is nested too deeply to be masked")

    def mask_value_text(self, text: str, counts: dict, path: tuple = (), depth: int = 0) -> str:
        """For format readers: one decoded text value masked (structure it holds, then patterns)."""
        return self._string(text, counts, path, depth)

    def is_field(self, path: tuple) -> str | None:
        """The field (as counted) a key path names, or None. ``path`` is casefolded keys."""
        if not path:
            return None
        if path[-1] in self._plain:
            return path[-1]
        for f, parts in self._dotted:
            if path[-len(parts):] == parts:
                return f
        return None

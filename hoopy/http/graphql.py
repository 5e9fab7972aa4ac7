"""GraphQL aliases, sans-IO: the one way a GraphQL caller renames a response key.

Masking ``fields`` act on JSON keys. In GraphQL the caller chooses the keys:
``{ customer { contact: email } }`` answers ``{"customer": {"contact": "..."}}``,
and a rule for ``email`` would not see it. So a request whose GraphQL document
gives a masked field another name is refused before it goes upstream.

The lexer follows the GraphQL spec's lexical grammar (names, punctuators,
strings and block strings, comments; commas are insignificant). An alias is
``Name : Name`` inside a selection set (``{ }``) and outside any argument list
(``( )``, where ``name: value`` is an argument, not an alias).
"""
from __future__ import annotations

import json
import re

from hoopy.http.bodies import looks_like_json

_TOKEN = re.compile(r'''
    (?P<ws>[\s,\ufeff]+)
  | (?P<comment>\#[^\n\r]*)
  | (?P<block>"""(?:\\"""|\\|[^"\\]++|"(?!""))*+(?:"""|$))
  | (?P<string>"(?:\\.|[^"\\\n\r]++)*+"?)
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<number>-?[0-9][0-9.eE+-]*)
  | (?P<punct>\.\.\.|[!$&():=@\[\]{|}])
  | (?P<other>.)
''', re.X | re.S)


def tokens(document: str):
    """(kind, text) of each significant token."""
    for m in _TOKEN.finditer(document):
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            yield kind, m.group()


def aliases(document: str) -> list[tuple[str, str]]:
    """Every (alias, field) in the document's selection sets."""
    out = []
    braces = parens = 0
    window: list = []  # the last three significant tokens at selection level
    for kind, text in tokens(document):
        if kind == "punct":
            if text == "{":
                braces += 1
            elif text == "}":
                braces = max(0, braces - 1)
            elif text == "(":
                parens += 1
            elif text == ")":
                parens = max(0, parens - 1)
        if parens or not braces:
            window.clear()
            continue
        window = (window + [(kind, text)])[-3:]
        if (len(window) == 3 and window[0][0] == "name" and window[1] == ("punct", ":")
                and window[2][0] == "name"):
            out.append((window[0][1], window[2][1]))
    return out


MAX_DOCUMENT = 1 << 20  # a longer document is refused rather than lexed on the reactor thread


class TooLong(Exception):
    pass


def documents_in_json(value) -> list[str]:
    """The GraphQL documents of a JSON request body: ``{"query": "..."}`` or a batch (a list of them).
    The key in any case: Go's encoding/json (gqlgen, graphql-go) takes "Query" for "query"."""
    items = value if isinstance(value, list) else [value]
    return [v for i in items if isinstance(i, dict)
            for k, v in i.items() if isinstance(k, str) and k.lower() == "query" and isinstance(v, str)]


def renamed_masked_field(documents, masked_keys) -> tuple[str, str] | None:
    """The first (alias, field) that gives a masked key another name, else None."""
    for doc in documents:
        if "{" not in doc:
            continue  # no selection set, no alias: not GraphQL, or nothing to rename
        if len(doc) > MAX_DOCUMENT:
            raise TooLong(f"a GraphQL document over {MAX_DOCUMENT} characters")
        for alias, field in aliases(doc):
            # masked keys are casefolded, as the masker matches them: "x: SSN" renames "ssn" too
            if field.casefold() in masked_keys and alias.casefold() != field.casefold():
                return alias, field
    return None


def documents_in_form(text: str) -> list[str]:
    """The ``query`` fields (the name in any case) of a form body or a URL's query string."""
    from urllib.parse import parse_qsl

    return [v for k, v in parse_qsl(text, keep_blank_values=True) if k.lower() == "query"]


def documents_in_body(data: bytes, media: str) -> list[str]:
    """Where a GraphQL server may find a document in a request body read whole: the body itself
    (application/graphql), a form's ``query`` field, or JSON's ``query`` (whatever the body is
    labelled: servers parse JSON sent as text/plain or with no type)."""
    if media == "application/graphql":
        return [data.decode("utf-8", "replace")]
    docs = documents_in_form(data.decode("utf-8", "replace")) if media == "application/x-www-form-urlencoded" else []
    if looks_like_json(data):
        try:
            docs += documents_in_json(json.loads(data))
        except ValueError:
            pass
    return docs

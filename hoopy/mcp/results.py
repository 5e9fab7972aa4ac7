"""Masking of what a tool (or a resource, or a prompt) returns: text, structured content,
embedded resources. ``[[masking]]`` patterns apply to every string; fields to JSON keys
(in structured content, and in text content that is itself JSON)."""
from __future__ import annotations

from hoopy.http.bodies import Masker


def masker_for(gateway, connection: str) -> Masker:
    return Masker.from_config(gateway.config.masking_for(connection))


def _text(masker: Masker, text: str, counts: dict) -> str:
    # The masker reads JSON (and CSV, markup) held in a string itself: fields inside, then patterns.
    return masker.mask_value(text, counts)


def _content(masker, items, counts):
    out = []
    for item in items:
        if not isinstance(item, dict):
            out.append(item)
            continue
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            item = {**item, "text": _text(masker, item["text"], counts)}
        elif kind == "resource" and isinstance(item.get("resource"), dict):
            res = item["resource"]
            if isinstance(res.get("text"), str):
                item = {**item, "resource": {**res, "text": _text(masker, res["text"], counts)}}
        out.append(item)
    return out


def mask_result(masker: Masker, result) -> tuple[object, dict]:
    """The result with every match masked, and {detector or field: count}."""
    counts: dict = {}
    if not masker.active or not isinstance(result, dict):
        return result, counts
    out = dict(result)
    if isinstance(out.get("content"), list):
        out["content"] = _content(masker, out["content"], counts)
    if "structuredContent" in out:
        out["structuredContent"] = masker.mask_value(out["structuredContent"], counts)
    if isinstance(out.get("contents"), list):  # resources/read
        out["contents"] = [
            {**c, "text": _text(masker, c["text"], counts)} if isinstance(c, dict) and isinstance(c.get("text"), str)
            else c for c in out["contents"]]
    if isinstance(out.get("messages"), list):  # prompts/get
        out["messages"] = [
            {**m, "content": _content(masker, [m["content"]], counts)[0]} if isinstance(m, dict) and isinstance(
                m.get("content"), dict) else m for m in out["messages"]]
    return (out if counts else result), counts


def mask_arguments(masker: Masker, args) -> tuple[object, dict]:
    """Arguments as recorded: patterns and fields masked (what is forwarded is unchanged)."""
    counts: dict = {}
    if not masker.active:
        return args, counts
    return masker.mask_value(args, counts), counts

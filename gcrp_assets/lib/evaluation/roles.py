"""The role of every predicted token in a rendered sample: a turn's text, its name slot, its end of turn.

From the rendered sample's spans and the tokenizer's offset mapping (`role_mask`); a token overlapping
several spans counts as end of turn, then name, then text. The losses by role are taken from these.
"""

from __future__ import annotations

import bisect

from gcrp_assets.lib.formats.chat_format import ChatFormat, Rendered


OTHER, MODEL_TEXT, MODEL_NAME, MODEL_END, USER_TEXT, USER_NAME, USER_END = range(7)


ROLE_NAMES = ("other", "model_text", "model_name", "model_end", "user_text", "user_name", "user_end")


# Where a token overlaps several spans it takes the first of these (the terminator's first token, often
# merged with the reply's last characters, such as `.[` in `….[/INST]`, counts as end of turn).
_PRIORITY = (MODEL_END, USER_END, MODEL_NAME, USER_NAME, MODEL_TEXT, USER_TEXT)


def role_spans(rendered: Rendered, fmt: ChatFormat) -> list[tuple[int, int, int]]:
    """Character spans `(start, end, role)` of a rendered sample, sorted by start, disjoint.

    From the blocks' content spans (`formats.render`): a turn's message text is MODEL_TEXT or
    USER_TEXT; its name slot (the name and what the format writes between it and the text, `Name: `)
    MODEL_NAME / USER_NAME; its end of turn MODEL_END / USER_END: the characters after the text up to
    the block's end (terminator such as `[/INST]` or `<|im_end|>`, and an EOS the format appends),
    or, for formats without a terminator (`herrsimian`), the next block's separator and the marker
    every turn header starts with (`\\n\\n::::`, the format's stop string). Everything else (BOS,
    system prompt, role headers, separators) is OTHER, i.e. not in any span.
    """
    heads = [p.lstrip("\n") for p in fmt.role_prefix.values()]
    common = _common_prefix(heads) if heads else ""
    spans: list[tuple[int, int, int]] = []
    blocks = rendered.blocks
    for i, block in enumerate(blocks):
        if block.kind not in ("user", "model") or not block.content:
            continue
        model = block.kind == "model"
        body_start, body_end = block.content[-1]
        if len(block.content) > 1:
            spans.append((block.content[0][0], body_start, MODEL_NAME if model else USER_NAME))
        spans.append((body_start, body_end, MODEL_TEXT if model else USER_TEXT))
        end_role = MODEL_END if model else USER_END
        if block.end > body_end:
            spans.append((body_end, block.end, end_role))
        elif i + 1 < len(blocks):
            following = blocks[i + 1]
            text = rendered.text[following.start:following.end]
            sep = fmt.separator if text.startswith(fmt.separator) else ""
            width = len(sep) + (len(common) if text[len(sep):].startswith(common) else 0)
            if width:
                spans.append((following.start, following.start + width, end_role))
    spans = [s for s in spans if s[1] > s[0]]
    spans.sort()
    return spans


def _common_prefix(texts: list[str]) -> str:
    out = texts[0]
    for t in texts[1:]:
        while not t.startswith(out):
            out = out[:-1]
    return out


def role_mask(rendered: Rendered, fmt: ChatFormat, offsets: list[tuple[int, int]]) -> list[int]:
    """The role of every token (`ROLE_NAMES` index), from its character span `offsets[i]` in `rendered.text`
    (the tokenizer's offset mapping, as `tokenization.encode_rendered` returns).

    A token takes the highest-priority role among the spans of `role_spans` it overlaps (end of turn,
    then name, then text); a token overlapping none, or with an empty span (special tokens such as
    BOS), is OTHER.
    """
    spans = role_spans(rendered, fmt)
    starts = [s[0] for s in spans]
    rank = {role: k for k, role in enumerate(_PRIORITY)}
    out = []
    for a, b in offsets:
        role = OTHER
        if b > a:
            j = bisect.bisect_right(starts, a) - 1
            j = max(j, 0)
            best = None
            while j < len(spans) and spans[j][0] < b:
                s, e, r = spans[j]
                if e > a and (best is None or rank[r] < rank[best]):
                    best = r
                j += 1
            role = OTHER if best is None else best
        out.append(role)
    return out

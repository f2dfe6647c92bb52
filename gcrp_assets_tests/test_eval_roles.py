"""Per-token roles of a rendered sample (model text, user text, names, end of turn) and the losses by role."""

import math

import pytest

from gcrp_assets.lib.evaluation.roles import (MODEL_END, MODEL_NAME, MODEL_TEXT, OTHER, ROLE_NAMES, USER_END,
                                              USER_NAME, USER_TEXT, role_mask, role_spans)
from gcrp_assets.lib.evaluation.losses import per_row_nll, per_row_scores
from gcrp_assets.lib.formats.chat_format import get_format, render
from gcrp_assets.lib.formats.tokenization import IGNORE, encode_rendered, labels_for
from gcrp_assets_tests.factories import SAMPLE


def _roles(fmt_name, tokenizer, sample=SAMPLE):
    fmt = get_format(fmt_name)
    rendered = render(sample, fmt, tokenizer.bos_token, eos_token=tokenizer.eos_token)
    ids, offsets = encode_rendered(tokenizer, rendered)
    return fmt, rendered, ids, offsets, role_mask(rendered, fmt, offsets)


def _text_of(rendered, offsets, mask, role):
    return "".join(rendered.text[a:b] for (a, b), r in zip(offsets, mask) if r == role)


def test_role_spans_inst_by_hand():
    fmt = get_format("inst")
    sample = {"system": "S", "turns": [{"role": "user", "name": "Al", "text": "hi"},
                                       {"role": "model", "name": "Bo", "text": "yo"}]}
    rendered = render(sample, fmt, "<s>")
    text = rendered.text
    assert text == "<s>[INST]system\nS[/INST]\n[INST]user\nAl: hi[/INST]\n[INST]model\nBo: yo[/INST]"
    got = [(text[s:e], ROLE_NAMES[r]) for s, e, r in role_spans(rendered, fmt)]
    assert got == [("Al: ", "user_name"), ("hi", "user_text"), ("[/INST]", "user_end"),
                   ("Bo: ", "model_name"), ("yo", "model_text"), ("[/INST]", "model_end")]


def test_role_spans_herrsimian_end_is_the_next_turn_marker():
    fmt = get_format("herrsimian")
    sample = {"system": "S", "turns": [{"role": "user", "name": "Al", "text": "hi"},
                                       {"role": "model", "name": "Bo", "text": "yo"},
                                       {"role": "user", "name": "Al", "text": "ok"}]}
    rendered = render(sample, fmt, "<s>")
    text = rendered.text
    got = [(text[s:e], ROLE_NAMES[r]) for s, e, r in role_spans(rendered, fmt)]
    assert got == [("Al: ", "user_name"), ("hi", "user_text"), ("\n\n::::", "user_end"),
                   ("Bo: ", "model_name"), ("yo", "model_text"), ("\n\n::::", "model_end"),
                   ("Al: ", "user_name"), ("ok", "user_text")]   # the last turn has no end in this format


def test_role_mask_by_hand_offsets():
    fmt = get_format("inst")
    sample = {"turns": [{"role": "model", "name": "Bo", "text": "yo."}]}
    rendered = render(sample, fmt, "<s>")
    text = rendered.text  # <s>[INST]model\nBo: yo.[/INST]
    at = text.index("Bo")
    offsets = [(0, 3), (3, at), (at, at + 2), (at + 2, at + 4), (at + 4, at + 6), (at + 6, at + 8),
               (at + 8, len(text)), (len(text), len(text))]
    # "<s>" other; "[INST]model\n" other; "Bo" name; ": " name; "yo" text; ".[" straddles text/end -> end
    assert role_mask(rendered, fmt, offsets) == [OTHER, OTHER, MODEL_NAME, MODEL_NAME, MODEL_TEXT, MODEL_END,
                                                 MODEL_END, OTHER]


@pytest.mark.parametrize("fmt_name", ["inst", "chatml", "herrsimian"])
def test_role_mask_on_the_real_tokenizer(fmt_name, smol_tokenizer):
    fmt, rendered, ids, offsets, mask = _roles(fmt_name, smol_tokenizer)
    assert len(mask) == len(ids)
    model_text = _text_of(rendered, offsets, mask, MODEL_TEXT)
    user_text = _text_of(rendered, offsets, mask, USER_TEXT)
    for turn in SAMPLE["turns"]:
        words = turn["text"].split()[1:-1]  # inner words: edge tokens may merge with names or terminators
        for word in words:
            assert word in (model_text if turn["role"] == "model" else user_text), (word, turn)
    assert "Steve" not in model_text and "Arty poured" not in user_text
    names = _text_of(rendered, offsets, mask, MODEL_NAME)
    assert "Sukuna Gojo" in names and "Enzo" in names and "Steve" not in names
    assert "Steve" in _text_of(rendered, offsets, mask, USER_NAME)
    n_model_turns = sum(t["role"] == "model" for t in SAMPLE["turns"])
    end_tokens = [k for k, r in enumerate(mask) if r == MODEL_END]
    assert end_tokens
    ends = _text_of(rendered, offsets, mask, MODEL_END)
    if fmt_name == "herrsimian":  # the last turn has no terminator in a format without one
        assert ends.count("::::") == n_model_turns - 1
    else:
        assert ends.count(fmt.turn_suffix[1:]) == n_model_turns
    assert USER_END in mask
    # nothing of the system prompt is scored as a turn
    system_at = rendered.text.index("You are involved")
    assert all(r == OTHER for (a, b), r in zip(offsets, mask) if system_at <= a < system_at + 20)


def test_labelled_tokens_are_model_tokens(smol_tokenizer):
    """With the model_turns label policy every trained token is a model name, text or end token."""
    fmt, rendered, ids, offsets, mask = _roles("inst", smol_tokenizer)
    labels = labels_for(rendered, ids, offsets)
    assert {mask[k] for k, l in enumerate(labels) if l != IGNORE} <= {MODEL_NAME, MODEL_TEXT, MODEL_END}
    assert sum(l != IGNORE for l in labels) > 0


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_role_losses_match_a_plain_forward(tiny_model, smol_tokenizer):
    fmt, rendered, ids, offsets, mask = _roles("inst", smol_tokenizer)
    labels = labels_for(rendered, ids, offsets)
    other = {**SAMPLE, "turns": SAMPLE["turns"][:3]}
    _, rendered2, ids2, offsets2, mask2 = _roles("inst", smol_tokenizer, other)
    rows = [{"input_ids": ids, "labels": labels}, {"input_ids": ids2, "labels": labels_for(rendered2, ids2, offsets2)}]
    scores = per_row_scores(tiny_model, rows, smol_tokenizer.eos_token_id, batch_size=2, roles=[mask, mask2])
    # reference: one unpadded forward per row, NLL of each token from the position before it
    for row, roles, score in zip(rows, [mask, mask2], scores):
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([row["input_ids"]])).logits[0].float(), -1)
        nll = [-float(logp[t - 1, row["input_ids"][t]]) for t in range(1, len(row["input_ids"]))]
        lab = [t for t in range(1, len(nll) + 1) if row["labels"][t] != IGNORE]
        assert score.tokens == len(lab)
        assert score.nll == pytest.approx(sum(nll[t - 1] for t in lab), rel=1e-4)
        for code, name in enumerate(ROLE_NAMES):
            if code == OTHER:
                continue
            pos = [t for t in range(1, len(nll) + 1) if roles[t] == code]
            got_nll, got_n = score.roles[name]
            assert got_n == len(pos)
            assert got_nll == pytest.approx(sum(nll[t - 1] for t in pos), rel=1e-4, abs=1e-6)
    # without roles: the same model-turn numbers, no role entries
    plain = per_row_nll(tiny_model, rows, smol_tokenizer.eos_token_id, batch_size=1)
    assert plain == [(pytest.approx(s.nll, rel=1e-4), s.tokens) for s in scores]
    assert math.isfinite(scores[0].roles["user_text"][0]) and scores[0].roles["user_text"][1] > 0

"""Scoring of continuations, the generation summary (McNemar per outcome), the report's marked failures."""

import json
import math

import pytest

from gcrp_assets.lib.evaluation.scoring import BINARY, score_continuation, summarize_generations, worst_first
from gcrp_assets.lib.evaluation.generation import Continuation, GenerationCase
from gcrp_assets.lib.formats.chat_format import get_format
from gcrp_assets.lib.evaluation.model_card import known_issues
from gcrp_assets.lib.plots import length_distribution_png, role_loss_png, thread_delta_png
from gcrp_assets.lib.evaluation.report import (failure_spans, html_report, markdown_continuation,
                                               markdown_report)

FMT = get_format("inst")
CASE = GenerationCase("s1", "d/t1", "Arty", "Steve", "…[INST]model\nArty:", "Arty bowed and left the room.", 3,
                      ("Steve", "Arty", "Sukuna"), ("Steve waved.", "Arty frowned at the door.", "Sukuna sat."))


def _c(text, hit_cap=False, eos=False):
    return Continuation(text, 10, hit_cap, eos)


def test_score_continuation_stops_off_and_on():
    run_on = score_continuation(_c(" Arty nodded.[/INST]\n[INST]user\nSteve: I sit.", hit_cap=True), CASE, FMT,
                                "<|im_end|>")
    assert run_on["reply"] == " Arty nodded." and run_on["stop"] == "run_on" and run_on["run_on"]
    assert run_on["impersonation"] and not run_on["impersonation_shown"]        # stops on hide it
    assert not run_on["truncated_shown"] and not run_on["template_leak"] and run_on["words"] == 2
    inside = score_continuation(_c(" Arty nodded.\nSteve: fine.\nSukuna: hm ((brb))", hit_cap=True), CASE, FMT, None)
    assert inside["impersonation"] and inside["impersonation_shown"]
    assert inside["other_character"] and inside["other_character_shown"]
    assert inside["truncated"] and inside["truncated_shown"] and inside["ooc"]
    leak = score_continuation(_c(" Arty <|im_start|>user hi", eos=True), CASE, FMT, None)
    assert leak["template_leak"] and not leak["truncated_shown"] and leak["natural_stop"]
    assert inside["copy"] == 0.0


def _records():
    texts = {
        "base": [" Arty nodded.[/INST]", " Arty left.[/INST]\n[INST]user\nSteve: hi", " Arty sat down slowly.[/INST]"],
        "adapter": [" Arty nodded.\nSteve: ok", " Arty left.[/INST]", " Arty sat <|im_start|> down.[/INST]"],
    }
    out = []
    for i in range(2):
        out.append({"context": i, "thread_key": f"d/t{i}", "turn": 3, "speaker": "Arty", "user_character": "Steve",
                    "context_tail": "…[INST]model\nArty:", "human": "Arty bowed (OOC: brb) and left.",
                    "history": list(CASE.history), "thread_turns": ["Steve waved.", "((back soon))"],
                    **{arm: [score_continuation(_c(t), CASE, FMT, None) for t in texts[arm]] for arm in texts}})
    return out


def test_summary_pairs_every_outcome_and_keeps_the_human_beside():
    summary = summarize_generations(_records(), n_samples=2)
    assert summary["greedy"]["n"] == 2 and summary["sampled"]["n"] == 4
    assert set(summary["greedy"]["rates"]) == {k for k, _ in BINARY}
    imp = summary["greedy"]["rates"]["impersonation"]
    assert (imp["base_rate"], imp["adapter_rate"], imp["b"], imp["c"]) == (0.0, 1.0, 0, 2)
    assert summary["sampled"]["rates"]["impersonation"]["b"] == 2     # base run-on into the user's turn
    assert summary["sampled"]["rates"]["template_leak"]["c"] == 2
    assert summary["human"]["ooc"] == 1.0 and summary["human"]["ooc_same_threads"] == 0.5
    assert summary["greedy"]["adapter"]["distinct1"] > 0 and summary["greedy"]["adapter"]["lengths"] == [4, 4]
    assert not math.isnan(summary["sampled"]["base"]["length_ks_vs_human"])
    assert "greedy" in summarize_generations(_records(), 0) and "sampled" not in summarize_generations(_records(), 0)


def _summary():
    records = _records()
    generation = summarize_generations(records, 2)
    generation.update({"n": 2, "n_contexts": 2, "samples_per_context": 2,
                       "settings": {"temperature": 0.8, "min_p": 0.1, "seed": 0, "max_new_tokens": 40,
                                    "max_prompt_tokens": 1536, "stop_markers": ["[INST]", "[/INST]"]}})
    role = {"tokens": 10, "bytes": 30, "threads": 2, "loss_base": 3.0, "loss_adapter": 2.5, "perplexity_base": 20.1,
            "perplexity_adapter": 12.2, "bits_per_byte_base": 1.4, "bits_per_byte_adapter": 1.2,
            "delta_mean_per_thread": -0.5, "delta_ci_low": -0.7, "delta_ci_high": -0.3}
    speakers = {"n": 2, "accuracy": 0.5, "acc_norm": 0.5, "mrr": 0.75, "mrr_norm": 0.75, "user_pick_rate": 0.0,
                "user_pick_rate_norm": 0.0}
    summary = {"format": "inst", "precision": "fp32", "base_model_path": "base", "base_model_version": "v1",
               "adapter_path": "adapter", "adapter_version": "v2", "eval_rows": 3, "eval_threads": 2,
               "eval_trained_tokens": 100, "model_turn_loss_base": 3.0, "model_turn_loss_adapter": 2.7,
               "perplexity_base": 20.1, "perplexity_adapter": 14.9, "bits_per_byte_base": 1.2,
               "bits_per_byte_adapter": 1.1, "loss_delta_mean_per_thread": -0.3, "loss_delta_ci_low": -0.4,
               "loss_delta_ci_high": -0.2, "per_thread_loss": {},
               "role_losses": {"user_text": role, "model_name": role, "model_end": role, "user_end": {"tokens": 0}},
               "speaker_selection": {"base": speakers, "adapter": speakers,
                                     "baselines": {"round_robin": {"n": 2, "accuracy": 0.5, "mrr": 0.7}}},
               "generation": generation}
    return summary, records


def test_reports_mark_failures_worst_first():
    summary, records = _summary()
    records[1]["adapter"][0]["impersonation"] = False  # context 0 stays the worst
    shown = worst_first(list(reversed(records)))
    assert shown[0]["context"] == 0
    png = length_distribution_png({"human": [3, 5], "adapter greedy": [2, 2]})
    plots = {"lengths": png, "thread_deltas": thread_delta_png(["a", "b"], [-0.2, 0.1], -0.05, -0.2, 0.1),
             "role_losses": role_loss_png({"user_text": summary["role_losses"]["user_text"]})}
    assert all(p.startswith(b"\x89PNG") for p in plots.values())
    md = markdown_report(summary, shown, plots)
    assert "⟦IMPERSONATION⟧" in md and "⟦STOP⟧" in md and "⟦LEAK⟧" in md and "🚩 impersonation" in md
    assert "user-turn loss" in md and "data:image/png;base64," in md
    # every rate shows its events and n; 2 + 2 pairs hold far fewer events than the default minimum of 20
    assert "McNemar p=" not in md and "too few events (2 in 2 pairs, both arms)" in md and "| 1 (2/2)   |" in md
    summary["generation"].update(summarize_generations(records, 2, min_events=2))
    assert "McNemar p=" in markdown_report(summary, shown, plots)
    assert "distinct-1" in md and "## Generations" in md
    page = html_report(summary, shown, plots)
    assert '<mark class="imp"' in page and '<mark class="leak"' in page and 'class="hidden"' in page
    assert page.count("<figure>") == 3 and "http" not in page
    json.dumps(summary, default=float)
    # the hidden run-on of a base continuation, and the leak inside the adapter's shown reply
    base = records[0]["base"][1]
    assert ("cut" in {k for _, _, k in failure_spans(base)}) and "⟦STOP⟧" in markdown_continuation(base)
    issues = "\n".join(known_issues(summary))
    assert "Impersonation (greedy" in issues and "User-turn loss 3 → 2.5" in issues and "OOC breaks" in issues


@pytest.mark.parametrize("text", ["<b>bold</b> | pipe", "plain"])
def test_markdown_continuation_is_one_safe_line(text):
    c = {"continuation": text + "\nnext", "reply": text + "\nnext", "impersonation_offset": None}
    line = markdown_continuation(c)
    assert "\n" not in line and "<b>" not in line


def test_caveat_when_most_continuations_hit_the_cap():
    from gcrp_assets.lib.evaluation.report import caveats

    summary, records = _summary()
    assert caveats(summary["generation"]) == []
    for r in records:
        for arm in ("base", "adapter"):
            for c in r[arm]:
                c["truncated"] = True
    g = summarize_generations(records, 2)
    g["settings"] = {"max_new_tokens": 40}
    [warning] = caveats(g)
    assert "cap of 40 new tokens" in warning and "lower bounds" in warning
    summary["generation"].update(g)
    assert "**Caveat**" in markdown_report(summary, records) and "cap of 40" in "\n".join(known_issues(summary))


def test_card_lists_the_settings_that_shaped_the_adapter_and_names_the_base_model():
    from gcrp_assets.orchestration.resources import EMBEDDED_MODEL_NAME, BaseModelSource
    from gcrp_assets.lib.evaluation.model_card import card_hyperparameters
    from gcrp_assets.lib.training.recipes import DEFAULTS, get_recipe

    smoke = dict(card_hyperparameters({**DEFAULTS, "recipe": "smoke"}))
    assert smoke["rank"] == "16" and smoke["target_modules"] == "q_proj, k_proj, v_proj, o_proj"
    assert not {"launcher", "master_port", "logging_steps", "load_in_4bit", "zero_stage", "wsd_stable_epochs"} & set(smoke)
    herrsimian = dict(card_hyperparameters({**DEFAULTS, **get_recipe("herrsimian-8b").values}))
    assert (herrsimian["load_in_4bit"], herrsimian["bnb_4bit_quant_type"], herrsimian["dropout"]) == ("True", "nf4", "0.55")
    assert "wsd_stable_epochs" in herrsimian and "load_in_8bit" not in herrsimian
    assert BaseModelSource().display_name() == EMBEDDED_MODEL_NAME
    assert BaseModelSource(hf_model_dir="/models/my-nemo-12b").display_name() == "my-nemo-12b"
    assert BaseModelSource(hf_model_dir="/m/x", model_name="org/Model").display_name() == "org/Model"

import math

import numpy as np
import pytest

from gcrp_assets.lib.evaluation.metrics import (bits_per_byte, distinct_n, diversity, length_summary,
                                                max_overlap_with_history, mcnemar_exact, ooc_rate,
                                                paired_bootstrap, paired_rates, paired_thread_deltas, rep_n,
                                                stop_outcome, template_leaks, thread_level_losses, utf8_bytes,
                                                words)
from gcrp_assets.lib.formats.chat_format import get_format
from gcrp_assets.lib.clean.ooc import split_ooc

# --- paired bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_for_a_seed_and_brackets_the_mean():
    deltas = [0.3, -0.1, 0.25, 0.05, 0.4, -0.2, 0.15, 0.1]
    first = paired_bootstrap(deltas, n_resamples=2000, seed=7)
    assert first == paired_bootstrap(deltas, n_resamples=2000, seed=7)
    assert first != paired_bootstrap(deltas, n_resamples=2000, seed=8)
    mean, low, high = first
    assert mean == pytest.approx(sum(deltas) / len(deltas))
    assert low < mean < high
    assert min(deltas) <= low and high <= max(deltas)


def test_bootstrap_matches_the_reference_recipe():
    d = np.array([1.0, 2.0, 4.0, 8.0, -3.0])
    idx = np.random.default_rng(3).integers(0, len(d), (500, len(d)))
    expected_low, expected_high = np.percentile(d[idx].mean(1), [2.5, 97.5])
    mean, low, high = paired_bootstrap(d, n_resamples=500, seed=3)
    assert mean == pytest.approx(2.4)
    assert (low, high) == pytest.approx((expected_low, expected_high))


def test_bootstrap_edge_cases():
    assert all(math.isnan(x) for x in paired_bootstrap([]))
    mean, low, high = paired_bootstrap([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    assert paired_bootstrap([0.2, 0.2, 0.2], n_resamples=50) == pytest.approx((0.2, 0.2, 0.2))
    with pytest.raises(ValueError):
        paired_bootstrap([0.1, float("nan")])


# --- McNemar, paired rates ------------------------------------------------------------------------------


@pytest.mark.parametrize("b, c, p", [
    (0, 6, 0.03125),              # 2 · 1/64
    (6, 0, 0.03125),
    (1, 5, 0.21875),              # 2 · (1 + 6)/64
    (2, 10, 2 * 79 / 4096),       # 2 · (1 + 12 + 66)/4096
    (3, 3, 1.0),
    (4, 5, 1.0),                  # 2 · (1 + 9 + 36 + 84 + 126)/512 > 1 → 1
    (0, 0, 1.0),
])
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_rates_counts_discordant_pairs():
    base = [True, True, False, False, True, False]
    adapter = [True, False, True, True, False, True]
    out = paired_rates(base, adapter)
    assert out["n"] == 6
    assert out["base_rate"] == pytest.approx(3 / 6)
    assert out["adapter_rate"] == pytest.approx(4 / 6)
    assert out["delta"] == pytest.approx(1 / 6)
    assert (out["b"], out["c"]) == (2, 3)
    assert out["p"] == pytest.approx(mcnemar_exact(2, 3)) and out["p"] == 1.0
    worse = paired_rates([False] * 8, [True] * 6 + [False] * 2)
    assert (worse["b"], worse["c"]) == (0, 6) and worse["p"] == pytest.approx(0.03125)
    with pytest.raises(ValueError):
        paired_rates([True], [True, False])


# --- losses ---------------------------------------------------------------------------------------------


def test_bits_per_byte():
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    assert bits_per_byte(3.0, 2) == pytest.approx(3.0 / (math.log(2) * 2))
    assert math.isnan(bits_per_byte(1.0, 0))
    assert utf8_bytes("héllo") == 6


def test_thread_level_losses_are_token_weighted():
    rows = [
        {"thread_key": "d/a", "nll": 10.0, "tokens": 2},
        {"thread_key": "d/a", "nll": 2.0, "tokens": 8},   # row means 5.0 and 0.25; pooled 12/10
        {"thread_key": "d/b", "nll": 3.0, "tokens": 1},
        {"thread_key": "d/c", "nll": 0.0, "tokens": 0},   # nothing scored: left out
    ]
    assert thread_level_losses(rows) == pytest.approx({"d/a": 1.2, "d/b": 3.0})


def test_paired_thread_deltas_align_keys():
    keys, deltas = paired_thread_deltas({"b": 2.0, "a": 1.0}, {"a": 0.5, "b": 2.5})
    assert keys == ["a", "b"]
    assert deltas.tolist() == pytest.approx([-0.5, 0.5])
    with pytest.raises(ValueError):
        paired_thread_deltas({"a": 1.0}, {"b": 1.0})


# --- repetition, diversity ------------------------------------------------------------------------------


def test_word_tokenizer():
    assert words("Don't STOP, Mira-Vell... 42!") == ["don't", "stop", "mira", "vell", "42"]


def test_distinct_n_is_corpus_level_within_texts():
    texts = ["the cat the cat", "a dog"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (a dog) — none across the two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a b c"], 2) == 1.0
    assert math.isnan(distinct_n(["one"], 2))


def test_rep_n_counts_repeated_ngrams_within_a_text():
    assert rep_n("the cat the cat the cat", 2) == pytest.approx(1 - 2 / 5)
    assert rep_n("The cat. the CAT!", 2) == pytest.approx(1 - 2 / 3)
    assert rep_n("a b c d", 2) == 0.0
    assert math.isnan(rep_n("a", 2))
    assert diversity("a b c d e") == 1.0
    # rep-2 = 1 − 2/5, rep-3 = 1 − 2/4, rep-4 = 1 − 2/3
    assert diversity("a b a b a b") == pytest.approx((2 / 5) * (2 / 4) * (2 / 3))


def test_overlap_with_history_takes_the_closest_single_turn():
    reply = "one two three four five six"  # 4-grams: 1234, 2345, 3456
    assert max_overlap_with_history(reply, ["One two three FOUR five.", "x y z w"]) == pytest.approx(2 / 3)
    # each turn holds one of the three 4-grams: 1/3 each (a union would give 2/3)
    split = ["one two three four", "three four five six"]
    assert max_overlap_with_history(reply, split) == pytest.approx(1 / 3)
    assert max_overlap_with_history(reply, ["zero one two three four five six seven"]) == 1.0
    assert max_overlap_with_history(reply, []) == 0.0
    assert max_overlap_with_history("one two three six", ["one two three four"], n=2) == pytest.approx(2 / 3)
    assert math.isnan(max_overlap_with_history("too short", ["too short"]))


# --- OOC, length, template, stops -----------------------------------------------------------------------


def test_ooc_rate_uses_split_ooc():
    texts = ["((brb, dinner))", "Mira walked (quietly) home.", "OOC: sorry for the wait\nHe nodded.",
             "(OOC: short post) She left.", "[[will edit later]] Dorn sat."]
    flags = [bool(split_ooc(t).remarks) for t in texts]
    assert flags == [True, False, True, True, True]
    assert ooc_rate(texts) == pytest.approx(4 / 5)
    assert ooc_rate(["plain"]) == 0.0
    assert math.isnan(ooc_rate([]))


def test_length_summary_medians_iqr_ratio():
    out = length_summary(["a b", "a b c d", "a b c d e f"], ["a b", "c d"])
    assert out["n_model"] == 3 and out["n_human"] == 2
    assert out["model_median"] == 4.0 and out["model_iqr"] == 2.0   # Q25 = 3, Q75 = 5
    assert out["human_median"] == 2.0 and out["human_iqr"] == 0.0
    assert out["ratio_of_medians"] == 2.0
    empty = length_summary([], ["a"])
    assert math.isnan(empty["model_median"]) and math.isnan(empty["ratio_of_medians"])


def test_template_leaks():
    assert template_leaks("He nodded.[INST]user\nSteve: hi", ["[INST]"])
    assert template_leaks("text <|im_start|>assistant", ("<|im_start|>",))
    assert template_leaks("fine\n\n::::user:Anon: hey")  # default marker list
    assert not template_leaks("Mira bowed [slightly] and smiled.")
    assert not template_leaks("anything", ["", "[INST]"])


@pytest.mark.parametrize("fmt_name, continuation, hit_cap, expected", [
    ("inst", "Arty nodded.[/INST]", False, "natural_stop"),
    ("inst", "Arty nodded.[/INST]\n[INST]", False, "natural_stop"),          # stopped on the next-turn marker
    ("inst", "Arty nodded.[/INST]</s>", True, "natural_stop"),               # ended on the last allowed token
    ("inst", "Arty nodded.", False, "natural_stop"),                         # EOS dropped by decoding
    ("inst", "Arty nodded and then he walked to the", True, "truncated"),
    ("inst", "Arty nodded.[/INST]\n[INST]user\nSteve: Hi.", False, "run_on"),
    ("inst", "Arty nodded.\n[INST]model\nSukuna: Hm.", True, "run_on"),
    ("chatml", "Arty nodded.<|im_end|>", False, "natural_stop"),
    ("chatml", "Arty nodded.<|im_end|>\n<|im_start|>user\nSteve: hi", True, "run_on"),
    ("herrsimian", "Arty nodded.\n\n::::", False, "natural_stop"),
    ("herrsimian", "Arty nodded.\n\n::::user", False, "natural_stop"),
    ("herrsimian", "Arty nodded.\n\n::::user:Steve: Hi.", False, "run_on"),
    ("herrsimian", "Arty nodded and kept", True, "truncated"),
])
def test_stop_outcome_classes(fmt_name, continuation, hit_cap, expected):
    fmt = get_format(fmt_name)
    assert stop_outcome(continuation, fmt.stop_strings, fmt.turn_suffix, hit_cap) == expected


# --- pooled repetition, rates, length distributions ---------------------------------------------------


def test_repeated_ngram_rate_is_pooled_over_replies():
    from gcrp_assets.lib.evaluation.metrics import repeated_ngram_rate

    # "a b a b a b": 5 bigrams, 2 unique → 3 repeated; "c d e": 2 bigrams, none repeated
    assert repeated_ngram_rate(["a b a b a b", "c d e"], 2) == pytest.approx(3 / 7)
    assert repeated_ngram_rate("a b c", 2) == 0.0
    assert math.isnan(repeated_ngram_rate(["a"], 2))
    assert repeated_ngram_rate(["x y x y"], 2) == pytest.approx(rep_n("x y x y", 2))


def test_rate_mean_and_word_lengths():
    from gcrp_assets.lib.evaluation.metrics import mean, rate, word_lengths

    assert rate([True, False, True, True]) == 0.75 and math.isnan(rate([]))
    assert mean([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(mean([float("nan")]))
    assert word_lengths(["a b", "", "Don't stop now"]) == [2, 0, 3]
    assert distinct_n(["a a b"], 1) == pytest.approx(2 / 3)  # distinct-1


def test_ks_distance():
    from gcrp_assets.lib.evaluation.metrics import ks_distance

    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([1, 2], [5, 6]) == 1.0
    assert ks_distance([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    assert math.isnan(ks_distance([], [1]))

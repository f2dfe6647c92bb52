from gcrp_assets.lib.attribution import attribute
from gcrp_assets.lib.cleaning import clean_thread, dump_scrubber
from gcrp_assets.lib.filters import FilterRules, rejection_reason
from gcrp_assets.lib.ooc import split_ooc
from gcrp_assets.lib.privacy import HandleScrubber
from gcrp_assets_tests.factories import thread

PLAYS = {"nightowl_77": ["Mira Vell"], "ravenmoor": ["Dorn Hale", "Keri Wolf"]}


def test_attribution_follows_the_contract_order():
    assert attribute("ravenmoor", "Keri Wolf", "text", PLAYS).method == "field"
    only = attribute("nightowl_77", None, "She smiled.", PLAYS)
    assert (only.character, only.method) == ("Mira Vell", "only_character")
    bold = attribute("ravenmoor", None, "**Dorn Hale**\nDorn grunted.", PLAYS)
    assert (bold.character, bold.method, bold.text) == ("Dorn Hale", "name_header", "Dorn grunted.")
    colon = attribute("ravenmoor", None, "keri wolf: Keri laughed.", PLAYS)
    assert (colon.character, colon.text) == ("Keri Wolf", "Keri laughed.")
    lost = attribute("ravenmoor", None, "Someone laughed.", PLAYS)
    assert (lost.character, lost.method) == (None, "unattributed")
    # A header naming a character the author does not play attributes nothing.
    assert attribute("ravenmoor", None, "Mira Vell: hi", PLAYS).character is None


def test_ooc_forms_are_found_and_removed():
    split = split_ooc("Mira ran. ((brb, dinner)) She [[sorry!]] stopped. (OOC: short post)\nOOC: back later")
    assert split.text == "Mira ran. She stopped."
    assert len(split.remarks) == 4
    assert split_ooc("((just checking in))").is_ooc_only
    assert not split_ooc("She said (quietly) no.").remarks


def test_handles_become_the_character_or_vanish():
    scrubber = HandleScrubber(["nightowl_77", "quill&ink", "Mira"], protected_names=["Mira"])
    text = "@nightowl_77 your move! quill&ink, thoughts?\nRE: The Job\nMira waved.\n-- nightowl_77"
    out = scrubber.scrub(text, {"nightowl_77": "Mira Vell"})
    assert out == "Mira Vell your move! thoughts?\nMira waved."
    assert scrubber.find(out) == []
    assert scrubber.find("ask NightOwl_77 later") == ["nightowl_77"]


def test_clean_thread_counts_what_it_drops_and_leaks_no_handle():
    t = thread("t", 3, 8)
    t["dump"] = "d.jsonl"
    t["posts"][1]["text"] = "<p> </p>"
    t["posts"][2]["text"] = "((brb))"
    t["posts"][3]["text"] = "@nightowl_77 hurry up, " + t["posts"][3]["text"]
    t["posts"][4]["character"] = None
    t["characters"][1]["player"] = "nightowl_77"  # now nightowl_77 plays two: post 4 has no rule left
    t["posts"][4]["author"] = "nightowl_77"
    cleaned = clean_thread(t, dump_scrubber([t]))
    assert cleaned["n_empty_posts"] == 1 and cleaned["n_ooc_posts"] == 1 and cleaned["n_unattributed_posts"] == 1
    assert len(cleaned["turns"]) == 5
    handles = {p["author"] for p in t["posts"]} | {c["player"] for c in t["characters"]}
    for turn in cleaned["turns"]:
        assert not any(h in turn["text"] for h in handles)
    assert "hurry up" in cleaned["turns"][1]["text"]
    assert {c["name"] for c in cleaned["characters"]} == {turn["character"] for turn in cleaned["turns"]}


def _cleaned(n_chars, n_posts, **counts):
    t = thread("t", n_chars, n_posts)
    t["dump"] = "d"
    c = clean_thread(t, dump_scrubber([t]))
    c.update(counts)
    return c


def test_filters_give_reasons():
    rules = FilterRules()
    assert rejection_reason(_cleaned(3, 8), rules) is None
    assert rejection_reason(_cleaned(2, 5), rules)[0] == "too_few_turns"
    assert rejection_reason(_cleaned(2, 5, n_empty_posts=3), rules)[0] == "empty_posts"
    assert rejection_reason(_cleaned(1, 8), rules)[0] == "too_few_characters"
    assert rejection_reason(_cleaned(8, 9), rules)[0] == "too_many_characters"
    assert rejection_reason(_cleaned(8, 9), FilterRules(max_characters=8)) is None

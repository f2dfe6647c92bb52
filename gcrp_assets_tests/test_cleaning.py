import pytest

from gcrp_assets.lib.clean.attribution import attribute
from gcrp_assets.lib.clean.cleaning import CleaningOptions, clean_thread, dump_scrubber, ic_turns
from gcrp_assets.lib.clean.filters import REASONS, FilterRules, rejection_reason
from gcrp_assets.lib.clean.language import english_score
from gcrp_assets.lib.clean.ooc import format_ooc, ooc_inner, split_ooc
from gcrp_assets.lib.clean.privacy import HandleScrubber
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
    text = "RE: The Job\n@nightowl_77 your move! quill&ink, thoughts? nightowl_77 agrees.\nMira waved.\n-- nightowl_77"
    out = scrubber.scrub(text, {"nightowl_77": "Mira Vell"})
    assert out == "your move! thoughts? Mira Vell agrees.\nMira waved."
    assert scrubber.find(out) == []
    assert scrubber.find("ask NightOwl_77 later") == ["nightowl_77"]
    assert scrubber.find("ping @quill&ink") == ["quill&ink"]


def test_reply_headers_only_at_the_top_and_signatures_only_at_the_end():
    scrubber = HandleScrubber(["ravenmoor"])
    post = "**RE: The Job**\nRE: again\nShe read the letter.\nRe: your offer, it said.\n— Wait, she thought.\nDone."
    assert scrubber.scrub(post) == "She read the letter.\nRe: your offer, it said.\n— Wait, she thought.\nDone."
    for signature in ("-- ravenmoor", "~*~ ravenmoor ~*~", "~ posted from my phone", "Sent from my iPhone",
                      "-- ravenmoor (she/her) | always up for plots"):
        assert scrubber.scrub(f"She left.\n\n{signature}") == "She left.", signature
    # A last line that merely starts with a dash but is story (dialogue with quotes) stays.
    assert scrubber.scrub('She left.\n— "Come back," he called.') == 'She left.\n— "Come back," he called.'


def test_mentions_and_emails_are_removed():
    scrubber = HandleScrubber(["nightowl_77"])
    assert scrubber.scrub("Ask @someone_else or mail me at owl@example.com, fine?") == "Ask or mail me at, fine?"
    assert scrubber.scrub("@nightowl_77, look out!") == "look out!"


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


def test_more_ooc_forms():
    split = split_ooc("Mira ran. [OOC: edit later] She stopped. OOC: brb\n@ravenmoor your move!\nThe end.")
    assert split.text == "Mira ran. She stopped.\nThe end."
    assert split.remarks == ["[OOC: edit later]", "OOC: brb", "@ravenmoor your move!"]
    # A long line that starts with a mention is not a tag line; "OOC" inside a sentence is not a remark.
    long = "@ravenmoor I think Mira would never forgive the captain for what happened on the bridge tonight."
    assert split_ooc(long).text == long
    assert split_ooc("The word OOC: means out of character").remarks == []


def test_ooc_inner_and_format():
    assert [ooc_inner(r) for r in ["((brb, dinner))", "[[OOC: loving this]]", "(OOC - short one)", "OOC: back",
                                   "[OOC: x]"]] == ["brb, dinner", "loving this", "short one", "back", "x"]
    assert format_ooc(["((brb))", "OOC: back later", "(())"]) == "(OOC: brb)\n(OOC: back later)"


def _ooc_thread():
    t = thread("t", 2, 8)
    t["dump"] = "d"
    t["posts"][1]["text"] += " ((brb, @quill&ink))"
    t["posts"][2]["text"] = "OOC: sorry for the wait, everyone!"
    return t


def test_ooc_policy_strip_is_the_default():
    cleaned = clean_thread(_ooc_thread(), dump_scrubber([_ooc_thread()]))
    assert all(t["kind"] == "ic" for t in cleaned["turns"]) and len(cleaned["turns"]) == 7
    assert "brb" not in cleaned["turns"][1]["text"]
    assert (cleaned["n_ooc_remarks"], cleaned["n_ooc_posts"], cleaned["n_posts_with_ooc"]) == (2, 1, 2)


def test_ooc_policy_keep_makes_nameless_ooc_turns_after_the_post():
    t = _ooc_thread()
    cleaned = clean_thread(t, dump_scrubber([t]), CleaningOptions(ooc_policy="keep"))
    kinds = [turn["kind"] for turn in cleaned["turns"]]
    assert kinds == ["ic", "ic", "ooc", "ooc", "ic", "ic", "ic", "ic", "ic"]
    ooc = [turn for turn in cleaned["turns"] if turn["kind"] == "ooc"]
    assert [o["text"] for o in ooc] == ["(OOC: brb)", "(OOC: sorry for the wait, everyone!)"]
    assert all(o["character"] is None for o in ooc) and "quill" not in ooc[0]["text"]
    assert len(ic_turns(cleaned)) == 7 and rejection_reason(cleaned, FilterRules()) is None


def test_ooc_policy_drop_post_drops_every_post_with_ooc():
    t = _ooc_thread()
    cleaned = clean_thread(t, dump_scrubber([t]), CleaningOptions(ooc_policy="drop_post"))
    assert [turn["post_id"] for turn in cleaned["turns"]] == ["t-p1"] + [f"t-p{i}" for i in range(4, 9)]
    assert cleaned["n_ooc_posts"] == 2


def test_near_empty_posts_count_as_empty():
    t = thread("t", 2, 8)
    t["dump"] = "d"
    t["posts"][3]["text"] = "<p>...</p>"
    t["posts"][4]["text"] = "lol ok"
    cleaned = clean_thread(t, dump_scrubber([t]))
    assert cleaned["n_empty_posts"] == 2 and len(cleaned["turns"]) == 6
    assert len(clean_thread(t, dump_scrubber([t]), CleaningOptions(min_post_chars=1))["turns"]) == 8


def test_every_reason_has_a_meaning():
    assert {"too_few_turns", "empty_posts", "too_few_characters", "too_many_characters", "post_too_long",
            "too_many_unattributed", "too_much_ooc", "not_english", "minor_sexual_content", "exact_duplicate",
            "near_duplicate"} == set(REASONS)


def test_post_too_long_is_rejected_not_split():
    c = _cleaned(3, 8)
    c["turns"][2]["text"] = "word " * 5000
    c["max_post_chars"] = len(c["turns"][2]["text"])
    assert rejection_reason(c, FilterRules())[0] == "post_too_long"
    assert rejection_reason(c, FilterRules(max_post_chars=0)) is None


def test_too_many_unattributed_posts():
    assert rejection_reason(_cleaned(3, 9, n_unattributed_posts=3), FilterRules())[0] == "too_many_unattributed"
    assert rejection_reason(_cleaned(3, 9, n_unattributed_posts=2), FilterRules()) is None
    assert rejection_reason(_cleaned(3, 9, n_unattributed_posts=3), FilterRules(max_unattributed_share=1.0)) is None


def test_too_much_ooc():
    assert rejection_reason(_cleaned(3, 8, n_posts_with_ooc=5), FilterRules())[0] == "too_much_ooc"
    assert rejection_reason(_cleaned(3, 8, n_posts_with_ooc=4), FilterRules()) is None


def test_language_filter_is_off_by_default_and_catches_other_languages():
    english = _cleaned(3, 8)
    spanish = _cleaned(3, 8)
    for turn in spanish["turns"]:
        turn["text"] = ("Mira abrió la puerta de la taberna y sacudió la lluvia de su capa. "
                        "¿Alguien ha visto al barquero?")
    assert rejection_reason(spanish, FilterRules()) is None
    assert rejection_reason(spanish, FilterRules(language="en"))[0] == "not_english"
    assert rejection_reason(english, FilterRules(language="en")) is None
    assert english_score("The cat sat on the mat and she was happy.") > 0.4
    assert english_score("Der Hund lief schnell über die Straße.") < 0.1 and english_score("") == 0.0
    with pytest.raises(ValueError):
        FilterRules(language="fr")


def test_library_defaults_are_the_config_defaults():
    """benchmarks/data_stages.py and direct library callers get what the assets run with by default."""
    from gcrp_assets.orchestration.configs import FilterConfig, PromptConfig
    from gcrp_assets.orchestration.settings import settings_from
    from gcrp_assets.defs.data_stages import filter_settings
    from gcrp_assets.lib.clean.content_policy import PolicyConfig
    from gcrp_assets.lib.clean.dedup import DedupConfig
    from gcrp_assets.lib.prompts.samples import PromptOptions

    assert filter_settings(FilterConfig()) == (FilterRules(), CleaningOptions(), DedupConfig(), PolicyConfig())
    assert settings_from(PromptConfig(), PromptOptions) == PromptOptions()

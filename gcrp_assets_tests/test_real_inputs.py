"""The data stages end to end (the very functions the assets call) on inputs shaped as their programs write
them: SillyTavern data folders (`st_fixtures`, built from SillyTavern's source), an RPGuild-style forum table
written by pandas as the scrapers did, and a TV transcript table written as R's `readr::write_csv` writes the
`friends` data set. Per fixture: every record accounted for, the human is the human, the roster is right,
text neither lost nor damaged."""

import json
from pathlib import Path

import pandas as pd
import pytest

from gcrp_assets.lib.clean.cleaning import CleaningOptions
from gcrp_assets.lib.clean.filters import FilterRules
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.prompts.samples import PromptOptions, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate
from gcrp_assets.lib.prompts.stage import run_augmented
from gcrp_assets.lib.clean.stage import run_filtered
from gcrp_assets.lib.ingest.stage import run_raw
from gcrp_assets_tests import st_fixtures as st


def run_stages(dump: Path, work: Path, rules: FilterRules, options: CleaningOptions = CleaningOptions(),
               prompt: PromptOptions = PromptOptions()) -> dict:
    folders = {name: work / name for name in ("raw", "filtered", "augmented")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    raw = run_raw(dump, folders["raw"])
    filtered = run_filtered(folders["raw"] / "threads.parquet", folders["filtered"], rules, options)
    augmented = run_augmented(folders["filtered"] / "threads.parquet", folders["raw"] / "threads.parquet",
                              folders["augmented"], SheetTemplate.load(), load_system_template(), prompt,
                              authors_are_characters=options.authors_are_characters)
    return {
        "raw": raw, "filtered": filtered, "augmented": augmented,
        "threads": read_rows(folders["raw"] / "threads.parquet"),
        "raw_rejects": read_rows(folders["raw"] / "rejects.parquet"),
        "kept": read_rows(folders["filtered"] / "threads.parquet"),
        "rejects": read_rows(folders["filtered"] / "rejects.parquet"),
        "samples": read_rows(folders["augmented"] / "samples.parquet"),
    }


def assert_accounted(out: dict) -> None:
    raw, filtered = out["raw"], out["filtered"]
    assert raw["threads"] + raw["rejected_lines"] == raw["lines"]
    assert filtered["threads_kept"] + filtered["threads_rejected"] == filtered["threads_in"] == raw["threads"]
    rejected = {(r["file"], r["line"]) for r in out["rejects"]}
    kept = {t["thread_id"] for t in out["kept"]}
    for thread in out["threads"]:  # every raw thread is kept or rejected, under its own (file, line)
        assert (thread["thread_id"] in kept) != ((thread["file"], thread["line"]) in rejected), thread["thread_id"]


# ---------------------------------------------------------------------------------------------------------
# SillyTavern data folders


@pytest.mark.parametrize("layout", ["1.12", "current"])
@pytest.mark.parametrize("strategy", ["starter", "each", "random"])
def test_sillytavern_folder_through_the_data_stages(tmp_path, layout, strategy):
    folder = st.build_data_folder(tmp_path / "inbox", layout)
    out = run_stages(folder.path, tmp_path / "work", FilterRules(min_turns=2),
                     prompt=PromptOptions(user_character=strategy))
    assert_accounted(out)
    assert not out["raw_rejects"]
    assert out["filtered"]["threads_kept"] == 5 and out["filtered"]["reasons"] == {"too_few_turns": 1}

    # The human is the is_user persona in every sample, whatever the strategy: one sample per thread, and
    # no model turn of the persona (a greeting by the AI character comes first in every solo chat).
    assert out["augmented"]["threads_with_marked_human"] == 5
    assert out["augmented"]["samples_training_human_turns"] == 0
    assert len(out["samples"]) == 5
    for sample in out["samples"]:
        assert sample["user_character"] == st.PERSONA and sample["human_marked"]
        assert all(t["role"] == ("user" if t["name"] == st.PERSONA else "model") for t in sample["turns"] if t["name"])
        assert f"who is playing as {st.PERSONA}" in sample["system"]
        assert json.loads(sample["aliases"]) in ({}, {st.PERSONA_OLD: st.PERSONA})
    solo = next(s for s in out["samples"] if s["thread_id"].endswith(st.ADA_SOLO))
    assert solo["turns"][0] == {"role": "model", "name": st.ADA, "text": st.ADA_GREETING}
    assert json.loads(solo["aliases"]) == {st.PERSONA_OLD: st.PERSONA}

    # The roster: cards and the persona, never "System"; narration is counted, not a character.
    for thread in out["kept"]:
        names = [c["name"] for c in thread["characters"]]
        assert "System" not in names and "Note" not in names and st.PERSONA in names
    group = next(t for t in out["kept"] if t["thread_id"].endswith(st.GROUP_CHAT_1))
    assert [c["name"] for c in group["characters"]] == [st.ADA, st.BRAM, st.PERSONA, st.CORA]
    assert out["filtered"]["narrator_posts"] == 4
    texts = [t["text"] for thread in out["kept"] for t in thread["turns"]]
    assert st.NARRATION_1 not in texts and st.COMMENT not in texts  # narrator_policy "skip"
    assert st.BRAM_REPLY in texts and st.CORA_REPLY in texts  # exact, the chosen swipe
    assert st.ADA_REPLY_SWIPE not in texts and st.ADA_HIDDEN not in texts


def test_sillytavern_narration_kept_as_name_less_ooc_turns_on_request(tmp_path):
    folder = st.build_data_folder(tmp_path / "inbox", "current")
    out = run_stages(folder.path, tmp_path / "work", FilterRules(min_turns=2),
                     CleaningOptions(narrator_policy="ooc"))
    solo = next(t for t in out["kept"] if t["thread_id"].endswith(st.ADA_SOLO))
    narration = [t for t in solo["turns"] if t["kind"] == "ooc"]
    assert [(t["character"], t["text"]) for t in narration] == [(None, st.NARRATION_1), (None, st.COMMENT)]
    sample = next(s for s in out["samples"] if s["thread_id"] == solo["thread_id"])
    assert {"role": "user", "name": None, "text": st.NARRATION_1} in sample["turns"]


# ---------------------------------------------------------------------------------------------------------
# A forum table as the RPGuild scrapes were published: pandas `to_csv`, HTML messages, `thread_type`
# IC/OOC/Characters, `thread_tags` as a Python list's repr.

def write_rpguild_csv(path: Path) -> Path:
    tags = str(["Fantasy", "Casual", "Group"])
    rows = []
    sheet_1 = "<b>Name:</b> Mira Vell<br />\n<b>Age:</b> 27<br />\n<b>Appearance:</b> Tall, freckled, a ranger's cloak."
    sheet_2 = "[b]Name:[/b] Dorn Hale\n[b]Race:[/b] Dwarf\n[b]Personality:[/b] Gruff but kind."
    sheet_3 = "<b>Name:</b> Sefa Brightwater<br />\n<b>Age:</b> 31<br />\nA wandering healer."
    rows += [("The Ember Road", "Characters", tags, "nightowl_77", sheet_1),
             ("The Ember Road", "Characters", tags, "quill&ink", sheet_2),
             ("The Ember Road", "Characters", tags, "sunmote", sheet_3)]
    ic = [("nightowl_77", "<p>Mira pushed the tavern door open, shaking rain from her cloak.</p>"),
          ("quill&ink", "<div class=\"bbWrapper\">Dorn looked up from the fire.<br />\n\"Shut the door, lass.\"</div>"),
          ("sunmote", "<blockquote class=\"bbCodeBlock\">nightowl_77 said: Mira pushed</blockquote>"
                      "Sefa set down her satchel of herbs and smiled at both of them."),
          ("nightowl_77", "Mira laughed and dropped onto the bench. \u201cWet roads, dry throats.\u201d"),
          ("quill&ink", "Dorn slid a mug across the table without a word, then another."),
          ("sunmote", "Sefa raised her mug. \u201cTo the road, and whoever keeps it open.\u201d"),
          ("nightowl_77", "Mira clinked her mug against Sefa's and drank deep.")]
    rows += [("The Ember Road", "IC", tags, author, text) for author, text in ic]
    rows += [("The Ember Road", "OOC", tags, "quill&ink", "sorry for the slow post everyone!")]
    rows += [("Short Scene", "IC", "[]", "nightowl_77", "Mira waited."),
             ("Short Scene", "IC", "[]", "quill&ink", "Dorn waited too.")]
    frame = pd.DataFrame(rows, columns=["thread_title", "thread_type", "thread_tags", "message_username", "message"])
    frame.to_csv(path, index=False)
    return path


def test_rpguild_forum_table_through_the_data_stages(tmp_path):
    out = run_stages(write_rpguild_csv(tmp_path / "rpguild.csv"), tmp_path / "work", FilterRules())
    assert_accounted(out)
    assert out["raw"]["ooc_rows"] == 1
    assert [t["thread_id"] for t in out["kept"]] == ["The Ember Road"]
    # No sheet for its authors: no post can be attributed, and the reject says so (not "0 turns").
    [reject] = out["rejects"]
    assert (reject["thread_id"], reject["reason"]) == ("Short Scene", "too_many_unattributed")
    assert "2 of 2 posts unattributed" in reject["detail"] and "attribution 'author'" in reject["detail"]
    assert out["filtered"]["unattributed_posts_all"] == 2 and out["filtered"]["unattributed_posts"] == 0
    [thread] = out["kept"]
    assert [c["name"] for c in thread["characters"]] == ["Mira Vell", "Dorn Hale", "Sefa Brightwater"]
    assert thread["human"] is None
    turns = [(t["character"], t["text"]) for t in thread["turns"]]
    assert turns[1] == ("Dorn Hale", "Dorn looked up from the fire.\n\"Shut the door, lass.\"")
    assert turns[2] == ("Sefa Brightwater", "Sefa set down her satchel of herbs and smiled at both of them.")
    assert turns[3][1] == "Mira laughed and dropped onto the bench. \u201cWet roads, dry throats.\u201d"  # quotes kept
    [sample] = out["samples"]
    assert sample["user_character"] == "Mira Vell" and not sample["human_marked"]  # no human marked: starter
    assert not any(h in json.dumps(sample) for h in ("nightowl_77", "quill&ink", "sunmote"))


# ---------------------------------------------------------------------------------------------------------
# A TV transcript as R's readr::write_csv writes the `friends` data set (EmilHvitfeldt/friends: one utterance
# per row, columns text, speaker, season, episode, scene, utterance; quotes only where a field needs them,
# doubled inside; `\n` line ends; missing values as NA). A speaker per row, no thread column, no sheets.

FRIENDS = [
    ("There's nothing to tell! He's just some guy I work with!", "Monica Geller", 1, 1, 1, 1),
    ("C'mon, you're going out with the guy! There's gotta be something wrong with him!", "Joey Tribbiani", 1, 1, 1, 2),
    ("All right Joey, be nice. So does he have a hump? A hump and a hairpiece?", "Chandler Bing", 1, 1, 1, 3),
    ("Wait, does he eat chalk?", "Phoebe Buffay", 1, 1, 1, 4),
    ("Just, 'cause, I don't want her to go through what I went through with Carl- oh!", "Phoebe Buffay", 1, 1, 1, 5),
    ("Okay, everybody relax. This is not even a date. It's just two people going out to dinner and- not having sex.",
     "Monica Geller", 1, 1, 1, 6),
    ("Sounds like a date to me.", "Chandler Bing", 1, 1, 1, 7),
    ("\"Hi.\" Barry, that's all I said.", "Rachel Green", 1, 1, 2, 1),
    ("Oh God, that's so sweet, Rach.", "Monica Geller", 1, 1, 2, 2),
]


def write_friends_csv(path: Path) -> Path:
    def field(value) -> str:
        text = str(value)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

    lines = ["text,speaker,season,episode,scene,utterance"]
    lines += [",".join(field(v) for v in row) for row in FRIENDS]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_transcript_needs_the_author_attribution_mode_and_says_so(tmp_path):
    path = write_friends_csv(tmp_path / "friends.csv")
    rules = FilterRules(min_turns=2)
    out = run_stages(path, tmp_path / "contract", rules)
    assert_accounted(out)
    assert [t["thread_id"] for t in out["threads"]] == ["season 1 episode 1 scene 1", "season 1 episode 1 scene 2"]
    assert out["filtered"]["threads_kept"] == 0
    assert {r["reason"] for r in out["rejects"]} == {"too_many_unattributed"}
    assert all("attribution 'author'" in r["detail"] for r in out["rejects"])
    assert out["filtered"]["unattributed_posts_all"] == len(FRIENDS)  # counted over every thread, none kept

    out = run_stages(path, tmp_path / "author", rules, CleaningOptions(attribution="author"))
    assert_accounted(out)
    assert out["filtered"]["threads_kept"] == 2 and out["filtered"]["unattributed_posts_all"] == 0
    scene_1 = out["kept"][0]
    assert [c["name"] for c in scene_1["characters"]] == ["Monica Geller", "Joey Tribbiani", "Chandler Bing",
                                                          "Phoebe Buffay"]
    assert [(t["character"], t["text"]) for t in scene_1["turns"]] == [(r[1], r[0]) for r in FRIENDS[:7]]
    scene_2 = out["kept"][1]
    assert scene_2["turns"][0]["text"] == "\"Hi.\" Barry, that's all I said."  # quotes and names kept whole
    assert out["augmented"]["samples_with_handle_leaks"] == 0
    assert out["samples"][0]["user_character"] == "Monica Geller"

"""Importers for post tables and SillyTavern exports, golden-file style.

Every input is built here from the published layouts (`raw-threads.md` §2–3, the reference's §4–6),
and the canonical output of small inputs is asserted exactly.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gcrp_assets.lib.ingest.contract import DumpReadError, validate_thread
from gcrp_assets.lib.ingest.dumps import detect_layout, dump_digest, find_dumps, read_dump
from gcrp_assets.lib.ingest.canonical import read_canonical_jsonl
from gcrp_assets.lib.ingest.cards import card_sheet, read_card
from gcrp_assets.lib.ingest.post_tables import parse_tags
from gcrp_assets.lib.ingest.sillytavern import parse_send_date
from gcrp_assets_tests.factories import thread, write_jsonl


def assert_canonical(contents):
    """Every thread is exactly what `validate_thread` makes of it, plus dump and line."""
    for t in contents.threads:
        assert set(t) == {"dump", "file", "line", "thread_id", "title", "forum", "url", "tags", "human", "characters",
                          "posts"}
        assert t["dump"] == contents.dump and isinstance(t["line"], int) and t["line"] >= 1
        assert validate_thread(t) == {k: v for k, v in t.items() if k not in ("dump", "file", "line")}
    assert contents.lines == len(contents.threads) + len(contents.rejects)


# ---------------------------------------------------------------------------------------------------
# Post tables

HEADER = ["thread_title", "thread_type", "thread_tags", "message_username", "message"]
TAGS = "['1x1', 'Fantasy']"
ROWS = [
    ["The Ember Road", "Characters", TAGS, "nightowl_77", "<b>Name:</b> Mira Vell<br>Age: 19"],
    ["The Ember Road", "IC", TAGS, "nightowl_77", "<p>Mira pushed the door open, \"Anyone here?\"</p>"],
    ["The Ember Road", "OOC", TAGS, "quill&ink", "So excited to start, sorry for the wait!"],
    ["The Ember Road", "Characters", TAGS, "quill&ink", "[b]Dorn Hale[/b]\nAge: 40\nRace: Dwarf"],
    ["The Ember Road", "ic", TAGS, "quill&ink", "Dorn looked up from the fire.\nHe nodded once."],
    ["Quiet Harbor", "IC", "['Modern']", "ravenmoor", "Sela waited by the pier."],
    ["Quiet Harbor", "IC", "['Modern']", "", "Tobin arrived late."],
    ["Lost Sheets", "Characters", "", "grey_wick", "<b>Name:</b> Fen Marsh"],
    ["Table Talk", "OOC", "", "grey_wick", "Anyone up for a new game?"],
    ["Table Talk", "OOC", "", "lanternfish", "Me!"],
]


def golden_ember_road(dump: str) -> dict:
    return {
        "dump": dump, "file": dump, "line": 2, "thread_id": "The Ember Road", "title": "The Ember Road", "forum": None,
        "url": None, "tags": ["1x1", "Fantasy"], "human": None,
        "characters": [
            {"name": "Mira Vell", "player": "nightowl_77", "sheet": "<b>Name:</b> Mira Vell<br>Age: 19", "aliases": []},
            {"name": "Dorn Hale", "player": "quill&ink", "sheet": "[b]Dorn Hale[/b]\nAge: 40\nRace: Dwarf",
             "aliases": []},
        ],
        "posts": [
            {"post_id": "2", "author": "nightowl_77", "character": None,
             "text": "<p>Mira pushed the door open, \"Anyone here?\"</p>", "posted_at": None, "kind": "ic"},
            {"post_id": "5", "author": "quill&ink", "character": None,
             "text": "Dorn looked up from the fire.\nHe nodded once.", "posted_at": None, "kind": "ic"},
        ],
    }


def write_delimited(path: Path, header: list[str], rows: list[list], delimiter: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, header: list[str], rows: list[list]) -> Path:
    pq.write_table(pa.Table.from_pylist([dict(zip(header, r)) for r in rows]), path)
    return path


WRITERS = {
    "rpguild.csv": lambda p: write_delimited(p, HEADER, ROWS, ","),
    "rpguild.tsv": lambda p: write_delimited(p, HEADER, ROWS, "\t"),
    "rpguild.parquet": lambda p: write_parquet(p, HEADER, ROWS),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_post_table_golden(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    assert detect_layout(path) == "post_table"
    contents = read_dump(path)
    assert contents.layout == "post_table"
    assert contents.threads == [golden_ember_road(name)]
    assert contents.rows == len(ROWS)
    assert contents.ooc_rows == 3
    assert contents.ooc_rows_by_thread == {"The Ember Road": 1, "Table Talk": 2}
    by_line = {r["line"]: r for r in contents.rejects}
    assert sorted(by_line) == [7, 8]
    assert by_line[7]["reason"] == "invalid_thread" and by_line[7]["thread_id"] == "Quiet Harbor"
    assert by_line[7]["detail"] == f"{name}:row 7: thread 'Quiet Harbor': post row 7 has an empty author"
    assert [r["row"] for r in json.loads(by_line[7]["record"])] == [6, 7]
    assert by_line[8]["reason"] == "no_posts" and by_line[8]["detail"].startswith(f"{name}:row 8: ")
    assert contents.lines == 3
    assert_canonical(contents)


def test_delimiter_is_sniffed_from_the_header_not_the_extension(tmp_path):
    comma_named_tsv = write_delimited(tmp_path / "actually_commas.tsv", HEADER, ROWS, ",")
    tab_named_csv = write_delimited(tmp_path / "actually_tabs.csv", HEADER, ROWS, "\t")
    odd_name = write_delimited(tmp_path / "forum.export", HEADER, ROWS, "\t")
    packed = tmp_path / "packed.tsv.gz"
    packed.write_bytes(gzip.compress(write_delimited(tmp_path / "plain.tsv", HEADER, ROWS, "\t").read_bytes()))
    for path in (comma_named_tsv, tab_named_csv, odd_name, packed):
        assert detect_layout(path) == "post_table"
        assert read_dump(path).threads[0]["posts"] == golden_ember_road(path.name)["posts"]


def test_contract_columns_aliases_and_optional_fields(tmp_path):
    header = ["Thread_ID", "Title", "Forum", "Username", "Character", "Content", "Posted_At", "Post_ID", "Tags"]
    rows = [
        ["t-1", "The Bridge", "starport", "keri", "Keri Wolf", "Keri checks the gauges.", "2021-05-01T12:00:00Z", "p1",
         '["scifi", "crew"]'],
        ["t-1", "The Bridge", "starport", "dorn", "Dorn Hale", "Dorn grunts.", "2021-05-01T12:05:00Z", "p2", ""],
    ]
    path = write_delimited(tmp_path / "posts.csv", header, rows, ",")
    assert read_dump(path).threads == [{
        "dump": "posts.csv", "file": "posts.csv", "line": 1, "thread_id": "t-1", "title": "The Bridge",
        "forum": "starport", "url": None, "tags": ["scifi", "crew"], "human": None, "characters": [],
        "posts": [
            {"post_id": "p1", "author": "keri", "character": "Keri Wolf", "text": "Keri checks the gauges.",
             "posted_at": "2021-05-01T12:00:00Z", "kind": "ic"},
            {"post_id": "p2", "author": "dorn", "character": "Dorn Hale", "text": "Dorn grunts.",
             "posted_at": "2021-05-01T12:05:00Z", "kind": "ic"},
        ],
    }]


def test_parquet_native_types(tmp_path):
    table = pa.table({
        "thread_href": ["https://forum.example/t/9", "https://forum.example/t/9"],
        "author": ["mossy.stones", "ravenmoor"],
        "text": ["Sela laughs.", "Tobin sighs."],
        "post_id": pa.array([11, 12], pa.int64()),
        "posted_at": pa.array([datetime(2022, 3, 4, 5, 6, 7, tzinfo=timezone.utc)] * 2, pa.timestamp("s", tz="UTC")),
        "thread_tags": pa.array([["1x1", "Modern"], None], pa.list_(pa.string())),
    })
    pq.write_table(table, tmp_path / "forum.parquet")
    [only] = read_dump(tmp_path / "forum.parquet").threads
    assert only["thread_id"] == only["url"] == "https://forum.example/t/9" and only["title"] is None
    assert only["tags"] == ["1x1", "Modern"]
    assert [(p["post_id"], p["posted_at"]) for p in only["posts"]] == [("11", "2022-03-04T05:06:07+00:00"),
                                                                       ("12", "2022-03-04T05:06:07+00:00")]


def test_sheet_name_comes_from_the_character_column_or_the_sheet_never_the_handle(tmp_path):
    header = ["thread_title", "thread_type", "message_username", "message", "character"]
    rows = [
        ["Named", "Characters", "nightowl_77", "Age: 19\nRace: Elf", "Mira Vell"],
        ["Named", "IC", "nightowl_77", "Mira waves.", ""],
        ["Unnamed", "IC", "quill&ink", "Someone waves.", ""],
        ["Unnamed", "Characters", "quill&ink", "Age: 40\nRace: Dwarf\nLikes: ale.", ""],
    ]
    contents = read_dump(write_delimited(tmp_path / "sheets.csv", header, rows, ","))
    assert [t["characters"] for t in contents.threads] == [
        [{"name": "Mira Vell", "player": "nightowl_77", "sheet": "Age: 19\nRace: Elf", "aliases": []}]]
    [reject] = contents.rejects
    assert reject["line"] == 4 and reject["reason"] == "invalid_thread"
    assert reject["detail"].startswith("sheets.csv:row 4: thread 'Unnamed': character sheet at row 4 names no character")
    assert "quill&ink" not in reject["detail"]


def test_ragged_csv_row_and_unknown_thread_type_reject_their_thread(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("thread_id,author,message,thread_type\n"
                    "a,x,hello,IC\n"
                    "a,y,hi,IC,surplus\n"
                    "b,x,hello,Lore\n"
                    "c,x,fine,\n", "utf-8")
    contents = read_dump(path)
    assert [t["thread_id"] for t in contents.threads] == ["c"]
    details = {r["thread_id"]: r["detail"] for r in contents.rejects}
    assert details["a"] == "ragged.csv:row 2: thread 'a': row 2 has 5 fields, the header has 4"
    assert details["b"].startswith("ragged.csv:row 3: ") and "unknown thread_type 'Lore'" in details["b"]


def test_missing_required_column_fails_naming_file_and_column(tmp_path):
    path = write_delimited(tmp_path / "no_author.csv", ["thread_title", "message"], [["t", "hello"]], ",")
    with pytest.raises(DumpReadError, match=r"no_author\.csv.*missing required column 'author'"):
        read_dump(path)
    parquet = write_parquet(tmp_path / "no_message.parquet", ["thread_id", "username"], [["t", "x"]])
    with pytest.raises(DumpReadError, match=r"no_message\.parquet.*'message'"):
        read_dump(parquet)


def test_corrupt_parquet_fails_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not a parquet file PAR1")
    with pytest.raises(DumpReadError, match=r"garbage\.parquet"):
        read_dump(garbage)
    good = write_parquet(tmp_path / "good.parquet", HEADER, ROWS).read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DumpReadError, match=r"truncated\.parquet"):
        read_dump(truncated)


def test_non_utf8_table_fails_naming_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("thread_id,author,message\nt,caf\u00e9,ol\u00e9\n".encode("latin-1"))
    with pytest.raises(DumpReadError, match=r"latin1\.csv.*not UTF-8"):
        read_dump(path)


def test_tags_are_parsed_as_data_never_evaluated():
    assert parse_tags("['1x1', 'Fantasy']") == ["1x1", "Fantasy"]
    assert parse_tags('["18+", "Advanced"]') == ["18+", "Advanced"]
    assert parse_tags("Free, Casual") == ["Free", "Casual"]
    assert parse_tags(["a", None, "a", "b"]) == ["a", "b"]
    assert parse_tags("['Don\\'t panic']") == ["Don't panic"]
    assert parse_tags("[__import__('os').system('echo pwned')]") == ["__import__(", "os", ").system(",
                                                                        "echo pwned", ")"]
    assert parse_tags("") == parse_tags(None) == parse_tags(float("nan")) == []


# ---------------------------------------------------------------------------------------------------
# SillyTavern


def assert_st_canonical(contents):
    """Every SillyTavern thread is exactly what `validate_thread` makes of it, plus dump, file and line."""
    for t in contents.threads:
        assert set(t) == {"dump", "file", "line", "thread_id", "title", "forum", "url", "tags", "human",
                          "characters", "posts"}
        assert t["dump"] == contents.dump and isinstance(t["line"], int) and t["line"] >= 1
        assert validate_thread(t) == {k: v for k, v in t.items() if k not in ("dump", "file", "line")}
    assert contents.lines == len(contents.threads) + len(contents.rejects)


def b64(obj: dict) -> str:
    return base64.b64encode(json.dumps(obj).encode("utf-8")).decode("ascii")


def png_card(path: Path, **chunks: str) -> Path:
    info = PngInfo()
    for keyword, text in chunks.items():
        info.add_text(keyword, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "white").save(path, pnginfo=info)
    return path


def v2(name: str, **fields) -> dict:
    data = {"name": name, "description": "", "personality": "", "scenario": "", "first_mes": "Hello!",
            "mes_example": "<START>\n{{char}}: hi", "creator_notes": "never in a prompt", "system_prompt": "",
            "post_history_instructions": "", "alternate_greetings": [], "tags": [], "creator": "someone",
            "character_version": "1", "extensions": {}, **fields}
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def v3(name: str, **fields) -> dict:
    card = v2(name, **fields)
    card.update(spec="chara_card_v3", spec_version="3.0")
    card["data"]["group_only_greetings"] = []
    return card


def write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n", "utf-8")
    return path


GROUP_CHAT = "Lantern Inn - 2024-01-15@12h00m00s"
SOLO_CHAT = "Seraphina - 2024-02-01@09h00m00s"
GROUP_MESSAGES = [
    {"name": "Ash", "is_user": True, "is_system": False, "send_date": "January 15, 2024 12:30pm",
     "mes": "Ash sets down his pack. \"Rooms for three?\"", "extra": {}, "force_avatar": "User Avatars/ash.png"},
    {"name": "Mira Vell", "is_user": False, "is_system": False, "send_date": 1705321845123,
     "mes": "Mira slides a key across the bar.", "original_avatar": "Mira.png", "extra": {"api": "openai"},
     "swipes": ["Mira ignores him.", "Mira slides a key across the bar.", "Mira laughs at the pack."], "swipe_id": 1,
     "swipe_info": [{}, {}, {}]},
    {"name": "Narrator", "is_user": False, "is_system": True, "send_date": 1705321850000,
     "mes": "[Ash is now a guest of the inn]", "extra": {"type": "narrator"}},
    {"name": "Dorn Hale", "is_user": False, "is_system": False, "send_date": "2024-01-15T12:31:00Z",
     "mes": "Dorn grunts from the corner.", "original_avatar": "Dorn.json", "extra": {},
     "swipes": ["Dorn grunts from the corner."], "swipe_id": 0},
    {"name": "Keri Wolf", "is_user": False, "is_system": False, "send_date": "2024-1-15@12h32m00s",
     "mes": "Keri counts the coins twice.", "original_avatar": "Keri.png", "extra": {}},
]


def golden_group_posts() -> list[dict]:
    return [
        {"post_id": "1", "author": "st-user", "character": "Ash",
         "text": "Ash sets down his pack. \"Rooms for three?\"", "posted_at": "2024-01-15T12:30:00", "kind": "ic"},
        {"post_id": "2", "author": "Mira.png", "character": "Mira Vell", "text": "Mira slides a key across the bar.",
         "posted_at": "2024-01-15T12:30:45.123Z", "kind": "ic"},
        {"post_id": "3", "author": "st-narrator", "character": None, "text": "[Ash is now a guest of the inn]",
         "posted_at": "2024-01-15T12:30:50Z", "kind": "narrator"},
        {"post_id": "4", "author": "Dorn.json", "character": "Dorn Hale", "text": "Dorn grunts from the corner.",
         "posted_at": "2024-01-15T12:31:00Z", "kind": "ic"},
        {"post_id": "5", "author": "Keri.png", "character": "Keri Wolf", "text": "Keri counts the coins twice.",
         "posted_at": "2024-01-15T12:32:00", "kind": "ic"},
    ]


ASH = {"name": "Ash", "player": "st-user", "sheet": None, "aliases": []}


@pytest.fixture
def st_export(tmp_path) -> Path:
    """A SillyTavern data folder: one group with its chat, one solo chat, four cards, two broken files."""
    root = tmp_path / "inbox" / "st_export"
    write_lines(root / "groups" / "1705320000000.json", [{
        "id": "1705320000000", "name": "The Lantern Inn", "members": ["Mira.png", "Dorn.json", "Keri.png"],
        "avatar_url": "", "allow_self_responses": False, "activation_strategy": 0, "generation_mode": 0,
        "disabled_members": [], "chat_metadata": {}, "fav": False, "chat_id": GROUP_CHAT, "chats": [GROUP_CHAT]}])
    write_lines(root / "group chats" / f"{GROUP_CHAT}.jsonl", GROUP_MESSAGES)
    write_lines(root / "group chats" / "Broken chat.jsonl", [
        GROUP_MESSAGES[0], '{"name": "Mira Vell", "is_user": false, "mes": "cut off', GROUP_MESSAGES[3]])
    write_lines(root / "chats" / "Seraphina" / f"{SOLO_CHAT}.jsonl", [
        {"user_name": "Ash", "character_name": "Seraphina", "create_date": "2024-02-01@09h00m00s",
         "chat_metadata": {"integrity": "abc"}},
        {"name": "Seraphina", "is_user": False, "send_date": "February 1, 2024 9:00am",
         "mes": "Seraphina smiles. \"You found the glade.\""},
        {"name": "Ash", "is_user": True, "send_date": "February 1, 2024 9:01am", "mes": "Ash bows."},
    ])
    png_card(root / "characters" / "Mira.png", chara=b64(v2(
        "Mira Vell", description="{{char}} runs the Lantern Inn and owes {{user}} a favour.",
        personality="shrewd, warm", scenario="{{User}} arrives at <BOT>'s inn after dark.")))
    write_lines(root / "characters" / "Dorn.json", [v2("Dorn Hale", description="A retired caravan guard.",
                                                       personality="gruff; loyal to {{char}}'s friends")])
    png_card(root / "characters" / "Keri.png",
             chara=b64(v2("Keri (old card)", description="Outdated V2 text.")),
             ccv3=b64(v3("Keri Wolf", description="{{char}} guards the road for <USER>.")))
    write_lines(root / "characters" / "Seraphina.json", [{
        "name": "Seraphina", "description": "<BOT> tends the glade; she greets <user> warmly.", "personality": "",
        "scenario": "A quiet forest.", "first_mes": "Welcome.", "mes_example": ""}])
    png_card(root / "characters" / "Broken.png", chara="%%% not base64 json %%%")
    png_card(root / "backgrounds" / "tavern.png")  # an ordinary image: not a card, not a dump problem
    write_lines(root / "settings.json", [{"power_user": {"persona_descriptions": {}}}])
    return root


def test_sillytavern_export_golden(st_export):
    assert detect_layout(st_export) == "sillytavern"
    contents = read_dump(st_export)
    assert contents.layout == "sillytavern"
    # thread_id: the chat's path in the dump without `.jsonl`; the card's scenario is not a sheet fact;
    # the narrator's message is a narrator post; the persona (is_user) is the thread's human and in the roster.
    assert contents.threads == [
        {"dump": "st_export", "file": f"chats/Seraphina/{SOLO_CHAT}.jsonl", "line": 2,
         "thread_id": f"chats/Seraphina/{SOLO_CHAT}", "title": None, "forum": "sillytavern", "url": None,
         "tags": [], "human": "Ash",
         "characters": [{"name": "Seraphina", "player": "Seraphina.json",
                         "sheet": "Seraphina tends the glade; she greets Ash warmly.", "aliases": []}, ASH],
         "posts": [
             {"post_id": "2", "author": "Seraphina.json", "character": "Seraphina",
              "text": "Seraphina smiles. \"You found the glade.\"", "posted_at": "2024-02-01T09:00:00", "kind": "ic"},
             {"post_id": "3", "author": "st-user", "character": "Ash", "text": "Ash bows.",
              "posted_at": "2024-02-01T09:01:00", "kind": "ic"},
         ]},
        {"dump": "st_export", "file": f"group chats/{GROUP_CHAT}.jsonl", "line": 1,
         "thread_id": f"group chats/{GROUP_CHAT}", "title": "The Lantern Inn", "forum": "sillytavern",
         "url": None, "tags": [], "human": "Ash",
         "characters": [
             {"name": "Mira Vell", "player": "Mira.png",
              "sheet": "Mira Vell runs the Lantern Inn and owes Ash a favour.\n\nPersonality: shrewd, warm",
              "aliases": []},
             {"name": "Dorn Hale", "player": "Dorn.json",
              "sheet": "A retired caravan guard.\n\nPersonality: gruff; loyal to Dorn Hale's friends", "aliases": []},
             {"name": "Keri Wolf", "player": "Keri.png", "sheet": "Keri Wolf guards the road for Ash.", "aliases": []},
             ASH,
         ],
         "posts": golden_group_posts()},
    ]
    assert contents.system_messages == 1
    by_reason = {r["reason"]: r for r in contents.rejects}
    assert sorted(by_reason) == ["invalid_card", "invalid_json"]
    bad_chat = by_reason["invalid_json"]
    assert bad_chat["line"] == 2 and bad_chat["thread_id"] == "group chats/Broken chat"
    assert bad_chat["file"] == "group chats/Broken chat.jsonl"
    assert bad_chat["detail"].startswith("st_export/group chats/Broken chat.jsonl:2: invalid JSON")
    assert by_reason["invalid_card"]["detail"].startswith("st_export/characters/Broken.png: unreadable card")
    assert by_reason["invalid_card"]["file"] == "characters/Broken.png"
    assert contents.lines == 4
    assert_st_canonical(contents)


def test_only_the_chosen_swipe_is_a_turn(st_export):
    texts = [p["text"] for t in read_dump(st_export).threads for p in t["posts"]]
    assert "Mira slides a key across the bar." in texts
    assert not {"Mira ignores him.", "Mira laughs at the pack."} & set(texts)


def test_unreadable_card_keeps_the_chat(st_export):
    (st_export / "characters" / "Dorn.json").write_text('{"spec": "chara_card_v2", "data": ', "utf-8")
    contents = read_dump(st_export)
    lantern = next(t for t in contents.threads if t["thread_id"] == f"group chats/{GROUP_CHAT}")
    assert [c["name"] for c in lantern["characters"]] == ["Mira Vell", "Keri Wolf", "Ash"]
    assert lantern["posts"] == golden_group_posts()
    dorn = [r for r in contents.rejects if "Dorn.json" in r["detail"]]
    assert [r["reason"] for r in dorn] == ["invalid_card"]
    assert_st_canonical(contents)


def test_a_sillytavern_chat_saved_as_jsonl_is_not_read_as_canonical(tmp_path):
    group = write_lines(tmp_path / "lantern.jsonl", GROUP_MESSAGES)
    assert detect_layout(group) == "sillytavern"
    contents = read_dump(group)
    assert contents.threads == [{"dump": "lantern.jsonl", "file": "lantern.jsonl", "line": 1, "thread_id": "lantern",
                                 "title": None, "forum": "sillytavern", "url": None, "tags": [], "human": "Ash",
                                 "characters": [ASH], "posts": golden_group_posts()}]
    assert not contents.rejects and contents.system_messages == 1

    solo = write_lines(tmp_path / "solo.jsonl", [{"user_name": "Ash", "character_name": "Seraphina",
                                                 "chat_metadata": {}}, {"name": "Seraphina", "mes": "Hi."}])
    assert detect_layout(solo) == "sillytavern"
    [only] = read_dump(solo).threads
    assert only["line"] == 2 and [p["text"] for p in only["posts"]] == ["Hi."]

    packed = tmp_path / "packed.jsonl.gz"
    packed.write_bytes(gzip.compress(group.read_bytes()))
    assert detect_layout(packed) == "sillytavern"
    assert read_dump(packed).threads[0]["posts"] == golden_group_posts()


def test_malformed_message_rejects_its_chat_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", [GROUP_MESSAGES[0], {"name": "Mira Vell", "is_user": False},
                                                 GROUP_MESSAGES[1]])
    contents = read_dump(path)
    assert not contents.threads
    [reject] = contents.rejects
    assert (reject["line"], reject["reason"]) == (2, "invalid_thread")
    assert reject["detail"] == "chat.jsonl:2: message has no 'mes' text"
    assert contents.lines == 1


def test_cards_v1_v2_v3_and_png_chunks(tmp_path):
    v1 = write_lines(tmp_path / "v1.json", [{"name": "Yara", "description": "{{char}} meets {{user}}.",
                                            "personality": "", "scenario": "", "first_mes": "", "mes_example": ""}])
    card = read_card(v1)
    assert (card.name, card.spec) == ("Yara", "v1")
    assert card_sheet(card) == "Yara meets {{user}}."  # no persona known: left as is
    assert card_sheet(card, "Ash") == "Yara meets Ash."

    chara_png = png_card(tmp_path / "mira.png", chara=b64(v2("Mira Vell", personality="shrewd")))
    card = read_card(chara_png)
    assert (card.name, card.spec, card.file) == ("Mira Vell", "chara_card_v2", "mira.png")
    assert card_sheet(card) == "Personality: shrewd"

    both = png_card(tmp_path / "keri.png", chara=b64(v2("Keri (old)", description="old")),
                    ccv3=b64(v3("Keri Wolf", description="new")))
    card = read_card(both)
    assert (card.name, card.spec, card.description) == ("Keri Wolf", "chara_card_v3", "new")

    broken_v3 = png_card(tmp_path / "fallback.png", chara=b64(v2("Fen Marsh")), ccv3="not base64 at all!")
    assert read_card(broken_v3).name == "Fen Marsh"


def test_card_chunk_after_the_image_data_is_found(tmp_path):
    """SillyTavern inserts its chunk just before IEND, after the pixels (Pillow writes it before)."""
    import struct
    import zlib

    plain = png_card(tmp_path / "plain.png").read_bytes()
    body = b"chara\0" + b64(v2("Ilse Varo", scenario="A ship at dawn.")).encode("ascii")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = plain.rindex(b"IEND") - 4
    late = tmp_path / "late.png"
    late.write_bytes(plain[:iend] + chunk + plain[iend:])
    card = read_card(late)
    assert (card.name, card.scenario) == ("Ilse Varo", "A ship at dawn.")
    assert card_sheet(card) is None  # a scenario is not a fact about the character


def test_unreadable_group_keeps_its_chats_without_title(st_export):
    (st_export / "groups" / "1705320000000.json").write_text("{broken", "utf-8")
    contents = read_dump(st_export)
    lantern = next(t for t in contents.threads if t["thread_id"] == f"group chats/{GROUP_CHAT}")
    assert lantern["title"] is None and lantern["posts"] == golden_group_posts()
    # Members are still found through the messages' original_avatar.
    assert [c["player"] for c in lantern["characters"]] == ["Mira.png", "Dorn.json", "Keri.png", "st-user"]
    [group] = [r for r in contents.rejects if r["reason"] == "invalid_group"]
    assert group["detail"].startswith("st_export/groups/1705320000000.json: unreadable group")
    assert_st_canonical(contents)


def test_send_date_forms():
    assert parse_send_date(1705321845123) == "2024-01-15T12:30:45.123Z"
    assert parse_send_date("January 15, 2024 12:30pm") == "2024-01-15T12:30:00"
    assert parse_send_date("2024-1-15@12h30m45s") == "2024-01-15T12:30:45"
    assert parse_send_date("2024-01-15T12:30:45.000Z") == "2024-01-15T12:30:45Z"
    assert parse_send_date("the day after the storm") == "the day after the storm"
    assert parse_send_date(None) is None


def test_a_folder_that_is_not_an_export_fails_naming_it(tmp_path):
    folder = tmp_path / "holiday photos"
    folder.mkdir()
    png_card(folder / "beach.png")
    with pytest.raises(DumpReadError, match="holiday photos.*not a SillyTavern export"):
        read_dump(folder)


# ---------------------------------------------------------------------------------------------------
# Inbox, fingerprints, and the native layout


def test_find_dumps_lists_every_kind_and_export_folders(tmp_path, st_export):
    inbox = st_export.parent
    for name in ["b.csv", "c.tsv", "d.parquet", "e.jsonl", "f.jsonl.gz", "g.CSV", "h.tsv.gz", "notes.txt",
                 ".DS_Store"]:
        (inbox / name).write_text("")
    (inbox / ".hidden").mkdir()
    assert [p.name for p in find_dumps(inbox)] == ["b.csv", "c.tsv", "d.parquet", "e.jsonl", "f.jsonl.gz", "g.CSV",
                                                   "h.tsv.gz", "st_export"]


def test_dump_digest_fingerprints_files_and_folders(tmp_path, st_export):
    table = write_delimited(tmp_path / "t.csv", HEADER, ROWS, ",")
    assert dump_digest(table) == hashlib.sha256(table.read_bytes()).hexdigest()
    before = dump_digest(st_export)
    assert before == dump_digest(st_export) and len(before) == 64
    chat = st_export / "group chats" / f"{GROUP_CHAT}.jsonl"
    chat.write_text(chat.read_text("utf-8") + "\n", "utf-8")
    edited = dump_digest(st_export)
    assert edited != before
    chat.rename(chat.with_name("renamed.jsonl"))
    assert dump_digest(st_export) not in (before, edited)


def test_canonical_jsonl_reads_exactly_as_before(tmp_path):
    path = write_jsonl(tmp_path / "native.jsonl", [thread("a", 2, 6), thread("b", 3, 7)], {1: "{not json"})
    assert detect_layout(path) == "canonical_jsonl"
    contents = read_dump(path)
    direct = read_canonical_jsonl(path)
    assert contents.threads == direct.threads and contents.rejects == direct.rejects
    assert [t["thread_id"] for t in contents.threads] == ["a", "b"]
    assert contents.threads[0]["posts"][0] == {**thread("a", 2, 6)["posts"][0], "kind": "ic"}
    assert contents.rejects[0]["detail"].startswith("native.jsonl:2: invalid JSON")
    assert contents.layout == "canonical_jsonl" and contents.lines == 3
    assert_canonical(contents)

"""The SillyTavern importer on data folders shaped as SillyTavern writes them (`st_fixtures`).

Both layouts: 1.12 (`public/...`, headers naming the persona) and current (`data/default-user/...`,
`user_name: "unused"` headers). Then hostile input: broken cards, long lines, broken streams, deep JSON.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from gcrp_assets.lib.ingest import lines
from gcrp_assets.lib.ingest.contract import DumpReadError, validate_thread
from gcrp_assets.lib.ingest.dumps import detect_layout, read_dump
from gcrp_assets.lib.ingest import cards as card_lib
from gcrp_assets.lib.prompts.sheets import SheetTemplate, parse_sheet
from gcrp_assets_tests import st_fixtures as st

LAYOUTS = ["1.12", "current"]


@pytest.fixture(params=LAYOUTS)
def folder(request, tmp_path) -> st.STFolder:
    return st.build_data_folder(tmp_path, request.param)


def by_id(contents) -> dict[str, dict]:
    return {t["thread_id"]: t for t in contents.threads}


def assert_accounted(contents):
    """Every record ended as one thread or one reject, each exactly what `validate_thread` makes of it."""
    assert contents.lines == len(contents.threads) + len(contents.rejects)
    for t in contents.threads:
        assert set(t) == {"dump", "file", "line", "thread_id", "title", "forum", "url", "tags", "human",
                          "characters", "posts"}
        assert validate_thread(t) == {k: v for k, v in t.items() if k not in ("dump", "file", "line")}
    for r in contents.rejects:
        assert r["file"] and r["detail"].startswith(f"{contents.dump}/{r['file']}")


# ---------------------------------------------------------------------------------------------------
# A real data folder


def test_every_chat_is_one_record_and_nothing_else_is_read(folder):
    assert detect_layout(folder.path) == "sillytavern"
    contents = read_dump(folder.path)
    assert_accounted(contents)
    assert not contents.rejects  # no backup, thumbnail (JPEG named .png), sprite or avatar is a reject
    assert {t["thread_id"]: t["file"] for t in contents.threads} == {
        tid: rel for tid, rel in folder.chat_files.items()}
    assert contents.lines == 6
    assert contents.rows == 9 + 2 + 2 + 1 + 7 + 3  # message lines, headers not counted
    assert contents.system_messages == 6  # 3 narrations, 1 comment, 1 "Group chat created", 1 hidden
    read = {t["file"] for t in contents.threads}
    assert not read & set(folder.backups + folder.thumbnails + folder.other)


def test_thread_ids_are_paths_in_the_dump_and_groups_match_by_stem(folder):
    threads = by_id(read_dump(folder.path))
    assert len(threads) == 6
    ada_main, bram_main = folder.thread_id("chats", "Ada", st.COLLIDING), folder.thread_id("chats", "Bram", st.COLLIDING)
    assert threads[ada_main]["posts"][0]["text"] == st.ADA_MAIN
    assert threads[bram_main]["posts"][0]["text"] == st.BRAM_MAIN
    assert [c["name"] for c in threads[bram_main]["characters"]] == [st.BRAM, st.PERSONA]
    for chat in (st.GROUP_CHAT_1, st.GROUP_CHAT_2):
        thread = threads[folder.thread_id("group chats", chat)]
        assert thread["title"] == st.GROUP_NAME
        assert [c["player"] for c in thread["characters"]] == [st.ADA_FILE, st.BRAM_FILE, st.CORA_FILE, "st-user"]
    assert threads[folder.thread_id("chats", "Ada", st.ADA_SOLO)]["title"] is None


def test_the_human_is_the_is_user_persona_once_renamed_or_not(folder):
    threads = by_id(read_dump(folder.path))
    for thread in threads.values():
        names = Counter(c["name"] for c in thread["characters"])
        speaks = any(p["author"] == "st-user" for p in thread["posts"])
        assert thread["human"] == (st.PERSONA if speaks else None)
        assert names[st.PERSONA] == (1 if speaks else 0) and max(names.values()) == 1
        assert not {"System", "SillyTavern System", "Note", "The Tavern", "unused"} & set(names)
        assert not {"System", "SillyTavern System", "Note", "The Tavern", st.PERSONA_OLD} & {
            p["character"] for p in thread["posts"]}
        for character in thread["characters"]:
            if character["player"] == "st-user":
                assert character["name"] == st.PERSONA and character["sheet"] == st.PERSONA_SHEET
    ada = threads[folder.thread_id("chats", "Ada", st.ADA_SOLO)]
    persona = next(c for c in ada["characters"] if c["player"] == "st-user")
    assert persona["aliases"] == [st.PERSONA_OLD]  # renamed mid-chat: one character, two names
    assert [p["character"] for p in ada["posts"] if p["author"] == "st-user"] == [st.PERSONA] * 3


def test_a_placeholder_header_never_names_anyone(folder):
    threads = by_id(read_dump(folder.path))
    cora = threads[folder.thread_id("chats", "Cora", st.CORA_SOLO)]
    assert cora["human"] is None and [c["name"] for c in cora["characters"]] == [st.CORA]
    # Only the 1.12 header names the persona; "unused" is never taken for a name.
    user = st.PERSONA if folder.header == "1.12" else "{{user}}"
    assert cora["characters"][0]["sheet"] == st.CORA_SHEET_AS.format(user=user)
    assert "unused" not in json.dumps(list(threads.values()))


def test_narration_and_notes_are_narrator_posts_and_program_messages_are_skipped(folder):
    threads = by_id(read_dump(folder.path))
    narrator = [(t["thread_id"].rsplit("/", 1)[-1], p["text"]) for t in threads.values() for p in t["posts"]
                if p["kind"] == "narrator"]
    assert narrator == [(st.ADA_SOLO, st.NARRATION_1), (st.ADA_SOLO, st.COMMENT), (st.GROUP_CHAT_1, st.NARRATION_2),
                        (st.GROUP_CHAT_2, st.NARRATION_3)]
    for thread in threads.values():
        for post in thread["posts"]:
            if post["kind"] == "narrator":
                assert post["author"] == "st-narrator" and post["character"] is None
            else:
                assert post["kind"] == "ic" and post["character"]
    texts = [p["text"] for t in threads.values() for p in t["posts"]]
    assert st.GROUP_CREATED not in texts
    assert st.ADA_HIDDEN not in texts  # hidden with /hide: out of SillyTavern's prompt and export, skipped


def test_text_is_kept_exactly_and_only_the_chosen_swipe(folder):
    threads = by_id(read_dump(folder.path))
    ada = threads[folder.thread_id("chats", "Ada", st.ADA_SOLO)]
    assert [(p["post_id"], p["author"], p["character"], p["text"]) for p in ada["posts"]] == [
        ("2", st.ADA_FILE, st.ADA, st.ADA_GREETING),
        ("3", "st-user", st.PERSONA, st.WREN_1),
        ("4", st.ADA_FILE, st.ADA, st.ADA_REPLY),
        ("5", "st-narrator", None, st.NARRATION_1),
        ("6", "st-user", st.PERSONA, st.WREN_2),
        ("7", "st-narrator", None, st.COMMENT),
        ("9", "st-user", st.PERSONA, st.WREN_3),
        ("10", st.ADA_FILE, st.ADA, st.ADA_PICTURE),
    ]
    assert ada["line"] == 2 and ada["posts"][0]["posted_at"] == "2024-01-15T12:30:00"
    group = threads[folder.thread_id("group chats", st.GROUP_CHAT_1)]
    assert [p["text"] for p in group["posts"]] == [st.ADA_GROUP_GREETING, st.BRAM_GREETING, st.WREN_GROUP,
                                                   st.CORA_REPLY, st.NARRATION_2, st.BRAM_REPLY]
    assert [p["author"] for p in group["posts"]] == [st.ADA_FILE, st.BRAM_FILE, "st-user", st.CORA_FILE,
                                                     "st-narrator", st.BRAM_FILE]
    texts = {p["text"] for t in threads.values() for p in t["posts"]}
    assert not {st.ADA_GREETING_ALT, st.ADA_REPLY_SWIPE, *st.CORA_SWIPES[:2]} & texts


def test_card_sheets_hold_the_characters_facts_in_template_sections(folder):
    threads = by_id(read_dump(folder.path))
    group = threads[folder.thread_id("group chats", st.GROUP_CHAT_1)]
    sheets = {c["name"]: c["sheet"] for c in group["characters"]}
    assert sheets == {st.ADA: st.ADA_SHEET, st.BRAM: st.BRAM_SHEET, st.CORA: st.CORA_SHEET_AS.format(user=st.PERSONA),
                      st.PERSONA: st.PERSONA_SHEET}
    everything = json.dumps([c for t in threads.values() for c in t["characters"]])
    for instruction in st.INSTRUCTIONS:
        assert instruction not in everything, instruction
    assert "Description:" not in everything
    assert "Bram (old card)" not in everything and "Not A Card Sprite" not in everything
    template = SheetTemplate.load()
    ada = parse_sheet(sheets[st.ADA], template, st.ADA)
    assert "Appearance" not in ada  # a prose description is free text, not a look
    assert ada["Other Information"].startswith("Ada Quill is the innkeeper of the Lantern Inn.")
    assert "Personality: Warm, shrewd, quick to laugh." in ada["Other Information"]
    bram = parse_sheet(sheets[st.BRAM], template, st.BRAM)
    assert (bram["Age"], bram["Race"], bram["Occupation/Profession"]) == ("52", "Human", "Retired caravan guard")
    assert bram["Appearance"] == "Broad shoulders, a grey beard, a limp in the left leg."
    assert "Lore: Bram lost his brother on the northern road." in bram["Other Information"]


def test_backups_and_thumbnails_alone_are_not_an_export(tmp_path):
    built = st.build_data_folder(tmp_path, "current")
    for rel in list(built.chat_files.values()) + ["data/default-user/groups", "data/default-user/characters",
                                                  "data/default-user/settings.json"]:
        target = built.path / rel
        if target.is_dir():
            for child in sorted(target.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            target.rmdir()
        else:
            target.unlink()
    with pytest.raises(DumpReadError, match="not a SillyTavern export"):
        detect_layout(built.path)


def test_two_users_of_one_install_keep_their_groups_and_cards_apart(tmp_path):
    built = st.build_data_folder(tmp_path, "current")
    other = built.path / "data" / "alice"
    other.mkdir()
    (other / "characters").mkdir()
    (other / "characters" / st.ADA_FILE).write_bytes(st.png_bytes(chara=st.b64(st.card("Ada (Alice's)"))))
    st.write_chat(other / "group chats" / f"{st.GROUP_CHAT_1}.jsonl", [
        st.member("Ada (Alice's)", st.ADA_FILE, "Hello from Alice's Ada.", "January 16, 2024 9:00pm")])
    threads = by_id(read_dump(built.path))
    alice = threads[f"data/alice/group chats/{st.GROUP_CHAT_1}"]
    assert alice["title"] is None  # Alice has no group; default-user's group lists the same stem
    assert [c["name"] for c in alice["characters"]] == ["Ada (Alice's)"]
    assert threads[f"data/default-user/group chats/{st.GROUP_CHAT_1}"]["title"] == st.GROUP_NAME


# ---------------------------------------------------------------------------------------------------
# Hostile input: every problem is a reject naming file (and line); the rest of the dump is read


def flat_export(tmp_path: Path, cards: dict[str, bytes]) -> Path:
    """A flat folder: one group chat naming each card file as a speaker, and the card files."""
    root = tmp_path / "hostile"
    lines = [st.member(f"Speaker {i}", name, f"Line {i}.", "January 16, 2024 9:00pm") for i, name in enumerate(cards)]
    st.write_chat(root / "group chats" / "chat.jsonl", lines)
    (root / "characters").mkdir(parents=True)
    for name, data in cards.items():
        (root / "characters" / name).write_bytes(data)
    return root


def raw_chunk(text: bytes) -> bytes:
    """A PNG whose `chara` tEXt chunk holds these exact bytes."""
    import struct
    import zlib

    plain = st.png_bytes()
    body = b"chara\0" + text
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = plain.rindex(b"IEND") - 4
    return plain[:iend] + chunk + plain[iend:]


def test_undecodable_card_chunks_are_invalid_card_rejects(tmp_path):
    deep = base64.b64encode(b"[" * 100_000 + b"]" * 100_000)
    huge_int = base64.b64encode(b'{"spec": "chara_card_v2", "data": {"name": "N", "x": ' + b"9" * 5000 + b"}}")
    root = flat_export(tmp_path, {
        "nonascii.png": raw_chunk("eyJuYW1lIjo\xe9\xff".encode("latin-1")),  # not ASCII: not base64
        "badb64.png": raw_chunk(b"e"),  # one base64 character: undecodable
        "notutf8.png": raw_chunk(base64.b64encode(b"\xff\xfe{")),
        "deep.png": raw_chunk(deep),
        "hugeint.png": raw_chunk(huge_int),
        "good.png": st.png_bytes(chara=st.b64(st.card("Good Card", description="Fine."))),
    })
    contents = read_dump(root)
    assert_accounted(contents)
    rejected = {r["file"]: r for r in contents.rejects}
    assert set(rejected) == {f"characters/{n}" for n in ("nonascii.png", "badb64.png", "notutf8.png", "deep.png",
                                                         "hugeint.png")}
    assert {r["reason"] for r in rejected.values()} == {"invalid_card"}
    [thread] = contents.threads
    assert [c["name"] for c in thread["characters"]] == ["Good Card"]
    assert len(thread["posts"]) == 6


def test_cards_over_the_size_limit_are_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(card_lib, "MAX_CARD_BYTES", 4096)
    big_chunk = st.png_bytes(chara=st.b64(st.card("Big", description="x" * 10_000)))
    root = flat_export(tmp_path, {"big.png": big_chunk, "ok.png": st.png_bytes(chara=st.b64(st.card("Ok")))})
    (root / "characters" / "big.json").write_text(json.dumps(st.card("Big JSON", description="y" * 10_000)))
    contents = read_dump(root)
    assert_accounted(contents)
    assert {(r["file"], r["reason"]) for r in contents.rejects} == {("characters/big.png", "record_too_large"),
                                                                    ("characters/big.json", "record_too_large")}
    assert [c["name"] for c in contents.threads[0]["characters"]] == ["Ok"]


def test_a_large_png_card_chunk_is_found_without_reading_the_image(tmp_path, monkeypatch):
    monkeypatch.setattr(card_lib, "MAX_CARD_BYTES", 1 << 20)
    import struct
    import zlib

    plain = raw_chunk(st.b64(st.card("Late Card")).encode("ascii"))
    idat = b"\0" * (2 << 20)  # a 2 MiB chunk of image data that must be skipped, not read
    filler = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    path = tmp_path / "late.png"
    path.write_bytes(plain[:33] + filler + plain[33:])
    assert card_lib.read_card(path).name == "Late Card"


def write_chat_bytes(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines))
    return path


def test_chat_lines_that_cannot_be_read_reject_their_chat_naming_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(lines, "MAX_RECORD_BYTES", 300_000)
    good = json.dumps(st.persona(st.PERSONA, "Hello.", "January 1, 2024 1:00pm")).encode()
    root = tmp_path / "hostile"
    write_chat_bytes(root / "chats" / "A" / "long.jsonl", [good, good, json.dumps(
        st.mes("A", "x" * 400_000, "January 1, 2024 1:01pm")).encode()])
    write_chat_bytes(root / "chats" / "A" / "deep.jsonl", [good, b"[" * 100_000 + b"]" * 100_000])
    write_chat_bytes(root / "chats" / "A" / "hugeint.jsonl", [good, good, b'{"mes": "a", "name": "A", "x": '
                                                              + b"9" * 5000 + b"}"])
    write_chat_bytes(root / "chats" / "A" / "notutf8.jsonl", [good, b'{"mes": "\xff", "name": "A"}'])
    packed = gzip.compress(b"\n".join([good] * 200))
    (root / "chats" / "A" / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    write_chat_bytes(root / "chats" / "A" / "fine.jsonl", [good])
    contents = read_dump(root)
    assert_accounted(contents)
    got = {r["file"]: (r["line"], r["reason"], r["thread_id"]) for r in contents.rejects}
    assert got == {
        "chats/A/long.jsonl": (3, "record_too_large", "chats/A/long"),
        "chats/A/deep.jsonl": (2, "invalid_json", "chats/A/deep"),
        "chats/A/hugeint.jsonl": (3, "invalid_json", "chats/A/hugeint"),
        "chats/A/notutf8.jsonl": (2, "not_utf8", "chats/A/notutf8"),
        "chats/A/cut.jsonl.gz": (got["chats/A/cut.jsonl.gz"][0], "truncated", "chats/A/cut"),
    }
    for r in contents.rejects:
        assert r["detail"].startswith(f"hostile/{r['file']}:{r['line']}: ")
    assert [t["thread_id"] for t in contents.threads] == ["chats/A/fine"]


def test_a_compression_bomb_chat_stops_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(lines, "MAX_RECORD_BYTES", 4096)
    monkeypatch.setattr(lines, "MAX_EXPANSION_RATIO", 5)  # the real ratio (200x) needs a bigger bomb
    line = json.dumps(st.persona(st.PERSONA, "Hello.", "January 1, 2024 1:00pm")).encode()
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join([line] * 5000), compresslevel=9))
    contents = read_dump(path)
    [reject] = contents.rejects
    assert (reject["reason"], reject["file"], reject["thread_id"]) == ("decompression_limit", "bomb.jsonl.gz", "bomb")
    assert contents.lines == 1 and not contents.threads


# ---------------------------------------------------------------------------------------------------
# Pieces


def test_instructions_to_the_model_are_stripped_and_facts_kept():
    text = ("{{// for the v2 release }}{{char}} is a healer.\n"
            "[System note: Use vivid prose.]\n"
            "She fears fire. (OOC: don't kill her off) She loves tea.\n"
            "OOC: reply in 2 paragraphs\n"
            "<!-- hidden -->((this bot is WIP))\n"
            "<START>\n"
            "[Note to AI: never end the scene]Age: 30")
    assert card_lib.strip_instructions(text) == "{{char}} is a healer.\nShe fears fire. She loves tea.\nAge: 30"
    card = card_lib.Card("x.png", "Mira Vell", description=text, personality="{{user}}'s rival",
                         scenario="{{user}} meets {{char}}.",
                         book=(card_lib.BookEntry(("Mira",), "Mira was born in the north."),
                               card_lib.BookEntry(("{{char}}",), "{{char}} hums when nervous."),
                               card_lib.BookEntry(("Vell",), "The Vells are merchants."),
                               card_lib.BookEntry(("north",), "The north is cold."),
                               card_lib.BookEntry(("Mira",), "Off.", enabled=False)))
    assert card_lib.card_sheet(card, "Ash") == (
        "Mira Vell is a healer.\nShe fears fire. She loves tea.\nAge: 30\n\nPersonality: Ash's rival\n\n"
        "Lore: Mira was born in the north.\n\nLore: Mira Vell hums when nervous.\n\n"
        "Lore: The Vells are merchants.")  # "Vell" is a word of her name


def test_a_chat_dropped_on_its_own_names_its_file_and_persona(tmp_path):
    path = st.write_chat(tmp_path / "Ada Quill - 2024-01-15@12h30m45s.jsonl", st.ada_solo_chat("current"))
    contents = read_dump(path)
    [thread] = contents.threads
    assert (thread["thread_id"], thread["file"], thread["human"]) == (
        "Ada Quill - 2024-01-15@12h30m45s", path.name, st.PERSONA)
    assert thread["characters"] == [{"name": st.PERSONA, "player": "st-user", "sheet": None,
                                     "aliases": [st.PERSONA_OLD]}]
    assert contents.system_messages == 3  # narration, comment, a hidden message
    broken = st.write_chat(tmp_path / "broken.jsonl", [st.persona(st.PERSONA, "Hi.", "January 1, 2024 1:00pm")])
    broken.write_text(broken.read_text() + '\n{"mes": ', "utf-8")
    [reject] = read_dump(broken).rejects
    assert (reject["file"], reject["line"], reject["reason"]) == ("broken.jsonl", 2, "invalid_json")


def test_persona_description_found_by_name_when_messages_carry_no_avatar(tmp_path):
    root = tmp_path / "flat"
    lines = [dict(st.persona(st.PERSONA, "Hi.", "January 1, 2024 1:00pm")), st.mes("Bob", "Yo.", "January 1, 2024")]
    del lines[0]["force_avatar"]
    st.write_chat(root / "chat.jsonl", lines)
    st.write_json(root / "settings.json", st.settings())
    [thread] = read_dump(root).threads
    assert thread["characters"] == [{"name": st.PERSONA, "player": "st-user", "sheet": st.PERSONA_SHEET,
                                     "aliases": []}]
    assert [p["author"] for p in thread["posts"]] == ["st-user", "Bob"]

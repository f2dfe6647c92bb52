"""Threads → SillyTavern data folder → the project's SillyTavern importer → the same threads."""

import json
from pathlib import Path

from gcrp_assets.lib.export.sillytavern_folder import export_samples, one_per_thread
from gcrp_assets.lib.hashing import sha256_tree
from gcrp_assets.lib.ingest.cards import read_card
from gcrp_assets.lib.ingest.contract import DumpContents
from gcrp_assets.lib.ingest.sillytavern import iter_sillytavern
from gcrp_assets.lib.prompts.samples import PromptOptions, build_samples, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate
from gcrp_assets_tests.test_sillytavern_presets import group_thread


def samples() -> list[dict]:
    """Two threads: the first with a marked human (three variants would be made without one), the second
    forum-style (no human marked: every character in turn, placeholder names) and a same-named character
    with another sheet."""
    first = build_samples(group_thread("t1"), SheetTemplate.load(), load_system_template(), options=PromptOptions())
    second_thread = dict(group_thread("t2"), human=None)
    second_thread["characters"] = [dict(c, sheet="Occupation: Smuggler") if c["name"] == "Ada" else c
                                   for c in second_thread["characters"]]
    second = build_samples(second_thread, SheetTemplate.load(), load_system_template(),
                           options=PromptOptions(user_character="each", names="placeholder"))
    return first + second


def test_round_trip_gives_the_same_threads(tmp_path):
    rows = samples()
    shown = one_per_thread(rows)
    assert [s["thread_id"] for s in shown] == ["t1", "t2"] and shown[1]["variant"] == 0
    export_samples(rows, tmp_path / "st")
    out = DumpContents(dump="st")
    found = [row for kind, row in iter_sillytavern(tmp_path / "st", out) if kind == "thread"]
    rejects = [row for kind, row in iter_sillytavern(tmp_path / "st", DumpContents(dump="st")) if kind == "reject"]
    assert rejects == [] and len(found) == 2
    index = {t["chat"].removesuffix(".jsonl"): t for t in json.loads((tmp_path / "st" / "gcrp-export.json").read_text())["threads"]}
    by_key = {s["thread_key"]: s for s in shown}
    for thread in found:
        sample = by_key[index[thread["thread_id"]]["thread_key"]]
        names = json.loads(sample["name_map"])
        sheets = json.loads(sample["sheets"])
        expected = [(names.get(t["name"], t["name"]), t["text"]) for t in sample["turns"]]
        assert [(p["character"], p["text"]) for p in thread["posts"]] == expected
        assert [p["kind"] for p in thread["posts"]] == ["narrator" if t["name"] is None else "ic"
                                                          for t in sample["turns"]]
        assert thread["human"] == sample["user_character"]
        assert thread["title"] == sample["thread_id"]
        roster = [c["name"] for c in thread["characters"]]
        others = list(dict.fromkeys(names.get(t["name"], t["name"]) for t in sample["turns"] if t["role"] == "model"))
        assert roster == others + [sample["user_character"]]  # group order = the training roster's order
        assert {c["name"]: c["sheet"] for c in thread["characters"]} == {n: sheets[n] for n in roster}
        human = next(c for c in thread["characters"] if c["name"] == thread["human"])
        assert human["player"] == "st-user"
    # Same name, other sheet: two cards.
    ada = sorted(read_card(p).description for p in (tmp_path / "st" / "characters").glob("Ada*.png"))
    assert len(ada) == 2 and ada[0] != ada[1]


def test_export_is_deterministic(tmp_path):
    export_samples(samples(), tmp_path / "a")
    export_samples(list(reversed(samples())), tmp_path / "b")  # one_per_thread picks the same samples
    assert sha256_tree(tmp_path / "a", ("**/*",)) != ""
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a.keys() == b.keys()
    export_samples(samples(), tmp_path / "c")
    c = {p.relative_to(tmp_path / "c"): p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert a == c


def test_cards_are_what_sillytavern_writes(tmp_path):
    export_samples(samples(), tmp_path)
    from gcrp_assets.lib.ingest.cards import read_png_text
    import base64
    path = tmp_path / "characters" / "Bram.png"
    with open(path, "rb") as handle:
        chunks = read_png_text(handle)
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    v3 = json.loads(base64.b64decode(chunks["ccv3"]))
    assert v2["spec"] == "chara_card_v2" and v3["spec"] == "chara_card_v3" and v3["spec_version"] == "3.0"
    assert v2["data"]["description"] == v2["description"] and v2["data"]["description"].startswith("**Character Name**: Bram")
    assert v2["data"]["first_mes"] == v2["data"]["mes_example"] == v2["data"]["system_prompt"] == ""
    group = json.loads(next((tmp_path / "groups").glob("*.json")).read_text())
    assert group["generation_mode"] == 1 and group["allow_self_responses"] is True
    chat = (tmp_path / group["chats"][0].join(["group chats/", ".jsonl"])).read_text().split("\n")
    header = json.loads(chat[0])
    assert header["user_name"] == header["character_name"] == "unused"
    assert header["chat_metadata"]["persona"] == group["chat_metadata"]["persona"]


def test_cli_exports_a_dumps_latest_samples(tmp_path, capsys):
    import dagster as dg

    from gcrp_assets.cli import _export_arguments, export_sillytavern
    from gcrp_assets.lib.parquet import write_table
    from gcrp_assets.lib.schemas import SAMPLES

    artifact = tmp_path / "augmented"
    artifact.mkdir()
    write_table(samples(), SAMPLES, artifact / "samples.parquet")
    with dg.DagsterInstance.ephemeral() as instance:
        assert export_sillytavern(instance, "d", tmp_path / "none") == 1  # nothing materialized yet
        instance.add_dynamic_partitions("dumps", ["d"])
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "augmented_prompts", partition="d", metadata={"path": dg.MetadataValue.path(str(artifact)),
                                                           "checks_passed": True}))
        assert _export_arguments(["--dump", "d", "--out", str(tmp_path / "st")]) == ("d", tmp_path / "st")
        assert export_sillytavern(instance, "d", tmp_path / "st") == 0
    assert "2 group chats" in capsys.readouterr().out
    assert len(list((tmp_path / "st" / "group chats").glob("*.jsonl"))) == 2
    assert _export_arguments(["--dump", "d", "--eval-split", "--out", "x"]) is None


def test_the_optional_asset_exports_a_dumps_samples_and_reuses_the_folder(tmp_path):
    import dagster as dg

    from gcrp_assets.defs.sillytavern_export import sillytavern_chats
    from gcrp_assets.lib.parquet import write_table
    from gcrp_assets.lib.schemas import SAMPLES
    from gcrp_assets.orchestration.resources import ArtifactStore

    artifact = tmp_path / "augmented"
    artifact.mkdir()
    write_table(samples(), SAMPLES, artifact / "samples.parquet")
    store = ArtifactStore(root=str(tmp_path / "art"))
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dumps", ["d"])
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "augmented_prompts", partition="d", metadata={"path": dg.MetadataValue.path(str(artifact)),
                                                           "data_version": "v1", "checks_passed": True}))
        runs = [dg.materialize([sillytavern_chats], instance=instance, partition_key="d", resources={"store": store})
                for _ in range(2)]
        events = [r.asset_materializations_for_node("sillytavern_chats")[0] for r in runs]
    first, again = (e.metadata for e in events)
    folder = Path(str(first["path"].value))
    assert folder.is_relative_to(tmp_path / "art" / "sillytavern_chats" / "d")
    assert first["group_chats"].value == 2 and len(list((folder / "group chats").glob("*.jsonl"))) == 2
    assert (first["cached"].value, again["cached"].value) == (False, True)
    assert again["path"].value == first["path"].value and again["data_version"] == first["data_version"]

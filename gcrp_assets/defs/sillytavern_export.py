"""sillytavern_chats: one dump's training samples as a SillyTavern data folder (`lib.export.sillytavern_folder`).

Optional: no automation condition and in no job, so it is built only when someone asks for it (the UI's
Materialize, or `dg launch --assets sillytavern_chats --partition <dump>`). The same export is
`python -m gcrp_assets.cli export-sillytavern --dump <dump> --out DIR`.
"""

from pathlib import Path

import dagster as dg

from gcrp_assets.lib.export.sillytavern_folder import export_samples
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, upstream
from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import ArtifactStore

EXPORT_CODE = code_version(__name__)


@dg.asset(group_name="data", kinds={"json"}, code_version=EXPORT_CODE, deps=["augmented_prompts"],
          partitions_def=dumps)
def sillytavern_chats(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    """The dump's threads as a SillyTavern data folder: a group and a group chat (current JSONL format) per
    thread, one V2/V3 card per character with its uniform sheet as the description, the human's character as
    a persona. Copy the folder's contents into SillyTavern's `data/<user>/` to read the training data and chat
    from it; importing the folder back through `raw_threads` gives the same threads."""
    dump = context.partition_key
    samples = upstream(context, "augmented_prompts", dump)
    inputs = {"code": EXPORT_CODE, "augmented_prompts": samples.data_version}

    def build(folder: Path) -> dict:
        summary = export_samples(read_rows(samples.path / "samples.parquet"), folder)
        return {"group_chats": summary.threads, "cards": summary.characters, "personas": summary.personas,
                "messages": summary.messages, "readme": dg.MetadataValue.path(str(folder / "README.md"))}

    built = build_or_reuse(context, lambda fp: store.dir_for("sillytavern_chats", fp, dump), inputs, build,
                           content_globs=("**/*",))
    return built.result()

"""Command line entry points (README command 1 uses `run`).

  python -m gcrp_assets.cli run [-c run.yaml]
                                           register every dump in the inbox as a partition, materialize each
                                           dump's data stages, then the training chain, each run launched
                                           through the instance from the code location `gcrp_assets` (as the
                                           web UI launches); print the report path. `-c`: run config (YAML,
                                           `ops: {<asset>: {config: ...}}`) for the whole chain
  python -m gcrp_assets.cli register       only register the inbox's dumps as partitions
  python -m gcrp_assets.cli report-path    print where the latest eval report is
  python -m gcrp_assets.cli export-sillytavern (--dump NAME | --eval-split) --out DIR
                                           write one dump's samples (augmented_prompts: its filtered threads with
                                           their uniform sheets) or the eval split (tokenized_parquet's
                                           eval_samples) as a SillyTavern data folder: a group chat per thread,
                                           a card per character, the human's persona (lib.export.sillytavern_folder)
"""

import sys
from pathlib import Path

import dagster as dg


def report_path(instance: dg.DagsterInstance) -> int:
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    if event is None or event.asset_materialization is None:
        print("no eval_report has been materialized in this instance yet", file=sys.stderr)
        return 1
    print(f"Eval report: {event.asset_materialization.metadata['report_path'].value}")
    return 0


def report_refused(inbox) -> None:
    """Say which inbox entries will not be registered: a link leading outside the inbox (or a folder holding
    one), a name that is not a safe partition key. `register_inbox` registers only what `find_dumps` lists,
    and `find_dumps` leaves these out (`gcrp_assets.lib.inbox`); they must not be missed silently."""
    from gcrp_assets.lib.ingest.contract import DumpReadError
    from gcrp_assets.lib.ingest.dumps import find_dumps

    try:
        find_dumps(inbox.folder(),
                   on_refused=lambda path, reason: print(f"not registered: {reason}", file=sys.stderr))
    except DumpReadError:
        pass  # no inbox: register_inbox says so


def export_sillytavern(instance: dg.DagsterInstance, dump: str | None, out: Path) -> int:
    """Export the latest materialized samples of `dump` (augmented_prompts), or of the eval split
    (tokenized_parquet) when `dump` is None, as a SillyTavern data folder in `out`."""
    from gcrp_assets.lib.export.sillytavern_folder import export_samples
    from gcrp_assets.lib.parquet import read_rows
    from gcrp_assets.orchestration.artifacts import CHECKS_PASSED, latest_materialization

    key, file = ("augmented_prompts", "samples.parquet") if dump else ("tokenized_parquet", "eval_samples.parquet")
    materialization = latest_materialization(instance, key, dump)
    if materialization is None:
        print(f"{key}{f' partition {dump!r}' if dump else ''} has not been materialized in this instance yet",
              file=sys.stderr)
        return 1
    passed = materialization.metadata.get(CHECKS_PASSED)
    if passed is not None and not passed.value:
        print(f"the latest {key} failed a blocking check; not exported", file=sys.stderr)
        return 1
    summary = export_samples(read_rows(Path(str(materialization.metadata["path"].value)) / file), out)
    print(f"SillyTavern data folder: {summary.folder} ({summary.threads} group chats, {summary.characters} cards, "
          f"{summary.personas} personas, {summary.messages} messages); see its README.md")
    return 0


def _export_arguments(args: list[str]) -> tuple[str | None, Path] | None:
    """(dump or None for the eval split, output folder) of `export-sillytavern`, None when invalid."""
    import argparse

    parser = argparse.ArgumentParser(prog="export-sillytavern", add_help=False, exit_on_error=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dump")
    source.add_argument("--eval-split", action="store_true")
    parser.add_argument("--out", required=True, type=Path)
    try:
        parsed, rest = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):
        return None
    return None if rest else (parsed.dump, parsed.out)


def _arguments(argv: list[str]) -> tuple[str, Path | None] | None:
    """(command, run config file) from the command line, None when it is not a valid one."""
    args = argv[1:]
    if args[:1] == ["run"] and len(args) == 3 and args[1] in ("-c", "--config"):
        return "run", Path(args[2])
    if len(args) == 1 and args[0] in ("run", "register", "report-path"):
        return args[0], None
    return None


def main(argv: list[str]) -> int:
    if argv[1:2] == ["export-sillytavern"]:
        export = _export_arguments(argv[2:])
        if export is None:
            print(__doc__, file=sys.stderr)
            return 2
        with dg.DagsterInstance.get() as instance:
            return export_sillytavern(instance, *export)
    parsed = _arguments(argv)
    if parsed is None:
        print(__doc__, file=sys.stderr)
        return 2
    command, config_file = parsed
    run_config = None
    if config_file is not None:
        import yaml

        run_config = yaml.safe_load(config_file.read_text()) or {}
    from gcrp_assets.orchestration.runner import inbox_of, launch_chain, register_inbox

    if command in ("run", "register"):
        inbox = inbox_of()
        report_refused(inbox)
    with dg.DagsterInstance.get() as instance:
        if command == "register":
            print("registered dump partitions:", ", ".join(register_inbox(instance, inbox)))
            return 0
        if command == "run":
            try:
                outcome = launch_chain(instance, run_config)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
            if not outcome.success:
                print(f"run {outcome.failed_run_id} failed; see `make dev` (the web UI) or the log above",
                      file=sys.stderr)
                return 1
        return report_path(instance)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Command line entry points (README command 1 uses `run`).

  python -m gcrp_assets.cli run            register every dump in the inbox as a partition, materialize each
                                           dump's data stages, then the training chain; print the report path
  python -m gcrp_assets.cli register       only register the inbox's dumps as partitions
  python -m gcrp_assets.cli report-path    print where the latest eval report is
"""

import sys

import dagster as dg


def report_path(instance: dg.DagsterInstance) -> int:
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    if event is None or event.asset_materialization is None:
        print("no eval_report has been materialized in this instance yet", file=sys.stderr)
        return 1
    print(f"Eval report: {event.asset_materialization.metadata['report_path'].value}")
    return 0


def report_refused(defs: dg.Definitions) -> None:
    """Say which inbox entries will not be registered: a link leading outside the inbox (or a folder holding
    one), a name that is not a safe partition key. `register_inbox` registers only what `find_dumps` lists,
    and `find_dumps` leaves these out (`gcrp_assets.lib.inbox`); they must not be missed silently."""
    from gcrp_assets.lib.ingest.contract import DumpReadError
    from gcrp_assets.lib.ingest.dumps import find_dumps

    try:
        find_dumps(defs.resources["inbox"].folder(),
                   on_refused=lambda path, reason: print(f"not registered: {reason}", file=sys.stderr))
    except DumpReadError:
        pass  # no inbox: register_inbox says so


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) == 2 else None
    if command not in ("run", "register", "report-path"):
        print(__doc__, file=sys.stderr)
        return 2
    from gcrp_assets.orchestration.runner import materialize_chain, register_inbox
    from gcrp_assets.definitions import defs

    if command in ("run", "register"):
        report_refused(defs)
    with dg.DagsterInstance.get() as instance:
        if command == "register":
            print("registered dump partitions:", ", ".join(register_inbox(instance, defs)))
            return 0
        if command == "run":
            outcome = materialize_chain(instance, defs)
            if not outcome.success:
                failed = next(r for r in outcome.results if not r.success)
                print(f"run {failed.run_id} failed; see `dagster dev` or the log above", file=sys.stderr)
                return 1
        return report_path(instance)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

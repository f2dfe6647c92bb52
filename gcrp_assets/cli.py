"""Small helpers for the command line: `python -m gcrp_assets.cli report-path`."""

import sys

import dagster as dg


def report_path() -> int:
    """Print where the latest eval report is, from the Dagster instance in $DAGSTER_HOME."""
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
        if event is None or event.asset_materialization is None:
            print("no eval_report has been materialized in this instance yet", file=sys.stderr)
            return 1
        path = event.asset_materialization.metadata["report_path"].value
        print(f"Eval report: {path}")
        return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["report-path"]:
        return report_path()
    print("usage: python -m gcrp_assets.cli report-path", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

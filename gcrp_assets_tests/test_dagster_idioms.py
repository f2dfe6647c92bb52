"""The code location follows Dagster 1.13's idioms: owners, tags, source-code references and column schemas on
every asset, a description on every check, resources configured from `dg.EnvVar` (shown by name) with
defaults that hold when the variables are unset, and no DeprecationWarning caused by the project's code."""

import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.metadata.source_code import CodeReferencesMetadataValue, LocalFileCodeReference
from dagster._core.remote_representation.external_data import RepositorySnap, ResourceConfigEnvVarSnap

from gcrp_assets.definitions import COLUMN_SCHEMAS, defs
from gcrp_assets.lib import schemas
from gcrp_assets.orchestration.resources import ENV_DEFAULTS, apply_env_defaults, default_resources, packaged_inbox

ROOT = Path(__file__).resolve().parents[1]
PARQUET_ASSETS = {"raw_threads": schemas.RAW_THREADS, "filtered_threads": schemas.FILTERED_THREADS,
                  "augmented_prompts": schemas.SAMPLES, "tokenized_parquet": schemas.TOKENIZED}


@pytest.fixture(scope="module")
def location():
    # Loading sets unset GCRP_* variables to their defaults: keep them out of the other tests' environment.
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test():  # resolving consults the instance
        for name in ENV_DEFAULTS:
            patch.setenv(name, "")
        loaded = defs()  # the lazy `@dg.definitions` the code location exposes
        yield loaded, loaded.resolve_asset_graph()


def test_every_asset_has_owners_tags_and_a_source_code_reference(location):
    _, graph = location
    assert len(graph.asset_nodes) == 8
    for node in graph.asset_nodes:
        spec, key = node.to_asset_spec(), node.key.to_user_string()
        assert spec.owners == ["team:gcrp"], key
        assert spec.tags.get("stage") and spec.tags.get("domain"), (key, spec.tags)
        references = spec.metadata["dagster/code_references"]
        assert isinstance(references, CodeReferencesMetadataValue), key
        [source] = references.code_references
        assert isinstance(source, LocalFileCodeReference) and source.line_number, key
        path = Path(source.file_path)
        assert path.is_file() and path.is_relative_to(ROOT / "gcrp_assets" / "defs"), (key, path)
    stages = {node.key.to_user_string(): node.to_asset_spec().tags["stage"] for node in graph.asset_nodes}
    assert len(set(stages.values())) == len(stages), stages  # one stage per asset


def test_parquet_assets_declare_their_columns_from_the_arrow_schemas(location):
    _, graph = location
    assert COLUMN_SCHEMAS.keys() == PARQUET_ASSETS.keys()
    for node in graph.asset_nodes:
        key, metadata = node.key.to_user_string(), node.to_asset_spec().metadata
        if key not in PARQUET_ASSETS:
            assert "dagster/column_schema" not in metadata, key
            continue
        assert "parquet" in node.kinds
        table = metadata["dagster/column_schema"]
        table = getattr(table, "schema", table)
        assert isinstance(table, dg.TableSchema), key
        arrow = PARQUET_ASSETS[key]
        assert [c.name for c in table.columns] == arrow.names, key
        assert [c.type for c in table.columns] == [str(t) for t in arrow.types], key


def test_every_asset_check_has_a_description(location):
    _, graph = location
    checks = {key.to_user_string(): graph.get(key).description for key in graph.asset_check_keys}
    assert len(checks) >= 12
    assert not [name for name, description in checks.items() if not description]


def test_resources_show_the_environment_variable_not_a_path(location):
    loaded, _ = location
    snap = RepositorySnap.from_def(loaded.get_repository_def())  # what the code server sends the UI
    values = {resource.name: resource.configured_values for resource in snap.resources}
    assert values["inbox"]["path"] == ResourceConfigEnvVarSnap(name="GCRP_INBOX")
    assert values["store"]["root"] == ResourceConfigEnvVarSnap(name="GCRP_ARTIFACTS")
    assert values["base"]["hf_model_dir"] == ResourceConfigEnvVarSnap(name="GCRP_BASE_MODEL")
    assert values["base"]["model_name"] == ResourceConfigEnvVarSnap(name="GCRP_BASE_MODEL_NAME")
    assert loaded.executor is dg.in_process_executor


@pytest.mark.parametrize("how", ["unset", "empty"])
def test_unset_or_empty_variables_resolve_to_the_defaults(how, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ENV_DEFAULTS:
        monkeypatch.setenv(name, "")  # monkeypatch restores the variable, whatever the defaults set
        if how == "unset":
            monkeypatch.delenv(name)
    with dg.build_resources(default_resources()) as resources:  # as a run resolves them
        assert resources.inbox.folder() == packaged_inbox().resolve()
        assert Path(resources.store.root) == tmp_path / "artifacts"
        assert resources.base.hf_model_dir == "" and resources.base.model_name == ""
        assert resources.base.display_name() == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_set_variables_win_and_are_read_when_the_resources_resolve(tmp_path, monkeypatch):
    for name in ENV_DEFAULTS:
        monkeypatch.setenv(name, "")
    configured = default_resources()  # the location loaded before the variables changed
    monkeypatch.setenv("GCRP_INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("GCRP_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("GCRP_BASE_MODEL", str(tmp_path / "my-model"))
    with dg.build_resources(configured) as resources:
        assert resources.inbox.path == str(tmp_path / "inbox")
        assert resources.store.root == str(tmp_path / "art")
        assert resources.base.display_name() == "my-model"
    environ = {"GCRP_INBOX": "/elsewhere", "GCRP_ARTIFACTS": ""}
    assert set(apply_env_defaults(environ)) == set(ENV_DEFAULTS) - {"GCRP_INBOX"}
    assert environ["GCRP_INBOX"] == "/elsewhere" and environ["GCRP_ARTIFACTS"].endswith("artifacts")


def test_the_project_causes_no_deprecation_warning():
    """Loading the location as a code server does (every job, sensor and schedule snapshotted) and evaluating
    the sensor and the schedule, in a fresh interpreter, with the project's DeprecationWarnings as errors."""
    code = r"""
import datetime as dt, warnings
warnings.filterwarnings("error", category=DeprecationWarning, module=r"gcrp_assets\.")
import dagster as dg
from dagster._core.remote_representation.external_data import RepositorySnap
with dg.instance_for_test() as instance:
    from gcrp_assets.definitions import defs
    from gcrp_assets.defs.automation import inbox_sensor, weekly_data_refresh
    from gcrp_assets.orchestration.resources import default_resources
    loaded = defs()
    RepositorySnap.from_def(loaded.get_repository_def())
    for job in loaded.resolve_all_job_defs():
        job.get_job_snapshot()
    inbox_sensor(dg.build_sensor_context(instance=instance, resources={"inbox": default_resources()["inbox"]}))
    list(weekly_data_refresh(dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 23, 3, tzinfo=dt.timezone.utc))))
print("clean")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stderr[-3000:]


def test_pytest_turns_the_projects_deprecation_warnings_into_errors():
    """setup.cfg: a DeprecationWarning attributed to a gcrp_assets module fails the test; others do not."""
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "automation.py", 1, module="gcrp_assets.defs.automation")
    warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="some_library.module")

"""The live web UI: `dg dev` (webserver + daemon, what `make dev` runs) on 127.0.0.1, driven through GraphQL
and a browser.

Starts every process in its own process group with default signal handlers (a background `dg dev`
otherwise ignores SIGINT and SIGTERM) and stops the whole group at the end.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from gcrp_assets_tests.factories import thread, write_jsonl
from gcrp_assets_tests.processes import free_port, own_process_group, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.e2e

LINEAGE_QUERY = """
query Lineage($key: AssetKeyInput!, $partition: String!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { dependencyKeys { path } dependedByKeys { path } }
  }
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId partition
        metadataEntries { label ... on PathMetadataEntry { path } ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("ui")
    inbox = base / "inbox"
    write_jsonl(inbox / "a.jsonl", [thread(f"a{i}", 2 + i % 3, 7 + i % 4) for i in range(6)])
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "GCRP_INBOX": str(inbox), "GCRP_ARTIFACTS": str(base / "art"),
           "GCRP_BASE_MODEL": str(tiny_model_dir)}
    subprocess.run([BIN / "python", "-m", "gcrp_assets.cli", "register"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    log = open(base / "dagster_dev.log", "w")
    process = subprocess.Popen([BIN / "dg", "dev", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=own_process_group)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (base / "dagster_dev.log").read_text()[-3000:]
            assert time.time() < deadline, "dg dev did not answer in 120 s"
            time.sleep(1)
        yield {"url": url, "port": port, "base": base, "env": env}
    finally:
        stop_process_group(process, timeout=60)
        log.close()
        with socket.socket() as s:  # the port is free again: nothing was left behind
            s.bind(("127.0.0.1", port))


def _wait(client, run_id, timeout=180):
    deadline = time.time() + timeout
    while True:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        assert time.time() < deadline, f"run {run_id} still {status}"
        time.sleep(1)


def test_materialize_through_graphql_and_read_back_lineage(server):
    client = DagsterGraphQLClient("127.0.0.1", port_number=server["port"])
    run_id = client.submit_job_execution("dump_stages", tags={"dagster/partition": "a.jsonl"})
    assert _wait(client, run_id) == "SUCCESS"
    data = client._execute(LINEAGE_QUERY, {"key": {"path": ["filtered_threads"]}, "partition": "a.jsonl"})
    node = data["assetNodeOrError"]
    assert node["dependencyKeys"] == [{"path": ["raw_threads"]}]
    assert node["dependedByKeys"] == [{"path": ["augmented_prompts"]}]
    [materialization] = data["assetOrError"]["assetMaterializations"]
    assert materialization["runId"] == run_id and materialization["partition"] == "a.jsonl"
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert Path(entries["path"]["path"]).is_dir() and entries["threads_in"]["intValue"] == 6


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_asset_graph_page_renders_in_headless_chromium(server):
    shot = server["base"] / "asset_graph.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={server['base'] / 'chromium'}", "--window-size=1400,900",
             "--virtual-time-budget=20000"]
    lineage = f"{server['url']}/asset-groups"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", lineage], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", lineage], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    # The app rendered the lineage graph with this code location's groups, not an error page.
    assert "Global asset lineage" in dom
    assert all(f">{group}<" in dom for group in ("data", "models", "training", "evaluation"))
    assert "Something went wrong" not in dom and "Page not found" not in dom
    catalog = subprocess.run([CHROMIUM, *flags, "--dump-dom", f"{server['url']}/assets"],
                             capture_output=True, text=True, timeout=120).stdout
    for key in ("raw_threads", "filtered_threads", "augmented_prompts", "tokenized_parquet", "lora_checkpoint",
                "eval_report"):
        assert key in catalog, key
    if os.environ.get("GCRP_UI_SCREENSHOT_DIR"):  # keep the picture for a person to look at
        shutil.copy(shot, Path(os.environ["GCRP_UI_SCREENSHOT_DIR"]) / "asset_graph.png")


def _trainers_of(artifacts: Path) -> list:
    """Trainer processes working for this test's artifact root (other tests may train at the same time)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "gcrp_assets.trainer.train" in " ".join(process.info["cmdline"] or []) and \
                    str(artifacts) in process.environ().get("GCRP_TRAIN_EXTRAS", ""):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_cancelling_training_stops_the_trainer_and_leaves_no_finished_looking_checkpoint(server):
    client = DagsterGraphQLClient("127.0.0.1", port_number=server["port"])
    artifacts = server["base"] / "art"
    run_config = {"ops": {"tokenized_parquet": {"config": {"max_length": 512, "min_eval_threads": 1}},
                          "lora_checkpoint": {"config": {"max_steps": 100000, "max_length": 512, "precision": "fp32",
                                                         "eval_steps": 0}}}}
    run_id = client.submit_job_execution("training_chain", run_config=run_config)
    deadline = time.time() + 180
    while not _trainers_of(artifacts):
        assert client.get_run_status(run_id).value in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED"), \
            client.get_run_status(run_id)
        assert time.time() < deadline, "the trainer never started"
        time.sleep(1)
    time.sleep(5)  # let it get into the training loop
    client.terminate_run(run_id)
    assert _wait(client, run_id, timeout=120) == "CANCELED"
    deadline = time.time() + 60
    while _trainers_of(artifacts):  # Pipes forwarded the termination to the trainer process
        assert time.time() < deadline, "the trainer outlived its cancelled run"
        time.sleep(1)
    checkpoints = artifacts / "lora_checkpoint"
    assert not list(checkpoints.glob("*/manifest.json")) and not list(checkpoints.glob("*/adapter_model.safetensors"))

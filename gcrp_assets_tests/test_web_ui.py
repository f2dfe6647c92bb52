"""The live web UI: `dg dev` (webserver + daemon, what `make dev` runs) on 127.0.0.1, driven through GraphQL
and a browser (headless Chromium: `--dump-dom`, and the DevTools protocol where a page must be clicked).

Starts every process in its own process group with default signal handlers (a background `dg dev`
otherwise ignores SIGINT and SIGTERM) and stops the whole group at the end.
"""

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient
from websockets.sync.client import connect

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
    # Groups read as the pipeline: the per-dump data stages, training (its set, the base model, the adapter), eval.
    assert all(f">{group}<" in dom for group in ("data", "training", "evaluation")) and ">models<" not in dom
    assert "Something went wrong" not in dom and "Page not found" not in dom
    catalog = subprocess.run([CHROMIUM, *flags, "--dump-dom", f"{server['url']}/assets"],
                             capture_output=True, text=True, timeout=120).stdout
    for key in ("raw_threads", "filtered_threads", "augmented_prompts", "tokenized_parquet", "lora_checkpoint",
                "eval_report"):
        assert key in catalog, key
    if os.environ.get("GCRP_UI_SCREENSHOT_DIR"):  # keep the picture for a person to look at
        shutil.copy(shot, Path(os.environ["GCRP_UI_SCREENSHOT_DIR"]) / "asset_graph.png")


# The training set of the chain runs below: the same in each, so the second reuses it.
TRAINING_SET = {"tokenized_parquet": {"config": {"max_length": 512, "min_eval_threads": 1}}}

LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) { ... on EventConnection { events { ... on MessageEvent { message stepKey } } } }
}
"""


@pytest.fixture(scope="module")
def trained(server):
    """A short training chain run to the end: the adapter (logged every step) and its eval report."""
    client = DagsterGraphQLClient("127.0.0.1", port_number=server["port"])
    run_config = {"ops": {**TRAINING_SET,
                          "lora_checkpoint": {"config": {"max_steps": 3, "logging_steps": 1, "max_length": 512,
                                                         "precision": "fp32"}},
                          "eval_report": {"config": {"max_generations": 1, "max_new_tokens": 4, "speaker_turns": 2,
                                                     "samples_per_context": 0, "precision": "fp32",
                                                     "bootstrap_resamples": 200}}}}
    run_id = client.submit_job_execution("training_chain", run_config=run_config)
    assert _wait(client, run_id, timeout=600) == "SUCCESS"
    return run_id


def test_the_training_log_shows_step_k_of_n_with_an_eta(server, trained):
    client = DagsterGraphQLClient("127.0.0.1", port_number=server["port"])
    events = client._execute(LOGS_QUERY, {"runId": trained})["logsForRun"]["events"]
    lines = [e["message"] for e in events if e.get("stepKey") == "lora_checkpoint"]
    step = re.compile(r"step \d+/3 \(\d+ %\) · loss \d+\.\d\d · lr [\d.e-]+ · \d+ tok/s · ETA \d+ (s|min)")
    assert [line for line in lines if step.fullmatch(line)], lines
    assert any(line.startswith("phase 3/4 · train (3 steps) · ") for line in lines), lines
    assert not [line for line in lines if line.startswith("metrics {")], lines  # no raw dictionaries


class Chromium:
    """Headless Chromium driven through the DevTools protocol (one page), for pages that need a click."""

    def __init__(self, profile: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,900", f"--remote-debugging-port={self.port}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=own_process_group)
        deadline = time.time() + 60
        while True:
            try:
                pages = [t for t in requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                         if t["type"] == "page"]
                if pages:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.5)
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries the id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.time() + timeout
        while not (value := self.js(expression)) and time.time() < deadline:
            time.sleep(0.5)
        return value

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def show_markdown(self, label: str) -> list[int]:
        """Click the `[Show Markdown]` of the metadata row `label`; the widths of the PNG images it shows."""
        clicked = self.wait_for(f"""(() => {{
            const row = [...document.querySelectorAll('tr')].find(r => r.cells.length > 1 &&
                r.cells[0].innerText.trim() === {json.dumps(label)});
            const link = row && [...row.querySelectorAll('*')].filter(e => e.innerText === '[Show Markdown]').pop();
            if (link) link.click();
            return Boolean(link);
        }})()""")
        assert clicked, f"no [Show Markdown] for {label}: " + self.js("document.body.innerText")[:3000]
        return self.wait_for("""[...document.querySelectorAll('[role=dialog] img')]
            .filter(i => i.src.startsWith('data:image/png') && i.complete).map(i => i.naturalWidth)""", 20)

    def close(self) -> None:
        self.socket.close()
        stop_process_group(self.process, timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_eval_report_page_shows_the_headline_table_and_plots(server, trained):
    browser = Chromium(server["base"] / "chromium-devtools")
    try:
        browser.open(f"{server['url']}/assets/eval_report")
        headline = browser.wait_for("""(() => {  // the innermost table whose own header names a metric column
            const head = t => t.tHead ? [...t.tHead.rows[0].cells].map(h => h.innerText.trim().toLowerCase()) : [];
            const table = [...document.querySelectorAll('table')].find(t => head(t).includes('metric'));
            return table && {head: head(table), rows: [...table.tBodies[0].rows].map(r => r.innerText)};
        })()""")
        assert headline, "no headline table: " + browser.js("document.body.innerText")[:3000]
        assert {"metric", "base", "adapter"} <= set(headline["head"]) and headline["rows"], headline
        decimals = re.findall(r"\d+\.\d+", " ".join(headline["rows"]))
        significant = [len(number.replace(".", "").lstrip("0")) for number in decimals]
        assert decimals and max(significant) <= 6, headline  # rounded, not 3.044673257914065
        assert [width for width in browser.show_markdown("report") if width > 100], "the report shows no plot"
        browser.open(f"{server['url']}/assets/lora_checkpoint")
        assert [width for width in browser.show_markdown("loss_curve") if width > 100], "no loss curve"
    finally:
        browser.close()


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
    run_config = {"ops": {**TRAINING_SET,
                          "lora_checkpoint": {"config": {"max_steps": 100000, "max_length": 512, "precision": "fp32",
                                                         "eval_steps": 0}}}}
    checkpoints = artifacts / "lora_checkpoint"
    finished_before = set(checkpoints.glob("*/manifest.json")) | set(checkpoints.glob("*/adapter_model.safetensors"))
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
    finished = set(checkpoints.glob("*/manifest.json")) | set(checkpoints.glob("*/adapter_model.safetensors"))
    assert finished == finished_before  # the adapter trained to the end earlier in this module is the only one

"""The cluster path, tested without a cluster: the Helm values against the chart's schema (a documented subset)
and against the code, the definitions loaded with the Kubernetes configuration, and the trainer pods, worker Job
and rendezvous Service that would be submitted, each checked against the Kubernetes API's own models (an unknown
or misspelt field, or a missing required one, fails)."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import dagster as dg
import jsonschema
import pytest
import yaml
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from dagster_k8s.pipes import build_pod_body
from kubernetes.client import ApiClient

from gcrp_assets.defs.training import lora_checkpoint, trainer_command
from gcrp_assets.lib.deploy import k8s as manifests
from gcrp_assets.orchestration.k8s import EXECUTORS, GPU_STEPS, KubernetesTrainer, location_executor
from gcrp_assets.orchestration.resources import (ENV_DEFAULTS, K8S_ENV_DEFAULTS, PIPES_BACKENDS, ArtifactStore,
                                                 pipes_backend)
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets_tests.test_training_support import record_upstream, synthetic_rows, test_instance, write_tokenized

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "k8s"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
SCHEMA = json.loads((DEPLOY / "chart-values-subset.schema.json").read_text())
TEMPLATE = DEPLOY / "trainer-pod.yaml"
RUN_ID = "3f2a9c1e-7d4b-4e0a-9a55-0c2d1f6b8e77"


def k8s_model(manifest: dict, kind: str):
    """`manifest` read into the Kubernetes client's model `kind` (required fields are checked on the way in),
    then written back: equal only if every field was known to the API, so a misspelt field cannot pass."""
    api = ApiClient()
    model = api._ApiClient__deserialize(manifest, kind)  # what `kubectl`/the API would read
    assert api.sanitize_for_serialization(model) == json.loads(json.dumps(manifest)), f"unknown field in {kind}"
    return model


def deployment() -> dict:
    [location] = VALUES["dagster-user-deployments"]["deployments"]
    return location


def deployment_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in deployment()["env"]}


# ------------------------------------------------------------------------------------------------- Helm values

def test_the_helm_values_validate_against_the_chart_subset_schema():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.check_schema(SCHEMA)
    assert not [e.message for e in validator.iter_errors(VALUES)]
    # The schema refuses what the chart refuses: a misspelt key, a wrong type, a run launcher's wrong section.
    location = deployment()
    broken = [
        {**VALUES, "runLaunchr": VALUES["runLauncher"]},
        {**VALUES, "dagster-user-deployments": {"deployments": [{**location, "includeConfigInLaunchedRun": True}]}},
        {**VALUES, "dagster-user-deployments": {"deployments": [{**location, "name": "gcrp_assets"}]}},
        {**VALUES, "runLauncher": {"type": "K8sRunLauncher", "config": {"k8sRunLauncher": {"runK8sConfig": {
            "podSpec": {}}}}}},
        {**VALUES, "concurrency": {"enabled": True, "pools": {"defaultLimit": "one"}}},
        {**VALUES, "postgresql": {"enabled": False}},  # an external database needs its host
    ]
    for values in broken:
        assert list(validator.iter_errors(values)), values


def test_the_helm_values_agree_with_the_code_and_the_other_manifests():
    location, env = deployment(), deployment_env()
    # Every variable set is one the code reads, with a value it accepts.
    read = set(ENV_DEFAULTS) | set(K8S_ENV_DEFAULTS) | {"GCRP_PIPES", "GCRP_EXECUTOR", "HF_HOME"}
    assert set(env) <= read, set(env) - read
    assert env["GCRP_PIPES"] == "k8s" and pipes_backend(env) in PIPES_BACKENDS
    assert env["GCRP_EXECUTOR"] in EXECUTORS and env["GCRP_TRAINER_IMAGE"]
    # The shared-volume contract: the claim mounted at GCRP_SHARED_MOUNT, the inbox and the artifacts under it.
    mount = PurePosixPath(env["GCRP_SHARED_MOUNT"])
    for name in ("GCRP_INBOX", "GCRP_ARTIFACTS", "HF_HOME"):
        assert PurePosixPath(env[name]).is_relative_to(mount), name
    volumes = {v["name"]: v for v in location["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in location["volumeMounts"]}
    claim = volumes[mounts[str(mount)]]["persistentVolumeClaim"]["claimName"]
    pvc = yaml.safe_load((DEPLOY / "shared-volume.yaml").read_text())
    assert claim == env["GCRP_SHARED_CLAIM"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # mounted by many pods on many nodes at once
    k8s_model(pvc, "V1PersistentVolumeClaim")
    # The trainer pod template reaches the code location (and its runs) from its ConfigMap.
    template_dir = str(PurePosixPath(env["GCRP_TRAINER_POD_TEMPLATE"]).parent)
    assert "configMap" in volumes[mounts[template_dir]]
    assert location["includeConfigInLaunchedRuns"]["enabled"]  # run and step pods get the same env and volumes
    # The code server serves this project's code location.
    args = location["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    assert module == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    import importlib

    assert args[args.index("--attribute") + 1] in vars(importlib.import_module(module))
    # Multi-node training creates a Service and a Job per run: the Role allows it.
    role, binding = yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
    k8s_model(role, "V1Role")
    k8s_model(binding, "V1RoleBinding")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert {("services", "create"), ("services", "delete"), ("jobs", "create"), ("jobs", "delete"),
            ("pods", "create"), ("pods/log", "get")} <= granted


def test_the_definitions_load_with_the_kubernetes_configuration(monkeypatch, tmp_path):
    for name, value in deployment_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GCRP_TRAINER_POD_TEMPLATE", str(TEMPLATE))  # mounted from its ConfigMap in the cluster
    for name in ENV_DEFAULTS:
        monkeypatch.setenv(name, os.environ.get(name, ""))  # monkeypatch restores what loading defaults
    from gcrp_assets.definitions import defs

    with dg.instance_for_test():
        loaded = defs()
        assert isinstance(loaded.resources["pipes"], KubernetesTrainer)
        assert loaded.executor.name == "k8s_gpu_steps"
        job = loaded.resolve_job_def("training_chain")
        assert job.executor_def is loaded.executor
        with dg.build_resources({"pipes": loaded.resources["pipes"]}) as resources:  # as a run resolves it
            pipes = resources.pipes
            assert (pipes.image, pipes.volume_claim, pipes.mount_path) == ("gcrp-assets-trainer:0.1.0",
                                                                            "gcrp-shared", "/shared")
            assert pipes.gpus_per_node == -1 and pipes.pod_template == str(TEMPLATE)
    # The executor's per-step configuration: eval_report on a GPU node, in the trainer image.
    executor = location_executor({"GCRP_EXECUTOR": "k8s", "GCRP_TRAINER_POD_TEMPLATE": str(TEMPLATE),
                                  "GCRP_TRAINER_IMAGE": "trainer:1"})
    resolved = executor.apply_config_mapping({})  # validated against k8s_job_executor's config schema
    assert resolved.success, resolved.errors
    [gpu_step] = GPU_STEPS
    step_config = UserDefinedDagsterK8sConfig.from_dict(resolved.value["config"]["per_step_k8s_config"][gpu_step])
    assert step_config.container_config == {"image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    assert step_config.pod_spec_config["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert step_config.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert location_executor({}) is dg.in_process_executor
    with pytest.raises(ValueError, match="GCRP_EXECUTOR"):
        location_executor({"GCRP_EXECUTOR": "celery"})
    with pytest.raises(ValueError, match="GCRP_PIPES"):
        pipes_backend({"GCRP_PIPES": "docker"})


# ------------------------------------------------------------------------------------------------- trainer pods

def trainer(**overrides) -> KubernetesTrainer:
    return KubernetesTrainer(**{"image": "gcrp-assets-trainer:0.1.0", "volume_claim": "gcrp-shared",
                                "mount_path": "/shared", "pod_template": str(TEMPLATE), **overrides})


def extras(root: str = "/shared/artifacts") -> dict:
    return {"data_path": f"{root}/tokenized_parquet/ab12/tokenized.parquet", "base_model_dir": f"{root}/base_model/cd34",
            "output_dir": f"{root}/lora_checkpoint/ef56", "run_dir": f"{root}/lora_checkpoint/ef56.run"}


def pods_for(hp: dict, resource: KubernetesTrainer | None = None, paths: dict | None = None):
    resource = resource or trainer()
    env = {"GCRP_TRAIN_EXTRAS": json.dumps(paths or extras()), "PYTHONUNBUFFERED": "1", "HF_HOME": "/shared/hf",
           "CUDA_VISIBLE_DEVICES": "0", "DS_ACCELERATOR": "cpu"}  # as a CPU run worker's environment has them
    return resource.trainer_pods(hp=hp, command_for=lambda h: trainer_command(h, python=resource.python),
                                 extras=paths or extras(), env=env, run_id=RUN_ID, namespace="ml")


def submitted_pod(pods) -> dict:
    """The pod body PipesK8sClient.run submits for these arguments (its own builder), as the API would read it."""
    body = build_pod_body(pod_name="dagster-pipes-x", image=None, command=None,
                          env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"},
                          base_pod_meta=pods.pod_meta, base_pod_spec=pods.pod_spec)
    manifest = ApiClient().sanitize_for_serialization(body)
    k8s_model(manifest, "V1Pod")
    return manifest


def test_the_trainer_pod_runs_the_image_python_with_the_recipe_gpus_on_the_shared_volume():
    party = LoraConfig(recipe="party-12b").resolved()  # 2 GPUs, the deepspeed launcher
    pod = submitted_pod(pods_for(party))
    [container] = pod["spec"]["containers"]
    assert container["image"] == "gcrp-assets-trainer:0.1.0"
    assert container["command"][0] == "python" != sys.executable
    assert container["command"][1:4] == ["-m", "deepspeed.launcher.runner", "--num_gpus=2"]
    assert container["command"][-2:] == ["--module", "gcrp_assets.trainer.train"]
    assert "--master_addr=127.0.0.1" in container["command"]  # one node: no Service to resolve
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}  # from the template
    assert {"name": manifests.SHARED_VOLUME, "mountPath": "/shared"} in container["volumeMounts"]
    assert {"name": manifests.SHARED_VOLUME, "persistentVolumeClaim": {"claimName": "gcrp-shared"}} in pod["spec"]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]  # the template's own mount stays
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["GCRP_TRAIN_EXTRAS"]) == extras() and env["DAGSTER_PIPES_CONTEXT"] == "ctx"
    assert "CUDA_VISIBLE_DEVICES" not in env and "DS_ACCELERATOR" not in env  # the pod's GPUs, not the worker's
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["spec"]["tolerations"]
    assert pod["metadata"]["labels"][manifests.NODE_RANK_LABEL] == "0"
    # The CPU recipe asks for no GPU; an explicit count wins over the recipe.
    smoke = submitted_pod(pods_for(LoraConfig().resolved()))
    assert "limits" not in smoke["spec"]["containers"][0]["resources"]
    assert smoke["spec"]["containers"][0]["command"] == ["python", "-m", "gcrp_assets.trainer.train"]
    assert {"name": "DS_ACCELERATOR", "value": "cpu"} in smoke["spec"]["containers"][0]["env"]
    forced = submitted_pod(pods_for(LoraConfig().resolved(), trainer(gpus_per_node=1)))
    assert forced["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # Without a template: still a valid pod, only what the code sets.
    bare = submitted_pod(pods_for(party, trainer(pod_template="")))
    assert "nodeSelector" not in bare["spec"] and bare["spec"]["containers"][0]["name"] == manifests.TRAINER_CONTAINER


def test_a_path_off_the_shared_volume_an_unmounted_claim_or_a_missing_image_is_refused_before_submitting(tmp_path):
    hp = LoraConfig().resolved()
    with pytest.raises(dg.Failure, match="base_model_dir not under the shared volume"):
        pods_for(hp, paths={**extras(), "base_model_dir": "/models/my-base"})
    with pytest.raises(dg.Failure, match="output_dir, run_dir not under"):
        pods_for(hp, paths={**extras(), "output_dir": "/sharedX/a", "run_dir": "relative/b"})
    with pytest.raises(dg.Failure, match="GCRP_TRAINER_IMAGE"):
        pods_for(hp, trainer(image=""))
    with pytest.raises(dg.Failure, match="not a mount point"):
        trainer(mount_path=str(tmp_path)).check_mounted()  # the claim missing from the pod running the step
    trainer(mount_path="/").check_mounted()
    with pytest.raises(dg.Failure, match="launcher 'torchrun'"):
        pods_for(LoraConfig(recipe="party-12b", nnodes=2).resolved())  # the deepspeed launcher wants ssh/hostfiles


def test_multi_node_training_is_the_pipes_pod_an_indexed_job_and_a_headless_service():
    hp = LoraConfig(recipe="party-12b", launcher="torchrun", nnodes=3, master_port=29400,
                    master_addr="10.0.0.1", node_rank=2).resolved()
    pods = pods_for(hp)
    name = manifests.training_name(RUN_ID)
    address = f"{name}.ml.svc"
    node0 = submitted_pod(pods)["spec"]["containers"][0]["command"]
    assert node0[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nnodes=3", "--node_rank=0", f"--master_addr={address}", "--master_port=29400",
            "--nproc_per_node=2"} <= set(node0)  # this pod is node 0 whatever the config said
    service = pods.service
    k8s_model(service, "V1Service")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["metadata"]["name"] == name and service["spec"]["ports"][0]["port"] == 29400
    labels = pods.pod_meta["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())  # it resolves to node 0's pod
    job = pods.worker_job
    k8s_model(job, "V1Job")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    worker = job["spec"]["template"]["spec"]
    [container] = worker["containers"]
    assert container["image"] == "gcrp-assets-trainer:0.1.0" and worker["restartPolicy"] == "Never"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert {"name": manifests.SHARED_VOLUME, "persistentVolumeClaim": {"claimName": "gcrp-shared"}} in worker["volumes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "GCRP_TRAIN_EXTRAS" in env and not any(k.startswith("DAGSTER_PIPES") for k in env)  # rank 0 only
    selector = service["spec"]["selector"]
    assert any(job["spec"]["template"]["metadata"]["labels"].get(k) != v for k, v in selector.items())
    # The worker pods' node rank is the completion index + 1, through torchrun's PET_NODE_RANK: run the wrapper
    # with the torchrun invocation replaced by a probe that prints what torchrun would be given.
    command = container["command"]
    assert command[:3] == ["/bin/sh", "-c", manifests.WORKER_SCRIPT] and not any("--node_rank" in a for a in command)
    probe = [sys.executable, "-c", "import os, sys; print(os.environ['PET_NODE_RANK'], *sys.argv[1:])"]
    tail = command[command.index("torch.distributed.run") + 1:]
    for index, rank in ((0, "1"), (1, "2")):
        done = subprocess.run([*command[:4], *probe, *tail], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "JOB_COMPLETION_INDEX": str(index)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [rank, *tail]
    # torchrun itself takes --node_rank from PET_NODE_RANK when the argument is absent.
    os.environ["PET_NODE_RANK"] = "2"
    try:
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args([a for a in tail if a.startswith("--")] + ["train.py"])
        assert (args.node_rank, args.nnodes, args.master_addr) == (2, "3", address)
    finally:
        del os.environ["PET_NODE_RANK"]


# ------------------------------------------------------------------------------------------------- the asset

CALLS: list[tuple[str, tuple, dict]] = []  # what the fakes below were asked to do, in order


class FakeKubernetes:
    """Records what would be submitted to the cluster."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: CALLS.append((name, args, kwargs))


class SubmittedPod(Exception):
    pass


class FakePipesK8sClient:
    """Records the Pipes pod and 'fails' it, as a pod that exits non-zero does."""

    def run(self, **kwargs):
        CALLS.append(("pipes.run", (), kwargs))
        raise SubmittedPod("the pod was submitted")


class RecordingTrainer(KubernetesTrainer):
    def check_mounted(self):  # a temporary folder stands for the claim (the check has its own test above)
        pass

    def pipes_client(self):
        return FakePipesK8sClient()

    def kube_apis(self):
        return FakeKubernetes(), FakeKubernetes()

    def resolved_namespace(self):
        return "ml"


def test_lora_checkpoint_on_kubernetes_submits_the_pods_and_removes_the_workers_however_it_ends(tmp_path):
    shared = tmp_path / "shared"
    data = write_tokenized(shared / "tokenized", synthetic_rows(4, 1))
    model = shared / "models" / "base"
    model.mkdir(parents=True)
    CALLS.clear()
    resource = RecordingTrainer(image="trainer:1", volume_claim="gcrp-shared", mount_path=str(shared),
                                pod_template=str(TEMPLATE))
    config = LoraConfig(recipe="party-12b", launcher="torchrun", nnodes=2)
    with test_instance(tmp_path) as instance:
        record_upstream(instance, data, model)
        result = dg.materialize([lora_checkpoint], instance=instance, raise_on_error=False,
                                resources={"store": ArtifactStore(root=str(shared / "artifacts")), "pipes": resource},
                                run_config=dg.RunConfig(ops={"lora_checkpoint": config}))
    assert not result.success  # the fake pod "failed"; but not for want of GPUs on this machine
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.error.cause.cls_name == "SubmittedPod"
    names = [name for name, _, _ in CALLS]
    assert names == ["create_namespaced_service", "create_namespaced_job", "pipes.run",
                     "delete_namespaced_job", "delete_namespaced_service"]
    run = CALLS[2][2]
    [container] = run["base_pod_spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert run["extras"]["output_dir"].startswith(str(shared / "artifacts"))
    assert run["namespace"] == "ml"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "DS_ACCELERATOR" not in env  # the pod has GPUs, whatever this machine has

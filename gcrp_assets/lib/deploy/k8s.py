"""Kubernetes manifests for training: the trainer pod and, for `nnodes > 1`, the worker Job and the rendezvous
Service. Plain dicts in the Kubernetes API's own camelCase form (what `kubectl apply` reads); nothing here talks
to a cluster or imports Dagster (`gcrp_assets.orchestration.k8s` submits them).

The shared-volume contract: one ReadWriteMany volume claim is mounted at the same path (`mount_path`) in the code
location, in every run and step pod and in every trainer pod, and the artifact root (with the tokenized data and
the base model) lies under it; so an absolute path that one pod writes names the same file in all of them.
`paths_outside_mount` checks it before anything is submitted.

Multi-node: node 0 is the pod Dagster Pipes starts (its rank 0 talks to Dagster); nodes 1..N-1 are an Indexed
Job whose pods take their node rank from the completion index (+1). torchrun's static rendezvous (`--nnodes`,
`--node_rank`, `--master_addr`, `--master_port`, as on hand-started nodes) meets at node 0 through a headless
Service selecting that pod. Static, not c10d, because c10d hands out node ranks by arrival, and global rank 0,
the one that opens the Pipes channel, must be in the Pipes pod.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from gcrp_assets.lib.training.recipes import get_recipe

TRAINER_CONTAINER = "trainer"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's extended resource
SHARED_VOLUME = "gcrp-shared"
PART_OF = "gcrp-assets"
TRAINING_LABEL = "gcrp-assets/training"      # the same value on every pod of one training
NODE_RANK_LABEL = "gcrp-assets/node-rank"    # "0" on the Pipes pod (the Service selects it), "workers" on the rest
# Fields of a pod template that place a pod (reused for the GPU steps of the k8s executor).
SCHEDULING_FIELDS = ("nodeSelector", "tolerations", "affinity", "priorityClassName", "runtimeClassName",
                     "schedulerName")
# The Indexed Job's pods: node rank = completion index + 1 (node 0 is the Pipes pod), through torchrun's
# PET_NODE_RANK (the environment form of --node_rank); the command itself follows as "$@", unquoted by nobody.
WORKER_SCRIPT = 'export PET_NODE_RANK=$((JOB_COMPLETION_INDEX + 1)); exec "$@"'


def load_pod_template(path: str | None) -> dict[str, Any]:
    """The trainer pod template (a Pod manifest, or a bare pod spec) as {"metadata": ..., "spec": ...}; empty
    when `path` is empty. Kept by the operator (deploy/k8s/trainer-pod.yaml): node selection, tolerations,
    shared memory, CPU/memory requests. Image, command, environment, GPUs and the shared volume are set here."""
    if not path:
        return {"metadata": {}, "spec": {}}
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    if not isinstance(document, dict):
        raise ValueError(f"pod template {path}: expected a Pod manifest or a pod spec, got {type(document).__name__}")
    if "spec" in document or document.get("kind") == "Pod":
        return {"metadata": dict(document.get("metadata") or {}), "spec": dict(document.get("spec") or {})}
    return {"metadata": {}, "spec": document}


def gpus_per_node(hp: Mapping[str, Any], configured: int = -1) -> int:
    """GPUs each trainer pod requests: `configured` when it is 0 or more; otherwise (auto) one per process
    (`nproc_per_node`) for a recipe sized for GPUs, and none for a CPU recipe (`smoke`) or with `allow_cpu`."""
    if configured >= 0:
        return configured
    if get_recipe(hp.get("recipe", "smoke")).gpus and not hp.get("allow_cpu"):
        return int(hp.get("nproc_per_node", 1))
    return 0


def paths_outside_mount(paths: Mapping[str, str], mount_path: str) -> list[str]:
    """Which of `paths` (name -> absolute path) do not lie under `mount_path`: a trainer pod would not see them."""
    mount = PurePosixPath(mount_path)
    return [name for name, path in paths.items()
            if not PurePosixPath(path).is_absolute() or not PurePosixPath(path).is_relative_to(mount)]


def training_name(run_id: str) -> str:
    """A DNS-1035 name for one run's training objects (the worker Job, the Service): `gcrp-train-<run id[:8]>`."""
    return "gcrp-train-" + "".join(c for c in run_id.lower() if c.isalnum())[:8]


def trainer_pod_spec(template: Mapping[str, Any], *, image: str, command: Sequence[str], env: Mapping[str, str],
                     gpus: int, gpu_resource: str, claim: str, mount_path: str) -> dict[str, Any]:
    """The trainer pod's spec: the template's spec with its first container running `command` in `image`, the
    environment added, `gpus` GPUs as a limit of `gpu_resource` (none at 0), the claim mounted at `mount_path`,
    and never restarted (a failed training fails the step; the next attempt resumes from its checkpoints)."""
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    containers = spec.get("containers") or [{}]
    spec["containers"] = containers
    main = containers[0]
    main.setdefault("name", TRAINER_CONTAINER)
    main["image"] = image
    main["command"] = list(command)
    main.pop("args", None)
    main["env"] = [*(e for e in main.get("env") or [] if e.get("name") not in env),
                   *({"name": name, "value": value} for name, value in env.items())]
    limits = main.setdefault("resources", {}).setdefault("limits", {})
    limits.pop(gpu_resource, None)
    if gpus > 0:
        limits[gpu_resource] = str(gpus)
    if not limits:
        del main["resources"]["limits"]
    if not main["resources"]:
        del main["resources"]
    mounts = [m for m in main.get("volumeMounts") or [] if m.get("name") != SHARED_VOLUME]
    main["volumeMounts"] = [*mounts, {"name": SHARED_VOLUME, "mountPath": mount_path}]
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") != SHARED_VOLUME]
    spec["volumes"] = [*volumes, {"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
    spec["restartPolicy"] = "Never"
    return spec


def pod_metadata(template: Mapping[str, Any], name: str, node_rank: str) -> dict[str, Any]:
    """Labels (and the template's annotations) for a trainer pod: which training, which node."""
    meta = copy.deepcopy(dict(template.get("metadata") or {}))
    meta.pop("name", None)
    meta["labels"] = {**(meta.get("labels") or {}), "app.kubernetes.io/part-of": PART_OF,
                      TRAINING_LABEL: name, NODE_RANK_LABEL: node_rank}
    return meta


def worker_command(node0_command: Sequence[str]) -> list[str]:
    """The command of nodes 1..N-1: node 0's torchrun command without its `--node_rank`, which each worker pod
    takes from its Job completion index instead."""
    rest = [arg for arg in node0_command if not arg.startswith("--node_rank=")]
    if len(rest) != len(node0_command) - 1:
        raise ValueError("a worker command is made from a multi-node torchrun command with one --node_rank")
    return ["/bin/sh", "-c", WORKER_SCRIPT, "torchrun", *rest]


def worker_job(name: str, pod_spec: Mapping[str, Any], meta: Mapping[str, Any], workers: int) -> dict[str, Any]:
    """An Indexed Job of `workers` pods, all at once, none retried (a lost node fails the training, as torchrun
    would), deleted an hour after it ends if nobody deleted it first."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": dict(meta.get("labels") or {})},
        "spec": {"completionMode": "Indexed", "completions": workers, "parallelism": workers, "backoffLimit": 0,
                 "ttlSecondsAfterFinished": 3600,
                 "template": {"metadata": copy.deepcopy(dict(meta)), "spec": copy.deepcopy(dict(pod_spec))}},
    }


def rendezvous_service(name: str, training: str, port: int) -> dict[str, Any]:
    """A headless Service resolving to node 0's pod, listed before it is ready (torchrun listens before then)."""
    selector = {TRAINING_LABEL: training, NODE_RANK_LABEL: "0"}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": PART_OF, TRAINING_LABEL: training}},
        "spec": {"clusterIP": "None", "selector": selector, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": port, "targetPort": port}]},
    }


def service_address(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc"


def gpu_step_config(template: Mapping[str, Any], *, image: str, gpu_resource: str, gpus: int = 1) -> dict[str, Any]:
    """The `k8s_job_executor` configuration of a step that loads the model in its own pod (`eval_report`): the
    trainer image (CUDA), one GPU and the trainer template's node selection and tolerations."""
    spec = dict(template.get("spec") or {})
    container: dict[str, Any] = {"resources": {"limits": {gpu_resource: str(gpus)}}}
    if image:
        container["image"] = image
    return {"container_config": container,
            "pod_spec_config": {key: copy.deepcopy(spec[key]) for key in SCHEDULING_FIELDS if key in spec}}

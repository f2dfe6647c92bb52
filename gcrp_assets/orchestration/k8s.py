"""The cluster path: the trainer in Kubernetes pods through Dagster Pipes (`KubernetesTrainer`, the `pipes`
resource when GCRP_PIPES=k8s), and the executor of the code location (GCRP_EXECUTOR).

`KubernetesTrainer` starts the trainer with `dagster_k8s.PipesK8sClient`: one pod (node 0, rank 0 speaks Pipes,
its messages read from the pod's log), and for `nnodes > 1` an Indexed Job of worker pods and a headless Service
for torchrun's rendezvous, built by `gcrp_assets.lib.deploy.k8s` and deleted when the step ends, however it ends.
Every pod mounts the shared volume claim at the same path as the code location does, and every path the
trainer is handed must lie under it (checked before anything is submitted). `dagster_k8s` and `kubernetes` are
imported only when a pod is started, so the location loads without them.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dagster as dg
from pydantic import Field

from gcrp_assets.lib.deploy import k8s as manifests

EXECUTORS = ("in_process", "k8s")
# Steps that load the model in their own process: under the k8s executor they run on a GPU node. (lora_checkpoint
# trains in its own Pipes pods; its step only waits for them.)
GPU_STEPS = ("eval_report",)
# Paths of the extras the trainer opens: each must be on the shared volume.
TRAINER_PATHS = ("data_path", "base_model_dir", "output_dir", "run_dir")


@dataclass
class TrainerPods:
    """What one training submits: node 0's pod (to PipesK8sClient) and, with several nodes, the workers."""
    namespace: str
    name: str
    pod_meta: dict[str, Any]
    pod_spec: dict[str, Any]
    service: dict[str, Any] | None = None
    worker_job: dict[str, Any] | None = None
    gpus: int = 0


class KubernetesTrainer(dg.ConfigurableResource):
    """Runs the trainer in Kubernetes pods through Dagster Pipes (`dagster_k8s.PipesK8sClient`)."""

    image: str = Field(description="Trainer image (GCRP_TRAINER_IMAGE): the Dockerfile's `trainer` target, "
                                   "CUDA torch and this package.")
    namespace: str = Field(default="", description="Namespace of the trainer pods (GCRP_K8S_NAMESPACE); empty = "
                                                   "the namespace of the pod that runs the step.")
    volume_claim: str = Field(description="The shared ReadWriteMany volume claim (GCRP_SHARED_CLAIM).")
    mount_path: str = Field(description="Where every pod mounts the claim (GCRP_SHARED_MOUNT); the artifact root, "
                                        "the inbox and the base model lie under it.")
    pod_template: str = Field(default="", description="YAML file of the trainer pod template "
                                                      "(GCRP_TRAINER_POD_TEMPLATE): node selection, tolerations, "
                                                      "shared memory, requests; empty = none.")
    gpus_per_node: int = Field(default=-1, description="GPUs per trainer pod (GCRP_TRAINER_GPUS); -1 = the "
                                                       "recipe's nproc_per_node for a GPU recipe, none for a CPU one.")
    gpu_resource: str = Field(default=manifests.DEFAULT_GPU_RESOURCE, description="Extended resource name of a GPU.")
    python: str = Field(default="python", description="The interpreter of the trainer image.")

    def gpus_for(self, hp: Mapping[str, Any]) -> int:
        return manifests.gpus_per_node(hp, self.gpus_per_node)

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        from dagster_k8s.utils import detect_current_namespace

        return detect_current_namespace(None) or "default"

    def trainer_pods(self, *, hp: Mapping[str, Any], command_for: Callable[[dict], list[str]],
                     extras: Mapping[str, Any], env: Mapping[str, str], run_id: str, namespace: str) -> TrainerPods:
        """Every manifest of one training, refused (`dg.Failure`) when a path is off the shared volume or the
        launch cannot be spread over pods."""
        if not self.image:
            raise dg.Failure("GCRP_PIPES=k8s needs the trainer image: set GCRP_TRAINER_IMAGE")
        outside = manifests.paths_outside_mount({k: str(extras[k]) for k in TRAINER_PATHS if extras.get(k)},
                                                self.mount_path)
        if outside:
            raise dg.Failure(f"{', '.join(outside)} not under the shared volume's mount path {self.mount_path} "
                             "(GCRP_SHARED_MOUNT): a trainer pod could not read or write them. Put the artifact "
                             "root (GCRP_ARTIFACTS) and a local base model (GCRP_BASE_MODEL) under it.")
        nnodes = int(hp.get("nnodes", 1))
        if nnodes > 1 and hp.get("launcher") != "torchrun":
            raise dg.Failure(f"nnodes {nnodes} on Kubernetes needs launcher 'torchrun' (got {hp.get('launcher')!r}); "
                             "ZeRO still applies: the Trainer's DeepSpeed integration runs under torchrun.")
        template = manifests.load_pod_template(self.pod_template)
        name = manifests.training_name(run_id)
        gpus = self.gpus_for(hp)
        # The environment describes the pod, not the run worker it was copied from: the device plugin picks the
        # GPUs (no CUDA_*), and a pod with GPUs never runs DeepSpeed on the CPU accelerator.
        env = {k: v for k, v in env.items()
               if not k.startswith("CUDA_") and not (gpus and k == "DS_ACCELERATOR")}
        # One node: its processes meet on the pod's loopback. Several: at node 0's pod, through the Service.
        node0 = command_for({**hp, "node_rank": 0, "master_addr": manifests.service_address(name, namespace)}
                            if nnodes > 1 else {**hp, "node_rank": 0, "master_addr": "127.0.0.1"})

        def spec(command: list[str]) -> dict[str, Any]:
            return manifests.trainer_pod_spec(template, image=self.image, command=command, env=env, gpus=gpus,
                                              gpu_resource=self.gpu_resource, claim=self.volume_claim,
                                              mount_path=self.mount_path)

        pods = TrainerPods(namespace=namespace, name=name, pod_meta=manifests.pod_metadata(template, name, "0"),
                           pod_spec=spec(node0), gpus=gpus)
        if nnodes > 1:
            workers = manifests.worker_command(node0)
            pods.service = manifests.rendezvous_service(name, name, int(hp["master_port"]))
            pods.worker_job = manifests.worker_job(name, spec(workers), manifests.pod_metadata(template, name, "workers"),
                                                   nnodes - 1)
        return pods

    def pipes_client(self):
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient()

    def kube_apis(self):
        """(CoreV1Api, BatchV1Api), configured in the cluster or from the kubeconfig, as PipesK8sClient does."""
        import kubernetes

        if os.getenv("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config()
        return kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()

    def check_mounted(self) -> None:
        """The claim must be mounted in this pod too, at the same path: otherwise what the asset wrote there
        (the run folder, the extras) went to this pod's own disk, and the trainer pods would not see it."""
        if not os.path.ismount(self.mount_path):
            raise dg.Failure(f"{self.mount_path} (GCRP_SHARED_MOUNT) is not a mount point in the pod running this "
                             "step: mount the shared claim there in the code location and its runs (Helm values: "
                             "volumes, volumeMounts and includeConfigInLaunchedRuns)")

    def run_trainer(self, *, context: dg.AssetExecutionContext, hp: Mapping[str, Any],
                    command_for: Callable[[dict], list[str]], extras: Mapping[str, Any],
                    env: Mapping[str, str]) -> dg.PipesClientCompletedInvocation:
        self.check_mounted()
        pods = self.trainer_pods(hp=hp, command_for=command_for, extras=extras, env=env, run_id=context.run.run_id,
                                 namespace=self.resolved_namespace())
        context.log.info(f"trainer pod(s) {pods.name} in namespace {pods.namespace}: {hp.get('nnodes', 1)} node(s), "
                         f"{pods.gpus} GPU(s) each, image {self.image}")
        core = batch = None
        if pods.worker_job is not None:
            core, batch = self.kube_apis()
            core.create_namespaced_service(pods.namespace, pods.service)
        try:
            if pods.worker_job is not None:
                batch.create_namespaced_job(pods.namespace, pods.worker_job)
            return self.pipes_client().run(context=context, extras=dict(extras), namespace=pods.namespace,
                                           base_pod_meta=pods.pod_meta, base_pod_spec=pods.pod_spec)
        finally:
            if pods.worker_job is not None:
                _delete(lambda: batch.delete_namespaced_job(pods.name, pods.namespace,
                                                            propagation_policy="Background"))
                _delete(lambda: core.delete_namespaced_service(pods.name, pods.namespace))


def _delete(call: Callable[[], Any]) -> None:
    """Delete a training object; one already gone (or never created) is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise


def executor_kind(environ: Mapping[str, str] | None = None) -> str:
    kind = (os.environ if environ is None else environ).get("GCRP_EXECUTOR") or "in_process"
    if kind not in EXECUTORS:
        raise ValueError(f"GCRP_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}")
    return kind


def location_executor(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor of every job, read from GCRP_EXECUTOR when the location loads: `in_process` (default: one
    process runs the stages one after another, without re-importing torch for each) or `k8s` (each step in its
    own pod, `dagster_k8s.k8s_job_executor`; the `GPU_STEPS` on a GPU node, in the trainer image, placed by the
    trainer pod template)."""
    environ = os.environ if environ is None else environ
    if executor_kind(environ) == "in_process":
        return dg.in_process_executor
    from dagster_k8s import k8s_job_executor

    template = manifests.load_pod_template(environ.get("GCRP_TRAINER_POD_TEMPLATE", ""))
    step = manifests.gpu_step_config(template, image=environ.get("GCRP_TRAINER_IMAGE", ""),
                                     gpu_resource=manifests.DEFAULT_GPU_RESOURCE)
    return k8s_job_executor.configured({"per_step_k8s_config": {name: step for name in GPU_STEPS}},
                                       name="k8s_gpu_steps")

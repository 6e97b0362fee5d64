"""The multi-GPU ms-swift fine-tuning Job that reads the cache (runbook steps 5 and 6)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.cache_pod import CachePod, container, held_spec, job_manifest, pod_spec, scripts_mount
from mlcache.program.components.common import constructor_kwargs
from mlcache.program.components.durable_copy import durable_volume, restore_container
from mlcache.program.components.hub_credentials import HubCredentials, SecretEnv, secret_env_entries
from mlcache.program.components.security import scratch_mount
from mlcache.program.components.workers import PEER_STOP_SKIP, STOP_PEERS, service_account_name
from mlcache.program.components.workload_scripts import (
    PREFETCH_LIST,
    PREFETCH_SCRIPT,
    PREWARM_SCRIPT,
    cache_env,
    prefetch_markers,
)
from mlcache.program.names import GPUS_PER_NODE, QUEUE_LABEL, RUN_LABEL, SCRIPTS_PATH, SHM_PATH, worker_job_name
from mlcache.program.settings import TOKEN_ENV, CacheSettings, JobSettings, hide_secrets

CONTAINER = "sft"
PREFETCH_CONTAINER = "prefetch"
SHM_VOLUME = "dshm"
APP_LABEL = {"app": "ms-swift"}

BLOCK_MODE_WARNING = (
    "cache.volumeMode is Block: the Job gets the raw device at cache.devicePath (volumeDevices), not a "
    "filesystem. ms-swift cannot keep its model cache there unless the application reads the device "
    "itself; MODELSCOPE_CACHE and HF_HOME stay on the container's ephemeral disk, and so does the run's "
    "--output_dir (the trained weights), lost with the pod unless job.args sends it elsewhere."
)


def too_many_gpus_warning(job: JobSettings) -> str | None:
    """The warning for a pod that asks for more GPUs than a node of the platform has."""
    if job.gpus <= GPUS_PER_NODE:
        return None
    # Logs are kept in the clear, and job may be a secret key.
    return hide_secrets(
        f"job.gpus is {job.gpus}: each training pod asks for {job.gpus} GPUs on one node, and NRP's nodes have at "
        f"most {GPUS_PER_NODE}: there the pod stays Pending. For more GPUs, spread the run over nodes with job.nodes "
        "(job.gpus per node)."
    )


# Runs the training command once per run identity. A Job re-created for a run that already
# finished (garbage-collected by a TTL, dropped by `pulumi refresh`, re-created by `pulumi up`)
# finds the marker on the cache and exits 0 at once instead of training again. The prewarm (when
# MLCACHE_PREWARM names it) starts beside the training command, never before it: it reads the
# model into the page cache in load order, ahead of the loader, so loading waits only on the
# device or the loader itself (docs/coldstart.md). Its failure, slowness or hang changes nothing:
# the wrapper never waits for it and stops it when training ends. The shell stays PID 1 to write
# the marker, so it forwards SIGTERM to both for a clean shutdown (also one that arrives between
# starting a child and learning its PID).
RUN_ONCE_SCRIPT = """\
marker="$MLCACHE_RUN_MARKER"
if [ -e "$marker" ]; then
  echo "mlcache: run $MLCACHE_RUN_NAME already completed ($(cat "$marker")); marker $marker; nothing to do"
  exit 0
fi
stopping= child= prewarm=
trap 'stopping=1; for pid in $child $prewarm; do kill -TERM "$pid" 2>/dev/null; done' TERM INT
if [ -n "${MLCACHE_PREWARM:-}" ]; then
  python3 "$MLCACHE_PREWARM" -- "$@" </dev/null &
  prewarm=$!
fi
"$@" &
child=$!
[ -z "$stopping" ] || kill -TERM $child $prewarm 2>/dev/null
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
[ -z "$prewarm" ] || kill -TERM "$prewarm" 2>/dev/null
if [ "$status" -eq 0 ]; then
  mkdir -p "$(dirname "$marker")" && date -u +%Y-%m-%dT%H:%M:%SZ > "$marker.tmp" && mv "$marker.tmp" "$marker"
  echo "mlcache: run $MLCACHE_RUN_NAME completed; marker $marker"
fi
exit "$status"
"""
# Where a step can run between the trainer's end and the wrapper's exit (multi-node peers).
RUN_ONCE_EXIT = 'exit "$status"\n'


def run_once_script(on_failure: str = "") -> str:
    """The run-once wrapper; `on_failure` (shell, sees $status) runs before it exits."""
    return RUN_ONCE_SCRIPT.replace(RUN_ONCE_EXIT, on_failure + RUN_ONCE_EXIT)


def run_fingerprint(job: JobSettings, cache: CacheSettings) -> str:
    """Short hash of what the run computes: a changed image, command or argument is a new run."""
    identity = {
        "image": job.image,
        "command": [*job.command, *swift_args(job, cache)],
        "env": list(job.env),
        "gpus": job.gpus,
    }
    if job.nodes > 1:
        # A run on more nodes computes something else (its global batch): a new run. Absent on
        # one node, so single-node fingerprints (and markers already written) stay as they were.
        identity["nodes"] = job.nodes
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def completion_marker(job: JobSettings, cache: CacheSettings) -> str | None:
    """Path of the run's completion marker on the cache; Block mode has no filesystem to hold it."""
    if cache.is_block:
        return None
    return f"{cache.mount_path}/.mlcache/runs/{job.run_name}-{run_fingerprint(job, cache)}.done"


def output_dir(job: JobSettings, cache: CacheSettings) -> str:
    # Block mode has no filesystem to keep results on: they stay in the pod's scratch space.
    root = f"/tmp/{job.run_name}" if cache.is_block else cache.mount_path
    return f"{root}/output/{job.run_name}"


def swift_args(job: JobSettings, cache: CacheSettings) -> list[str]:
    """`swift sft` arguments: the configured ones, or a LoRA run of job.model on job.dataset."""
    if job.args is not None:
        return list(job.args)
    return [
        "--model",
        job.model,
        "--tuner_type",
        "lora",
        "--dataset",
        job.dataset,
        "--torch_dtype",
        "bfloat16",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "4",
        "--output_dir",
        output_dir(job, cache),
    ]


def container_env(job: JobSettings, cache: CacheSettings) -> dict[str, str]:
    # One node, N GPUs: NPROC_PER_NODE makes ms-swift run data-parallel instead of splitting
    # the model across the GPUs.
    return {"NPROC_PER_NODE": str(job.gpus), **cache_env(cache), **dict(job.env)}


def prefetch_container(pod: CachePod, token_env: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Init container: download cache.prefetch (listed in the scripts ConfigMap) before training starts."""
    job, cache = pod.job, pod.cache
    command = ["python", f"{SCRIPTS_PATH}/{PREFETCH_SCRIPT}", f"{SCRIPTS_PATH}/{PREFETCH_LIST}", prefetch_markers(cache)]
    mounts = [scripts_mount(), scratch_mount()]
    return container(
        pod, PREFETCH_CONTAINER, job.image, command, env=container_env(job, cache), secret_env=token_env, mounts=mounts
    )


def training_container(pod: CachePod, token_env: Sequence[dict[str, Any]]) -> dict[str, Any]:
    job, cache, worker = pod.job, pod.cache, pod.worker
    env = container_env(job, cache)
    worker_env = worker.launch_env(job.gpus) if worker else {}
    env = {name: value for name, value in env.items() if name not in worker_env}
    command, args = list(job.command), swift_args(job, cache)
    marker = completion_marker(job, cache)
    mounts = [{"name": SHM_VOLUME, "mountPath": SHM_PATH}, scratch_mount()]
    if marker:
        env.update(MLCACHE_RUN_NAME=job.run_name, MLCACHE_RUN_MARKER=marker)
        # A worker of engine jobs ends its peers when its training fails (Block mode runs the
        # command bare: no wrapper to do it, torch ends them).
        on_failure = STOP_PEERS if worker and worker.ends_peers else ""
        command, args = ["/bin/sh", "-c", run_once_script(on_failure), "mlcache-run-once"], command + args
        if on_failure:
            assert worker is not None, "only a worker ends its peers"
            worker_env["MLCACHE_PEER_JOBS"] = " ".join(worker.peers)
    if marker and pod.scripts is not None:
        # Always there in Filesystem mode: job.prewarm* edit the ConfigMap, never this template.
        env["MLCACHE_PREWARM"] = f"{SCRIPTS_PATH}/{PREWARM_SCRIPT}"
        mounts.append(scripts_mount())
    return container(
        pod, CONTAINER, job.image, command, args=args, env=env, secret_env=token_env, worker_env=worker_env, mounts=mounts
    )


def queue_labels(job: JobSettings) -> dict[str, str]:
    return {QUEUE_LABEL: job.queue} if job.queue else {}


def training_job_manifest(pod: CachePod, token_env: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The training Job; for a worker of a multi-node run, worker `index`'s Job (its claim is the
    pod's): it fails at its first failed pod (backoffLimit 0), since one worker restarted alone
    cannot rejoin a torch group that is already running."""
    job, worker = pod.job, pod.worker
    token_env = list(token_env)
    steps = [training_container(pod, token_env)]
    if pod.scripts is not None:
        # Always present in Filesystem mode: changing cache.prefetch then edits the ConfigMap
        # only, never the Job's pod template (which would replace, i.e. kill, the Job).
        steps.insert(0, prefetch_container(pod, token_env))
    # NCCL and dataloader workers need a large /dev/shm; it counts against job.memory.
    volumes = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": job.shm_size}}]
    if pod.durable_claim is not None:
        # Before the warm-up: a cache re-created after node loss gets the durable copy back.
        steps.insert(0, restore_container(pod))
        volumes.append(durable_volume(pod.durable_claim, read_only=True))
    skips = {}
    if token_env:
        skips["CKV_K8S_35"] = (
            "huggingface_hub and modelscope read their tokens only from HF_TOKEN and MODELSCOPE_API_TOKEN; "
            "the values come from the hub-tokens Secret by secretKeyRef, never inline"
            if all(entry["name"] in TOKEN_ENV.values() for entry in token_env)
            else "hub tokens and secretEnv values are read from the environment by design; "
            "the values come from Secrets by secretKeyRef, never inline"
        )
    spec = pod_spec(pod, steps, volumes=volumes)
    if worker:
        spec |= worker.network
    if worker and worker.ends_peers:
        spec |= {"serviceAccountName": service_account_name(job.run_name), "automountServiceAccountToken": True}
        skips |= PEER_STOP_SKIP
    return job_manifest(
        pod,
        worker_job_name(job.run_name, worker.index) if worker else job.run_name,
        spec,
        app_label=APP_LABEL,
        backoff_limit=0 if worker else job.backoff_limit,
        pod_labels={RUN_LABEL: job.run_name},
        job_labels=queue_labels(job) if worker else None,
        skip_await=not job.wait_for_completion,
        skips=skips,
    )


def job_options(parent: pulumi.Resource, job: JobSettings, held: bool = False) -> pulumi.ResourceOptions:
    """`held`: a move of the cache is under way, and training stays exactly as it is in the cluster
    until the switch (a changed image or command would replace it: a run again on the old claim)."""
    timeouts = pulumi.CustomTimeouts(create=job.wait_timeout, update=job.wait_timeout) if job.wait_for_completion else None
    # Never pulumi.com/replaceUnready: it would replace (kill) a Job that is still training.
    return pulumi.ResourceOptions(
        parent=parent, delete_before_replace=True, custom_timeouts=timeouts, ignore_changes=held_spec(held)
    )


class TrainingJob(pulumi.ComponentResource):
    """The ms-swift SFT Job, pinned like the cache it mounts."""

    def __init__(
        self,
        name: str,
        pod: CachePod,
        *,
        credentials: HubCredentials | None = None,
        secret_env: SecretEnv | None = None,
        held: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:TrainingJob", name, None, opts)
        job, cache = pod.job, pod.cache
        token_env = secret_env_entries(credentials, secret_env)
        manifest = training_job_manifest(pod, token_env)
        self.job = k8s.batch.v1.Job(f"{name}-job", opts=job_options(self, job, held), **constructor_kwargs(manifest))
        if cache.is_block:
            # Names the key, not its value: logs are kept in the clear, and cache may be a secret key.
            pulumi.log.warn(BLOCK_MODE_WARNING, resource=self)
        if warning := too_many_gpus_warning(job):
            pulumi.log.warn(warning, resource=self)
        self.name = self.job.metadata.name
        self.names = [self.name]
        self.run_marker = completion_marker(job, cache)
        self.register_outputs({"name": self.name, "run_marker": self.run_marker})

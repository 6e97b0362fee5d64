"""The multi-GPU ms-swift fine-tuning Job that reads the cache (runbook steps 5 and 6)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cache_volume import attach_cache, cache_volume
from components.common import constructor_kwargs, metadata
from components.hub_credentials import HubCredentials, secret_env
from components.placement import pod_scheduling, training_resources
from components.security import (
    SCRATCH_ENV,
    checkov_skips,
    container_security_context,
    image_skips,
    namespace_skip,
    pod_hardening,
    scratch_mount,
    scratch_volume,
)
from components.workload_scripts import (
    PREFETCH_LIST,
    PREFETCH_SCRIPT,
    SCRIPTS_VOLUME,
    prefetch_markers,
)
from names import POD_LABELS, RUN_LABEL, SCRIPTS_PATH, SHM_PATH, SKIP_AWAIT
from settings import CacheSettings, JobSettings, Placement

CONTAINER = "sft"
PREFETCH_CONTAINER = "prefetch"
SHM_VOLUME = "dshm"
APP_LABEL = {"app": "ms-swift"}

BLOCK_MODE_WARNING = (
    "cache.volumeMode is Block: the Job gets the raw device at {device} (volumeDevices), not a "
    "filesystem. ms-swift cannot keep its model cache there unless the application reads the device "
    "itself; MODELSCOPE_CACHE and HF_HOME stay on the container's ephemeral disk."
)


# Runs the training command once per run identity. A Job re-created for a run that already
# finished (garbage-collected by a TTL, dropped by `pulumi refresh`, re-created by `pulumi up`)
# finds the marker on the cache and exits 0 at once instead of training again. The shell stays
# PID 1 to write the marker, so it forwards SIGTERM to the trainer for a clean shutdown.
RUN_ONCE_SCRIPT = """\
marker="$MLCACHE_RUN_MARKER"
if [ -e "$marker" ]; then
  echo "mlcache: run $MLCACHE_RUN_NAME already completed ($(cat "$marker")); marker $marker; nothing to do"
  exit 0
fi
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
if [ "$status" -eq 0 ]; then
  mkdir -p "$(dirname "$marker")" && date -u +%Y-%m-%dT%H:%M:%SZ > "$marker.tmp" && mv "$marker.tmp" "$marker"
  echo "mlcache: run $MLCACHE_RUN_NAME completed; marker $marker"
fi
exit "$status"
"""


def run_fingerprint(job: JobSettings, cache: CacheSettings) -> str:
    """Short hash of what the run computes: a changed image, command or argument is a new run."""
    identity = {
        "image": job.image,
        "command": [*job.command, *swift_args(job, cache)],
        "env": list(job.env),
        "gpus": job.gpus,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def completion_marker(job: JobSettings, cache: CacheSettings) -> str | None:
    """Path of the run's completion marker on the cache; Block mode has no filesystem to hold it."""
    if cache.is_block:
        return None
    return f"{cache.mount_path}/.mlcache/runs/{job.run_name}-{run_fingerprint(job, cache)}.done"


def cache_env(cache: CacheSettings) -> dict[str, str]:
    """Where ms-swift keeps models and datasets: on the cache volume (Filesystem mode only)."""
    if cache.is_block:
        return {}
    return {"MODELSCOPE_CACHE": f"{cache.mount_path}/modelscope", "HF_HOME": f"{cache.mount_path}/huggingface"}


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
    return {**SCRATCH_ENV, "NPROC_PER_NODE": str(job.gpus), **cache_env(cache), **dict(job.env)}


def env_list(env: dict[str, str], token_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in env.items()] + list(token_env)


def prefetch_container(job: JobSettings, cache: CacheSettings, token_env: list[dict[str, Any]]) -> dict[str, Any]:
    """Init container: download cache.prefetch (listed in the scripts ConfigMap) before training starts."""
    spec = {
        "name": PREFETCH_CONTAINER,
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", f"{SCRIPTS_PATH}/{PREFETCH_SCRIPT}", f"{SCRIPTS_PATH}/{PREFETCH_LIST}", prefetch_markers(cache)],
        "env": env_list(container_env(job, cache), token_env),
        "resources": training_resources(job),
        "volumeMounts": [{"name": SCRIPTS_VOLUME, "mountPath": SCRIPTS_PATH, "readOnly": True}, scratch_mount()],
        "securityContext": container_security_context(job.run_as_user),
    }
    return attach_cache(spec, cache)


def container(job: JobSettings, cache: CacheSettings, token_env: list[dict[str, Any]]) -> dict[str, Any]:
    env = container_env(job, cache)
    command, args = list(job.command), swift_args(job, cache)
    marker = completion_marker(job, cache)
    if marker:
        env.update(MLCACHE_RUN_NAME=job.run_name, MLCACHE_RUN_MARKER=marker)
        command, args = ["/bin/sh", "-c", RUN_ONCE_SCRIPT, "mlcache-run-once"], command + args
    spec: dict[str, Any] = {
        "name": CONTAINER,
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "args": args,
        "env": env_list(env, token_env),
        "resources": training_resources(job),
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": SHM_PATH}, scratch_mount()],
        "securityContext": container_security_context(job.run_as_user),
    }
    return attach_cache(spec, cache)


def job_manifest(
    job: JobSettings,
    cache: CacheSettings,
    placement: Placement,
    namespace: str | None,
    claim_name: pulumi.Input[str],
    token_env: list[dict[str, Any]] = (),
    scripts: pulumi.Input[str] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        # Never: a failed pod is kept for its logs and the Job's backoffLimit decides retries.
        "restartPolicy": "Never",
        **pod_scheduling(job, placement),
        **pod_hardening(job.run_as_user),
        "containers": [container(job, cache, list(token_env))],
        "volumes": [
            cache_volume(claim_name),
            # NCCL and dataloader workers need a large /dev/shm; it counts against job.memory.
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": job.shm_size}},
            scratch_volume(),
        ],
    }
    if scripts is not None:
        # Always present in Filesystem mode: changing cache.prefetch then edits the ConfigMap
        # only, never the Job's pod template (which would replace, i.e. kill, the Job).
        pod_spec["initContainers"] = [prefetch_container(job, cache, list(token_env))]
        pod_spec["volumes"].append({"name": SCRIPTS_VOLUME, "configMap": {"name": scripts}})
    # Without skipAwait the provider waits for Complete: `pulumi up` would block for the whole
    # training run and then record the Job as failed to become live.
    annotations = {} if job.wait_for_completion else dict(SKIP_AWAIT)
    skips = {**namespace_skip(namespace), **image_skips(job.image)}
    if token_env:
        skips["CKV_K8S_35"] = (
            "huggingface_hub and modelscope read their tokens only from HF_TOKEN and MODELSCOPE_API_TOKEN; "
            "the values come from the hub-tokens Secret by secretKeyRef, never inline"
        )
    annotations.update(checkov_skips(skips))
    pod_labels = {**POD_LABELS, **APP_LABEL, RUN_LABEL: job.run_name}
    return {
        "metadata": metadata(job.run_name, namespace, labels=APP_LABEL, annotations=annotations),
        "spec": {
            "backoffLimit": job.backoff_limit,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def job_options(parent: pulumi.Resource, job: JobSettings) -> pulumi.ResourceOptions:
    timeouts = pulumi.CustomTimeouts(create=job.wait_timeout, update=job.wait_timeout) if job.wait_for_completion else None
    # Never pulumi.com/replaceUnready: it would replace (kill) a Job that is still training.
    return pulumi.ResourceOptions(parent=parent, delete_before_replace=True, custom_timeouts=timeouts)


class TrainingJob(pulumi.ComponentResource):
    """The ms-swift SFT Job, pinned like the cache it mounts."""

    def __init__(
        self,
        name: str,
        job: JobSettings,
        *,
        cache: CacheSettings,
        placement: Placement,
        namespace: str | None,
        claim_name: pulumi.Input[str],
        credentials: HubCredentials | None = None,
        scripts: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:TrainingJob", name, None, opts)
        token_env = secret_env(credentials.secret_name, credentials.keys) if credentials else []
        manifest = job_manifest(job, cache, placement, namespace, claim_name, token_env, scripts)
        self.job = k8s.batch.v1.Job(f"{name}-job", opts=job_options(self, job), **constructor_kwargs(manifest))
        if cache.is_block:
            pulumi.log.warn(BLOCK_MODE_WARNING.format(device=cache.device_path), resource=self)
        self.name = self.job.metadata.name
        self.run_marker = completion_marker(job, cache)
        self.register_outputs({"name": self.name, "run_marker": self.run_marker})

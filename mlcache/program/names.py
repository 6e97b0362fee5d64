"""Every name shared between the program, its tools and the policy pack, declared once.

Labels and annotation keys, namespaces and drivers of the systems mlcache drives, the names
mlcache gives its own objects and mount points, and the replace rules (which field changes
make the engine replace an object, which ones Kubernetes refuses to patch). A leaf module: it
imports nothing of the project, so settings, components and tools can all use it. The policy
pack (policy/, which cannot import the program) repeats a few of these; tests/test_names.py
pins its copies to this module.
"""

from __future__ import annotations

PROJECT = "mlcache"


def full_key(key: str) -> str:
    """A config key with its namespace: `zone` -> `mlcache:zone`; `kubernetes:context` as it is."""
    return key if ":" in key else f"{PROJECT}:{key}"


# The Kubernetes provider's config key for its default namespace: every object's without one of its own.
PROVIDER_NAMESPACE = "kubernetes:namespace"

# Node labels (well-known Kubernetes labels and NVIDIA's GPU feature discovery).
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# Labels on every object mlcache creates, and on every pod that mounts the cache (the ingress
# NetworkPolicy selects those pods by them).
LABELS = {"app.kubernetes.io/part-of": PROJECT, "app.kubernetes.io/managed-by": "pulumi"}
POD_LABELS = {"app.kubernetes.io/part-of": PROJECT}
# The run a training pod belongs to (value: the Job's name).
RUN_LABEL = "mlcache/job"
# Multi-node runs (job.nodes > 1): on every pod of the run, its workers and their benchmarks
# (value: the run's name; the zone and one-node-per-worker affinities select on it), and the
# worker index on each of those pods and on each worker's cache claim.
MULTINODE_RUN_LABEL = "mlcache/multinode-run"
WORKER_LABEL = "mlcache/worker"
# Kueue's queue label (job.queue), on what Kueue admits: each worker Job, or the JobSet.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# Where the storage settings put the cache, on the PVC: the policy pack checks that every pod
# mounting it is pinned to the same zone.
BACKEND_ANNOTATION = "mlcache/backend"
ZONE_ANNOTATION = "mlcache/zone"
# The placement the cache PVC was created for (`zone=ucsd gpuProduct=X`, zone=* when unpinned):
# kept by ignore_changes, so the policy pack sees where the claim's volume was bound; a change of
# it re-creates the claim while cache.relocate is on (bound_cache.py, docs/day2.md).
PLACEMENT_ANNOTATION = "mlcache/placement"
# Moves (cache.relocate copy): each move makes a new generation of the cache claim, copied from
# the one before and verified before training switches to it (bound_cache.py, docs/moving-the-cache.md).
# On the new claim: the claim it is copied from. On the copy pods: their component and role.
COPY_FROM_ANNOTATION = "mlcache/copy-from"
# On the new claim from the up that switches training to it (value: the claim copied from): the
# move is over, whatever becomes of the training Job, the copy Job or a claim cache.protect keeps.
SWITCHED_ANNOTATION = "mlcache/switched-from"
COPY_COMPONENT_LABEL = {"app.kubernetes.io/component": "cache-copy"}
COPY_ROLE_LABEL = "mlcache/copy-role"
COPY_LABEL = "mlcache/copy"  # value: the copy's name (names.copy_name)
# On the copy Jobs' pod templates: raised by the up after a failed copy, which replaces the Jobs (a retry resumes).
COPY_ATTEMPT_ANNOTATION = "mlcache/copy-attempt"
# On the copy Jobs' pod templates: the UID of the claim the copy fills. A verified copy counts for that
# claim only: one deleted and made again under the same name is empty, and the copy is made again.
COPY_INTO_UID_ANNOTATION = "mlcache/copy-into-uid"
COPY_PORT = 7700
# The longest cache.name a move can name its objects after (the copy Jobs' pods carry their Job's
# name as a label value, at most 63 characters: name + "-copy-g" + generation + "-send").
COPY_CACHE_NAME_MAX = 44
# The durable copy (cache.durableCopy): a replicated claim beside the cache, refreshed by a copy Job
# after each warm-up, restored from by the training pod into an empty cache (after node loss).
DURABLE_ROLE = "refresh"  # its copy pod's COPY_ROLE_LABEL
# On the refresh Job's pod template: the warm-up it copies (a new prefetch list is a new refresh).
WARMUP_ANNOTATION = "mlcache/warmup"
# On the durable refresh's pod: the copy script's content hash. A new script (a new record format)
# replaces the refresh Job, so the durable copy is refreshed and recorded by the script that restores it.
COPY_SCRIPT_ANNOTATION = "mlcache/copy-script"
# Kubernetes' marker of a node checked to be shut down (non-graceful node shutdown).
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
# Provider annotation: do not wait for readiness (exactly the string "true").
SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}
# On a Job with skipAwait the provider does not wait for a delete either; its default foreground
# delete leaves the old Job terminating, and a replacement's create then collides with it
# (server-side apply field conflict). Background: the Job goes at once, its pods after it.
DELETE_IN_BACKGROUND = {"pulumi.com/deletionPropagationPolicy": "background"}

# LINSTOR (piraeus operator v2) and the CSI driver.
LINSTOR_PROVISIONER = "linstor.csi.linbit.com"
LINSTOR_PARAMETER_PREFIX = "linstor.csi.linbit.com/"
LINSTOR_NAMESPACE = "piraeus-datastore"
LINSTOR_CONTROLLER = "deploy/linstor-controller"

# Objects mlcache names itself (the rest are named by settings).
SCRIPTS_CONFIG_MAP = "mlcache-scripts"
INGRESS_POLICY = "mlcache-deny-ingress"
# Multi-node runs: lets the workers reach each other through the ingress isolation.
WORKERS_POLICY = "mlcache-workers"


def generation_claim_name(cache_name: str, generation: int) -> str:
    """Generation 0 is cache.name (the runbook's claim, which existing stacks keep); each move adds one."""
    return cache_name if generation == 0 else f"{cache_name}-g{generation}"


def claim_generation(cache_name: str, claim_name: str) -> int | None:
    """The generation a claim's name gives, or None when it is not one of this cache's."""
    if claim_name == cache_name:
        return 0
    prefix = f"{cache_name}-g"
    suffix = claim_name[len(prefix) :]
    if claim_name.startswith(prefix) and suffix.isdigit() and not suffix.startswith("0"):
        return int(suffix)
    return None


def cache_name_of(claim_name: str) -> str:
    """cache.name, from any generation's claim name (the inverse of generation_claim_name)."""
    base, _, suffix = claim_name.rpartition("-g")
    return base if base and suffix.isdigit() and claim_generation(base, claim_name) else claim_name


def claim_resource_name(component: str, generation: int) -> str:
    """The claim's Pulumi resource name: generation 0 keeps the one every stack had before moves,
    so upgrading replaces nothing."""
    return f"{component}-pvc" if generation == 0 else f"{component}-pvc-g{generation}"


def copy_name(cache_name: str, generation: int) -> str:
    """The copy into generation `generation`: its Job (the receiver, or the one local copy pod), and
    with a suffix its sender Job, Service, NetworkPolicy, token Secret and script ConfigMap."""
    return f"{cache_name}-copy-g{generation}"


def durable_claim_name(cache_name: str) -> str:
    """The durable copy's claim (never a generation of the cache: claim_generation ignores it)."""
    return f"{cache_name}-durable"


def durable_refresh_name(cache_name: str) -> str:
    """The Job that refreshes the durable copy from the cache."""
    return f"{cache_name}-durable-refresh"


def hub_secret_name(job_name: str) -> str:
    return f"{job_name}-hub-tokens"


def secret_env_name(job_name: str) -> str:
    return f"{job_name}-secret-env"


# The storage benchmark's Jobs carry it (heal tells them from training Jobs by it).
BENCHMARK_APP_LABEL = {"app": "mlcache-benchmark"}


def benchmark_job_name(job_name: str) -> str:
    return f"{job_name}-storage-bench"


# Multi-node runs (job.nodes > 1): the names of each worker's objects.


def worker_claim_name(cache_name: str, index: int) -> str:
    """Worker 0 keeps the single-node claim, so raising job.nodes from 1 never touches it;
    the others are named from cache.name and their index, never from the run id (re-runs reuse them)."""
    return cache_name if index == 0 else f"{cache_name}-{index}"


def worker_job_name(run_name: str, index: int) -> str:
    """The worker's Job (engine jobs) or replicated job (engine jobset, without the run prefix)."""
    return f"{run_name}-worker-{index}"


def replicated_job_name(index: int) -> str:
    return f"worker-{index}"


def worker_hostname(run_name: str, index: int, engine: str) -> str:
    """The worker pod's stable hostname. JobSet names its pods' hosts itself:
    <jobset>-<replicated job>-<job index>-<pod index> (one Job, one pod per worker: -0-0)."""
    if engine == "jobset":
        return f"{run_name}-{replicated_job_name(index)}-0-0"
    return worker_job_name(run_name, index)


def workers_service_name(run_name: str) -> str:
    """The headless Service (and pod subdomain) of the workers; JobSet's default is its own name too."""
    return run_name


def longest_generated_name(run_name: str, nodes: int, engine: str) -> str:
    """The longest name Kubernetes must accept for this run: a hostname (jobs) or, for JobSet,
    a pod name with the Job controller's 5-character suffix (what JobSet's webhook checks)."""
    if engine == "jobset":
        return f"{worker_hostname(run_name, nodes - 1, engine)}-abcde"
    return worker_hostname(run_name, nodes - 1, engine)


# Mount points of the pods that mount the cache: cache.mountPath and cache.devicePath must stay
# clear of them (a collision is a pod the API server refuses, or a mount that hides another).
SCRATCH_PATH = "/tmp"
SHM_PATH = "/dev/shm"
SCRIPTS_PATH = "/opt/mlcache"
# A move's copy pods: the old claim (read-only) and the copy's token.
COPY_SOURCE_PATH = "/opt/mlcache-source"
COPY_TOKEN_PATH = "/opt/mlcache-token"
# The durable copy, in the training pod (read-only, its restore step) and the refresh pod.
DURABLE_PATH = "/opt/mlcache-durable"
POD_MOUNT_PATHS = (SCRATCH_PATH, SHM_PATH, SCRIPTS_PATH, COPY_SOURCE_PATH, COPY_TOKEN_PATH, DURABLE_PATH)
# The container runtime mounts these itself and refuses a volume on or under them, once the pod
# has been scheduled (its GPUs reserved); /dev only as a whole (devices and /dev/shm live below it).
RUNTIME_PATHS = ("/proc", "/sys")
RUNTIME_DEV = "/dev"

# Fields whose change the provider turns into a replacement, per kind (provider/pkg/metadata).
PROVIDER_REPLACES = {
    "*": ("metadata.name", "metadata.namespace"),
    "PersistentVolumeClaim": ("spec.accessModes", "spec.selector", "spec.storageClassName", "spec.volumeName"),
    "Job": ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
    "StorageClass": ("parameters", "provisioner"),
}
# Fields Kubernetes refuses to patch although the provider would try: the components ask for a
# replacement (replaceOnChanges) on exactly these; mlcache diff warns when one changes without it.
IMMUTABLE_FIELDS = {
    "PersistentVolumeClaim": ("spec.volumeMode",),
    "StorageClass": ("reclaimPolicy", "volumeBindingMode"),
}

# What a move by copy (cache.relocate copy) cannot carry: the settings refuse `copy` for these, and
# no refusal or preview offers it as the way out for them.
COPY_NEEDS_FILES = "a raw device holds no files to copy and verify"
COPY_NEEDS_ONE_NODE = "a copy moves a single-node cache (each worker's claim is not copied yet)"
COPY_NEEDS_NAME_ROOM = (
    f"the copy's objects are named after cache.name, which must be a DNS label starting with a letter of at "
    f"most {COPY_CACHE_NAME_MAX} characters"
)


def worker_benchmark_name(job_name: str, index: int) -> str:
    """Worker i's storage benchmark Job (worker 0 keeps the single-node name)."""
    return benchmark_job_name(job_name) if index == 0 else f"{benchmark_job_name(job_name)}-{index}"


# Facts of the nodes. The group that owns block devices (`disk`, GID 6 on Debian, Ubuntu, RHEL and
# their kin): a non-root pod reads and writes the cache's raw device (Block mode) through it.
DISK_GROUP = 6
# NRP's nodes carry at most 8 GPUs (platform convention): a pod asking for more waits for a node
# that has them, on such a cluster for ever.
GPUS_PER_NODE = 8

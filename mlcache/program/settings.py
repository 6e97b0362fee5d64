"""Typed stack settings: every `mlcache:*` config key declared once, parsed and validated here, once.

Each setting is one dataclass field below: `setting(kind, default, description)` gives its
type and constraint (the kind, see schema.py), its default and its description; its config
name is the field name in camelCase. Parsing, the `config:` block of Pulumi.yaml and
docs/configuration.md all derive from these declarations (`mlcache config`
rewrites both; a test fails when either is stale). Rules that tie settings together, and
the limits of the names derived from them, are in `_check`.

Nothing in `components/` re-checks a value: a bad key fails here, before any resource is
registered, with a one-line error naming the key, the value as typed and what is allowed.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from mlcache.program import schema
from mlcache.program.names import (
    COPY_CACHE_NAME_MAX,
    COPY_NEEDS_FILES,
    COPY_NEEDS_ONE_NODE,
    GPUS_PER_NODE,
    POD_MOUNT_PATHS,
    PROJECT,
    PROVIDER_NAMESPACE,
    RUNTIME_DEV,
    RUNTIME_PATHS,
    longest_generated_name,
    worker_benchmark_name,
    worker_claim_name,
)
from mlcache.program.schema import (
    DNS_LABEL_MAX,
    DNS_SUBDOMAIN_MAX,
    ENGINE_INT_MAX,
    INT32_MAX,
    AnyText,
    Choice,
    ConfigError,
    Flag,
    Integer,
    Kind,
    ListOf,
    Quantity,
    Section,
    Text,
    absolute_path,
    cli_text,
    closest,
    dns_label,
    dns_subdomain,
    go_duration,
    is_label_value,
    is_qualified_name,
    names_fit_after,
    parse_quantity,
    parse_section,
    paths_overlap,
    pattern,
    pinned_image,
    setting,
)
from workloads.shard_bench import parse_size  # the sizes as the pod's shard benchmark reads them

__all__ = ["ConfigError", "parse_quantity"]

NAMESPACE = PROJECT
RUNBOOK_ZONES = ("ucsd", "sdsu", "gatech", "chico", "humboldt", "ucmerced", "brookdale", "cau", "onenet", "udel")
DEFAULT_IMAGE = (
    "modelscope-registry.us-west-1.cr.aliyuncs.com/modelscope-repo/modelscope:"
    "ubuntu22.04-cuda12.9.1-py312-torch2.10.0-vllm0.19.1-modelscope1.35.4-swift4.1.3"
)
LINSTOR_LAYERS = ("drbd", "luks", "nvme", "cache", "writecache", "bcache", "storage")
FIO_PROFILES = ("seqread", "shards")
# LINSTOR refuses XFS volumes below 300 MiB.
XFS_MIN_BYTES = 300 * 2**20
# Set by the program from other settings (or, for tokens, from secrets): overriding them would
# desynchronise the Job from its config (NPROC_PER_NODE != gpus) or leak a token in plain text.
RESERVED_ENV = (
    "NPROC_PER_NODE",
    "MODELSCOPE_CACHE",
    "HF_HOME",
    "HF_TOKEN",
    "MODELSCOPE_API_TOKEN",
    "MLCACHE_RUN_NAME",
    "MLCACHE_RUN_MARKER",
    "MLCACHE_PREWARM",
    # The multi-node launch (job.nodes > 1) and the peers a failed worker ends.
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "MLCACHE_PEER_JOBS",
)
# What a `secure:` value of a stack file is offline (the tools cannot decrypt it; the rehearsal
# deploys it too): a value that fails a check is this placeholder, not the user's value.
SECURE_PLACEHOLDER = "offline-placeholder-for-a-secure-value"
# Secret keys -> the environment variable the hub clients read.
TOKEN_ENV = {"hfToken": "HF_TOKEN", "modelscopeToken": "MODELSCOPE_API_TOKEN"}
TOKEN_DESCRIPTIONS = {
    "hfToken": "Hugging Face token, set only with `pulumi config set --secret mlcache:hfToken` (plain text is "
    "refused); stored in a Kubernetes Secret, read by the Job as HF_TOKEN. Empty = none.",
    "modelscopeToken": "ModelScope token, set only with `pulumi config set --secret` (plain text is refused); "
    "stored in a Kubernetes Secret, read by the Job as MODELSCOPE_API_TOKEN. Empty = none.",
}
SECRET_KEYS = tuple(TOKEN_ENV)
# Secret environment variables of the training container: a top-level key of its own, so that its
# secrecy (Pulumi marks a whole top-level key secret) reaches only the Secret that holds the values.
SECRET_ENV_KEY = "secretEnv"
# Keys whose values are only ever given with --secret.
SECRET_TOP_KEYS = (*SECRET_KEYS, SECRET_ENV_KEY)
SECRET_ENV_DESCRIPTION = (
    "Secret environment variables of the training container (W&B keys, registry tokens), set only with "
    "`pulumi config set --secret --path mlcache:secretEnv.NAME VALUE` (plain text is refused); the values go "
    "to a Kubernetes Secret read by secretKeyRef, so the Job stays readable in previews. Empty = none."
)

# Workers of one run (job.nodes): each has its own cache and Job; more is beyond what one run of
# this program is meant for.
MAX_NODES = 64
# A model on a hub: [huggingface:|modelscope:]org/name (no prefix: ModelScope, ms-swift's default).
# A hub's repository id, owner/name. The hub caps the name at 96 characters; the owner is capped
# alike here, so that the list (below) has a bounded size.
MODEL_ID_PART_MAX = 96
_PART = f"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MODEL_ID_PART_MAX - 1}}}"
_MODEL_ID = f"(huggingface:|modelscope:)?{_PART}/{_PART}"
# The list goes into the scripts ConfigMap, which the API server caps at 1 MiB: 1000 ids take at most ~200 KB.
PREFETCH_MAX = 1000
# The share of cache.size a benchmark step's files may take (see the check).
BENCHMARK_SHARE = 0.9
# fio's size syntax: a whole number with an optional binary suffix (fio's default kb_base=1024).
_FIO_SIZE = pattern(
    r"[1-9][0-9]*[KMGT]?", "a whole number with an optional K, M, G or T suffix (binary, as fio reads them) such as 10G or 512M"
)


def _is_layer_list(value: str) -> bool:
    layers = value.split(" ")
    return layers[-1] == "storage" and all(layer in LINSTOR_LAYERS for layer in layers)


class _Optional(Kind):
    """A string where "" means unset (Pulumi.yaml's default for an unset top-level string), else
    the Text of `allowed` and `check`."""

    def __init__(self, allowed: str, check: Callable[[str], bool] | None = None):
        self.text = Text(allowed, check)
        self.allowed = allowed

    def parse(self, key: str, value: Any) -> str | None:
        return None if value == "" else self.text.parse(key, value)


def _class_name(default: str, description: str) -> Any:
    return setting(dns_subdomain(default, "StorageClass name"), default, description)


@dataclass(frozen=True)
class LinstorSettings:
    storage_class_name: str = _class_name("linstor-fast-cache", "Name of the LINSTOR StorageClass (made or referenced).")
    manage_storage_class: bool = setting(
        Flag(), True, "Create the class; false references an existing class of that name (no cluster-admin needed)."
    )
    replicas: int = setting(Integer(1, 255), 1, "placementCount: diskful replicas of each volume (1 = node-local).")
    storage_pool: str | None = setting(
        pattern(
            r"[A-Za-z0-9_][-A-Za-z0-9_]{0,47}( [A-Za-z0-9_][-A-Za-z0-9_]{0,47})*",
            "LINSTOR storage pool names separated by single spaces",
        ),
        None,
        "LINSTOR storage pool(s) to place volumes in; unset = the driver's choice.",
    )
    fs_type: str = setting(Choice("xfs", "ext4"), "xfs", "Filesystem of Filesystem-mode volumes (the operator defaults to ext4).")
    layer_list: str | None = setting(
        Text(
            "space-separated LINSTOR layers from " + ", ".join(LINSTOR_LAYERS) + ", ending in storage "
            "(e.g. 'storage' or 'drbd storage')",
            _is_layer_list,
        ),
        None,
        "LINSTOR layer stack; `storage` skips DRBD (fastest for one replica). Unset = the driver's default.",
    )
    allow_remote_volume_access: bool = setting(
        Flag(), False, "Let pods on other nodes attach the volume over the network (gives up zone-local reads)."
    )
    mount_options: tuple[str, ...] = setting(
        ListOf(pattern(r"[^\s,]+", "one mount option, no spaces or commas (e.g. noatime)"), "mount options, one per item"),
        ["noatime"],
        "Mount options of the class's volumes.",
    )
    reclaim_policy: str = setting(Choice("Delete", "Retain"), "Delete", "What happens to a volume when its claim is deleted.")
    allow_volume_expansion: bool = setting(Flag(), True, "Allow growing the cache online.")

    @property
    def made_class(self) -> str | None:
        """The class this stack creates (None: it references an existing one)."""
        return self.storage_class_name if self.manage_storage_class else None


@dataclass(frozen=True)
class RookCephSettings:
    storage_class_name: str = _class_name(
        "rook-ceph-block", "The existing Rook-Ceph StorageClass used when backend is rook-ceph."
    )


# cache.relocate: refuse, move by a verified copy, or re-create empty.
RELOCATE_MODES = ("false", "copy", "fresh")


@dataclass(frozen=True)
class CacheSettings:
    name: str = setting(dns_subdomain("ms-swift-cache-pvc", "PVC name"), "ms-swift-cache-pvc", "Name of the cache PVC.")
    size: str = setting(Quantity("100Gi"), "100Gi", "Requested size (300Mi at least for LINSTOR XFS).")
    volume_mode: str = setting(
        Choice("Filesystem", "Block"), "Filesystem", "Filesystem (mounted at mountPath) or Block (a raw device at devicePath)."
    )
    mount_path: str = setting(absolute_path(), "/cache", "Where the cache is mounted in Filesystem mode.")
    device_path: str = setting(absolute_path(), "/dev/cache", "Where the raw device appears in Block mode.")
    protect: bool = setting(Flag(), False, "Refuse any replace or delete of the cache (Pulumi protect).")
    relocate: str = setting(
        Choice(*RELOCATE_MODES, aliases={"true": "fresh"}),
        "false",
        "What a change of zone, GPU product, backend or cache.size does to a bound cache its volume cannot "
        "follow: false refuses it; copy moves the cache to a new claim, copied and verified before training "
        "switches to it (docs/moving-the-cache.md); fresh re-creates it empty (DATA LOSS; set it back to false afterwards).",
    )
    durable_copy: bool = setting(
        Flag(),
        False,
        "Keep a second, replicated copy of the models cache.prefetch downloads on the Rook-Ceph class "
        "(rookCeph.storageClassName), refreshed after each warm-up; after node loss the training pod restores from it "
        "at disk speed instead of downloading again (docs/moving-the-cache.md#node-loss-the-durable-copy). LINSTOR, "
        "Filesystem mode, one node, a non-empty cache.prefetch.",
    )
    prefetch: tuple[str, ...] = setting(
        ListOf(
            pattern(
                _MODEL_ID,
                f"a model id such as Qwen/Qwen3-VL-8B-Instruct or huggingface:org/name, owner and name of at most "
                f"{MODEL_ID_PART_MAX} characters",
            ),
            "model ids",
            max_items=PREFETCH_MAX,
        ),
        [],
        "Models downloaded onto the cache before training starts (Filesystem mode).",
    )

    @property
    def is_block(self) -> bool:
        return self.volume_mode == "Block"

    @property
    def relocates_fresh(self) -> bool:
        return self.relocate == "fresh"

    @property
    def relocates_copy(self) -> bool:
        return self.relocate == "copy"


@dataclass(frozen=True)
class Toleration:
    key: str | None = setting(Text("a label key such as nvidia.com/gpu", is_qualified_name), None, "Taint key to tolerate.")
    operator: str = setting(Choice("Equal", "Exists"), "Equal", "Equal (key and value) or Exists (key only).")
    value: str | None = setting(
        _Optional("a label value (at most 63 characters)", is_label_value), None, "Taint value (operator Equal; empty = unset)."
    )
    effect: str | None = setting(Choice("NoSchedule", "PreferNoSchedule", "NoExecute"), None, "Taint effect; unset = all.")
    toleration_seconds: int | None = setting(
        Integer(0, ENGINE_INT_MAX, "Pulumi carries larger numbers inexactly; leave it out to tolerate for ever"),
        None,
        "How long a NoExecute taint is tolerated before eviction; unset = for ever.",
    )


class _Tolerations(Kind):
    """A list of tolerations, checked by the API server's rules (ValidateTolerations)."""

    type_name = "list of objects"
    item_cls = Toleration
    allowed = "a list of tolerations (objects with " + ", ".join(schema.setting_names(Toleration)) + ")"

    def parse(self, key: str, value: Any) -> tuple[Toleration, ...]:
        if not isinstance(value, list):
            raise self.refuse(key, value)
        tolerations = []
        for index, item in enumerate(value):
            here = f"{key}[{index}]"
            t = parse_section(here, item, Toleration, prefix=f"{here}.")
            if t.key is None and t.operator != "Exists":
                given = isinstance(item, dict) and "operator" in item
                if not given:  # Equal is the default: what is missing is the taint's key
                    raise ConfigError(
                        f"{here}.key",
                        None,
                        "the key of the taint to tolerate (or operator Exists with no key, which tolerates every taint)",
                    )
                raise ConfigError(f"{here}.operator", t.operator, "Exists when the key is empty (it tolerates every taint)")
            if t.operator == "Exists" and t.value is not None:
                raise ConfigError(f"{here}.value", t.value, "no value with operator Exists")
            if t.toleration_seconds is not None and t.effect != "NoExecute":
                raise ConfigError(f"{here}.effect", t.effect, "NoExecute when tolerationSeconds is set")
            tolerations.append(t)
        return tuple(tolerations)


def env_name_problem(name: Any, taken: Collection[str] = (), taken_by: str = "") -> str | None:
    """What an environment variable's name must be, when `name` is not that (None when it is)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return (
            "an environment variable name of letters, digits and '_', not starting with a digit (the portable form "
            "shells and programs read; Kubernetes would take more)"
        )
    if name in RESERVED_ENV:
        return "a name mlcache does not set itself (it sets " + ", ".join(RESERVED_ENV) + ")"
    if name in taken:
        return f"a name {taken_by} does not set already"
    return None


class _Env(Kind):
    type_name = "map of strings"
    allowed = "a map of environment variable names to string values"

    def parse(self, key: str, value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise self.refuse(key, value)
        for name in value:
            if problem := env_name_problem(name):
                raise ConfigError.of_key(f"{key}.{name}", problem)
        return tuple(sorted((name, cli_text(f"{key}.{name}", item, "a string", booleans=True)) for name, item in value.items()))


@dataclass(frozen=True)
class JobSettings:
    enabled: bool = setting(Flag(), True, "Create the training Job.")
    name: str = setting(dns_label("sft-qwen3vl-fire-4gpu"), "sft-qwen3vl-fire-4gpu", "Name of the Job (with runId: name-runId).")
    image: str = setting(pinned_image(), DEFAULT_IMAGE, "Training image, pinned by tag or digest.")
    model: str = setting(Text("a non-empty string"), "Qwen/Qwen3-VL-8B-Instruct", "Model of the default `swift sft` run.")
    dataset: str = setting(Text("a non-empty string"), "AI-ModelScope/LaTeX_OCR#20000", "Dataset of the default run.")
    command: tuple[str, ...] = setting(
        ListOf(AnyText(), "strings such as [swift, sft]", non_empty=True), ["swift", "sft"], "The training command."
    )
    args: tuple[str, ...] | None = setting(
        ListOf(AnyText(), "strings"), None, "Arguments of the command; unset = a LoRA run of model on dataset."
    )
    gpus: int = setting(
        Integer(1, 64),
        4,
        f"GPUs of the pod (NPROC_PER_NODE); above {GPUS_PER_NODE}, a warning (NRP nodes have at most {GPUS_PER_NODE}).",
    )
    gpu_resource: str = setting(
        Text("an extended resource name such as nvidia.com/gpu or nvidia.com/a100", schema.is_extended_resource_name),
        "nvidia.com/gpu",
        "Resource name of the GPUs.",
    )
    gpu_product: str = setting(
        Text("a node label value (at most 63 characters) such as NVIDIA-A100-SXM4-80GB", is_label_value),
        "NVIDIA-A100-SXM4-80GB",
        "Required nvidia.com/gpu.product of the node.",
    )
    cpu: str = setting(Quantity("16 or 500m"), "16", "CPU request and limit.")
    memory: str = setting(Quantity("128Gi"), "128Gi", "Memory request and limit (must exceed shmSize).")
    shm_size: str = setting(Quantity("32Gi"), "32Gi", "Size of /dev/shm (counts against memory).")
    env: tuple[tuple[str, str], ...] = setting(_Env(), {}, "Extra environment variables (strings).")
    tolerations: tuple[Toleration, ...] = setting(_Tolerations(), [], "Tolerations of the pod.")
    priority_class_name: str | None = setting(
        dns_subdomain("opportunistic", "PriorityClass name"), None, "PriorityClass of the pod."
    )
    backoff_limit: int = setting(Integer(1), 2, "Retries of the Job.")
    wait_for_completion: bool = setting(Flag(), False, "Make `pulumi up` wait until the Job completes.")
    wait_timeout: str = setting(
        go_duration("24h or 90m"),
        "24h",
        "How long `pulumi up` waits when waitForCompletion is true.",
    )
    run_id: str | None = setting(
        dns_label('r2 or "2026-11-28" (quoted)', DNS_LABEL_MAX - 2),
        None,
        "Identity of one run: the Job is named name-runId, and a finished run is not repeated.",
    )
    run_as_user: int = setting(Integer(1, INT32_MAX), 10001, "UID (and GID, fsGroup) the pods run as.")
    nodes: int = setting(
        Integer(1, MAX_NODES),
        1,
        "Nodes of the run: one worker per node, each with its own cache claim, all in one zone (docs/multinode.md).",
    )
    engine: str = setting(
        Choice("jobs", "jobset"),
        "jobs",
        "With nodes > 1: one Job per worker (core Kubernetes) or one JobSet (needs the JobSet controller).",
    )
    queue: str | None = setting(
        dns_label("team-a", DNS_LABEL_MAX),
        None,
        "Kueue LocalQueue of the run (label kueue.x-k8s.io/queue-name); unset = no Kueue.",
    )
    prewarm: bool = setting(
        Flag(),
        True,
        "Beside training, read the model (its --model, prefetched by cache.prefetch) into the page cache "
        "ahead of the loader, within the memory headroom (Filesystem mode; docs/coldstart.md).",
    )
    prewarm_readers: int = setting(Integer(1, 64), 8, "Parallel readers of the prewarm.")
    prewarm_max_bytes: str | None = setting(
        Quantity("64Gi"), None, "Upper bound of the prewarm in bytes; unset = whatever fits in the memory headroom."
    )

    @property
    def run_name(self) -> str:
        """The Job's name: one run of job.name, identified by job.runId when set."""
        return f"{self.name}-{self.run_id}" if self.run_id else self.name


@dataclass(frozen=True)
class BenchmarkSettings:
    enabled: bool = setting(Flag(), False, "Create the storage benchmark Job (placed like the training Job).")
    profiles: tuple[str, ...] = setting(
        ListOf(Choice(*FIO_PROFILES), "fio profiles from " + ", ".join(FIO_PROFILES)),
        list(FIO_PROFILES),
        "fio profiles to run.",
    )
    fio_image: str | None = setting(pinned_image(), None, "fio image, pinned (required when profiles is not empty).")
    size: str = setting(_FIO_SIZE, "10G", "fio file size (seqread).")
    shard_load: bool = setting(Flag(), True, "Run the shard-loading benchmark with the training image.")
    shard_count: int = setting(Integer(1, 4096), 8, "Shards written and read.")
    shard_size: str = setting(_FIO_SIZE, "1G", "Size of each shard.")
    readers: int = setting(Integer(1, 1024), 8, "Parallel readers.")


@dataclass(frozen=True)
class Placement:
    """Where pods that use the cache may run: the GPU product, and the zone when pinned."""

    gpu_product: str
    zone: str | None


@dataclass(frozen=True)
class Settings:
    backend: str = setting(
        Choice("linstor", "rook-ceph"),
        "linstor",
        "Storage backend of the cache, linstor (zone-local, default) or rook-ceph (the rollback to an existing Rook-Ceph class).",
    )
    zone: str | None = setting(
        # Checked against mlcache:zones (node label values) in _check, whose line lists them.
        _Optional("a zone name, one of mlcache:zones"),
        "",
        "Zone to pin the training Job (and so the volume) to; empty lets the scheduler choose (runbook Option A).",
    )
    zones: tuple[str, ...] = setting(
        ListOf(Text("a node label value of at most 63 characters", is_label_value), "zone names", non_empty=True),
        list(RUNBOOK_ZONES),
        "Zones the cluster has (values of topology.kubernetes.io/zone); `zone` must be one of them.",
    )
    adopt: bool = setting(
        Flag(),
        False,
        "Import the runbook's kubectl-made StorageClass and PVC (ids linstor.storageClassName and namespace/cache.name) "
        "instead of creating them; needs namespace. Set back to false after the first up.",
    )
    namespace: str | None = setting(
        _Optional(dns_label("ml-training").allowed, dns_label("ml-training").check),
        "",
        "Namespace of the cache PVC and the Jobs (must exist); empty uses the kubeconfig's namespace.",
    )
    linstor: LinstorSettings = setting(Section(LinstorSettings), None, "LINSTOR StorageClass.")
    rook_ceph: RookCephSettings = setting(Section(RookCephSettings), None, "The rollback backend's existing class.")
    cache: CacheSettings = setting(Section(CacheSettings), None, "Cache PVC.")
    job: JobSettings = setting(Section(JobSettings), None, "Training Job.")
    benchmark: BenchmarkSettings = setting(
        Section(BenchmarkSettings), None, "Optional storage benchmark Job on the cache, placed like the training Job."
    )

    @property
    def is_linstor(self) -> bool:
        return self.backend == "linstor"

    @property
    def storage_class_name(self) -> str:
        """The class the cache PVC uses, whichever backend is selected."""
        return self.linstor.storage_class_name if self.is_linstor else self.rook_ceph.storage_class_name

    @property
    def manages_storage_class(self) -> bool:
        return self.is_linstor and self.linstor.manage_storage_class

    @property
    def placement(self) -> Placement:
        return Placement(gpu_product=self.job.gpu_product, zone=self.zone)


KEYS = schema.declarations(Settings)
STRUCTURED_KEYS = tuple(name for name, (_, d) in KEYS.items() if d.kind.pulumi_type in (None, "array"))
SCALAR_KEYS = tuple(name for name in KEYS if name not in STRUCTURED_KEYS)
KNOWN_KEYS = (*KEYS, *SECRET_KEYS, SECRET_ENV_KEY)


def _check_derived_name(key: str, base: str, derived: str, limit: int, why: str) -> None:
    """`base`, the setting at `key`, names the object `derived`, which must fit `limit` characters."""
    if len(derived) > limit:
        raise ConfigError(key, base, f"at most {limit - len(derived) + len(base)} characters {why}, within {limit}")


def _check_name_room(cache: CacheSettings, feature: str, objects: str) -> None:
    """cache.name must leave room for the names of the objects `feature` names after it."""
    if not names_fit_after(cache.name, COPY_CACHE_NAME_MAX):
        raise ConfigError(
            "cache.name",
            cache.name,
            f"with {feature}, a DNS label starting with a letter of at most {COPY_CACHE_NAME_MAX} characters "
            f"({objects} are named after it)",
        )


def _check_copy(cache: CacheSettings, job: JobSettings) -> None:
    """What a move by copy needs: files to copy, one claim, and room for the names of its objects."""
    if cache.is_block:
        raise ConfigError(
            "cache.relocate",
            "copy",
            f"false or fresh in Block mode: {COPY_NEEDS_FILES} (fresh re-creates it empty, DATA LOSS)",
        )
    if job.nodes > 1:
        raise ConfigError(
            "cache.relocate",
            "copy",
            f"false or fresh with job.nodes {job.nodes}: {COPY_NEEDS_ONE_NODE}",
        )
    _check_name_room(cache, "cache.relocate copy", "the copy's Jobs and Service")


def _check_durable(s: Settings) -> None:
    """What a durable copy needs: a cache that is not replicated already, files, one claim, a warm-up to
    follow, and room for the names of its objects."""
    cache, job = s.cache, s.job
    needs = (
        (not s.is_linstor, "false with backend rook-ceph: the cache is on the replicated class already"),
        (cache.is_block, "false in Block mode: a raw device holds no files to copy and restore"),
        (job.nodes > 1, f"false with job.nodes {job.nodes}: a durable copy keeps a single-node cache"),
        (not cache.prefetch, "false with an empty cache.prefetch: it keeps the models the warm-up downloads"),
    )
    for refused, allowed in needs:
        if refused:
            raise ConfigError("cache.durableCopy", True, allowed)
    _check_name_room(cache, "cache.durableCopy", "the durable copy's claim and Job")


def _check(s: Settings) -> None:
    """Rules that tie settings together, and the limits of the names derived from them."""
    if s.zone is not None and s.zone not in s.zones:
        allowed = "empty (the scheduler chooses) or one of mlcache:zones (the cluster's zones, a setting): "
        raise ConfigError("zone", s.zone, allowed + ", ".join(s.zones))
    if s.adopt and s.namespace is None:
        raise ConfigError("adopt", s.adopt, "false unless mlcache:namespace is set: the PVC's import id is <namespace>/<name>")
    linstor, cache, job, bench = s.linstor, s.cache, s.job, s.benchmark
    if linstor.replicas > 1 and linstor.layer_list and "drbd" not in linstor.layer_list.split():
        raise ConfigError(
            "linstor.layerList",
            linstor.layer_list,
            f"layers with drbd (such as 'drbd storage'): only DRBD replicates, and linstor.replicas is {linstor.replicas}",
        )
    if s.is_linstor and linstor.fs_type == "xfs" and not cache.is_block and parse_quantity(cache.size) < XFS_MIN_BYTES:
        raise ConfigError("cache.size", cache.size, "a Kubernetes quantity of at least 300Mi (the LINSTOR minimum for XFS)")
    path_key, path = ("cache.devicePath", cache.device_path) if cache.is_block else ("cache.mountPath", cache.mount_path)
    kernel = [p for p in RUNTIME_PATHS if paths_overlap(path, p)] + ([RUNTIME_DEV] if path == RUNTIME_DEV else [])
    if kernel:
        raise ConfigError(
            path_key,
            path,
            f"a path outside {', '.join(RUNTIME_PATHS)} and not {RUNTIME_DEV} itself (the runtime mounts {kernel[0]})",
        )
    taken = [p for p in POD_MOUNT_PATHS if paths_overlap(path, p)]
    if taken:
        raise ConfigError(
            path_key, path, f"a path clear of the pod's own mounts {', '.join(POD_MOUNT_PATHS)} (it overlaps {taken[0]})"
        )
    if cache.relocates_copy:
        _check_copy(cache, job)
    if cache.durable_copy:
        _check_durable(s)
    if cache.prefetch and cache.is_block:
        raise ConfigError(
            "cache.prefetch", list(cache.prefetch), "an empty list in Block mode: models are files, a raw device has none"
        )
    if parse_quantity(job.memory) <= parse_quantity(job.shm_size):
        raise ConfigError(
            "job.memory",
            job.memory,
            f"a quantity greater than job.shmSize ({job.shm_size}: /dev/shm counts against the memory limit)",
        )
    room = DNS_LABEL_MAX - len(job.name) - 1
    if job.run_id is not None and len(job.run_id) > room:
        raise ConfigError(
            "job.runId",
            job.run_id,
            f"a DNS label of at most {max(room, 0)} characters (the Job is named job.name-runId, at most 63)",
        )
    if job.nodes > 1:
        longest = longest_generated_name(job.run_name, job.nodes, job.engine)
        key, value = ("job.runId", job.run_id) if job.run_id else ("job.name", job.name)
        if len(longest) > DNS_LABEL_MAX or not job.run_name[0].isalpha():
            raise ConfigError(
                key,
                value,
                f"with job.nodes {job.nodes} (engine {job.engine}), a run name starting with a letter whose workers' "
                f"names fit {DNS_LABEL_MAX} characters (the longest, {longest}, has {len(longest)})",
            )
        _check_derived_name(
            "cache.name",
            cache.name,
            worker_claim_name(cache.name, job.nodes - 1),
            DNS_SUBDOMAIN_MAX,
            f"with job.nodes {job.nodes} (each worker's claim is named after it, the last "
            f"{worker_claim_name('cache.name', job.nodes - 1)})",
        )
    if bench.enabled:
        bench_name = worker_benchmark_name(job.name, job.nodes - 1)
        _check_derived_name("job.name", job.name, bench_name, DNS_LABEL_MAX, f"with the benchmark enabled (its Job {bench_name})")
        if bench.shard_load and cache.is_block:
            raise ConfigError("benchmark.shardLoad", True, "false in Block mode: shards are files, a raw device has none")
        # Each step's files are on the cache, one step at a time (Block mode: that much of the device is
        # read). The file system keeps part of the volume for itself (ext4 also 5% for root, which the
        # pods are not): a step may use at most BENCHMARK_SHARE of cache.size.
        share_text = f"at most {BENCHMARK_SHARE:.0%} of cache.size ({cache.size})"
        usable = parse_quantity(cache.size) * Decimal(str(BENCHMARK_SHARE))
        if "seqread" in bench.profiles and parse_size(bench.size) > usable:
            raise ConfigError("benchmark.size", bench.size, f"a size of {share_text}: fio's file is on the cache")
        for step, files in (("shards", bench.readers), ("shardLoad", bench.shard_count)):
            wanted = step in bench.profiles if step == "shards" else bench.shard_load
            if wanted and files * parse_size(bench.shard_size) > usable:
                counted = "benchmark.readers" if step == "shards" else "benchmark.shardCount"
                raise ConfigError(
                    "benchmark.shardSize",
                    bench.shard_size,
                    f"a size whose {counted} ({files}) files take {share_text} for the {step} step",
                )
        if bench.profiles and bench.fio_image is None:
            raise ConfigError(
                "benchmark.fioImage",
                None,
                "a pinned fio image (<registry>/<fio image>:<tag or @sha256:digest>): benchmark.enabled is true and "
                "benchmark.profiles is not empty",
            )
        if not bench.profiles and not bench.shard_load:
            raise ConfigError("benchmark.profiles", [], "at least one profile, or benchmark.shardLoad true")


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Build typed settings from decoded config values (None = unset)."""
    settings = parse_section(NAMESPACE, dict(raw), Settings)
    _check(settings)
    return settings


def check_keys(values: Mapping[str, Any]) -> None:
    """Refuse keys of this project that are not declared, and mistyped project prefixes."""

    for key in values:
        namespace, sep, name = key.partition(":")
        if not sep:
            continue
        if namespace == NAMESPACE:
            top = name.split(".")[0].split("[")[0]
            if top in KNOWN_KEYS and name != top:
                # `pulumi config set mlcache:job.gpus 8` without --path stores that literal key,
                # which nothing reads: the run would silently keep the default.
                flag = " --secret" if top in SECRET_TOP_KEYS else ""
                raise ConfigError.of_key(
                    key, f"a key set with --path (pulumi config set{flag} --path {key} ...): as typed it is never read"
                )
            if top not in KNOWN_KEYS:
                raise ConfigError.of_key(key, f"a key of this project: {', '.join(KNOWN_KEYS)}", closest(name, KNOWN_KEYS))
        elif namespace.lower() != NAMESPACE and difflib.SequenceMatcher(None, namespace.lower(), NAMESPACE).ratio() >= 0.75:
            top = name.split(".")[0].split("[")[0]
            meant = name if top in KNOWN_KEYS else closest(top, KNOWN_KEYS)
            raise ConfigError.of_key(key, f"the namespace {NAMESPACE}", f"{NAMESPACE}:{meant}" if meant else None)


def check_unset(key: str, path: Sequence[str | int]) -> None:
    """An unset (`--config KEY=`) of the top-level `key` at `path` below it names a key as a set
    does: a typo there is refused as it would be in a set, not dropped as a no-op."""
    check_keys({key: None})
    namespace, _, name = key.partition(":")
    if namespace == NAMESPACE and name in KEYS:
        schema.check_field_path(name, KEYS[name][1].kind, path)


def read_raw_config(config: pulumi.Config) -> dict[str, Any]:
    """Decode the non-secret keys of the project's config namespace (structured ones are JSON)."""
    check_keys({**runtime_config.get_config_env(), **runtime_config.CONFIG.get()})
    raw: dict[str, Any] = {key: config.get(key) for key in SCALAR_KEYS}
    for key in STRUCTURED_KEYS:
        text = config.get(key)
        if text is None:
            continue
        try:
            raw[key] = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(key, text, "structured config (an object or list)") from None
    return raw


def read_tokens(config: pulumi.Config | None = None) -> dict[str, pulumi.Output[str]]:
    """The hub tokens that are set, as secret Outputs keyed by the environment variable to fill.

    Pulumi.yaml defaults them to "" (a typed key without a default would be required in every
    stack), so empty means unset. A token stored in plain text is refused, without showing it.
    """
    config = config or pulumi.Config(NAMESPACE)
    tokens = {}
    for key, env in TOKEN_ENV.items():
        full_key = f"{NAMESPACE}:{key}"
        if not pulumi.runtime.get_config(full_key):
            continue
        if not pulumi.runtime.is_config_secret(full_key):
            raise ConfigError(key, None, f"a secret: pulumi config set --secret {full_key} <token>", secret=True)
        tokens[env] = config.require_secret(key)
    return tokens


def read_secret_env(settings: Settings, config: pulumi.Config | None = None) -> dict[str, pulumi.Output[str]]:
    """The `secretEnv` values, as secret Outputs keyed by their environment variable. The names are
    checked like job.env's (and may not repeat one of job.env); a value is never shown."""
    full_key = f"{NAMESPACE}:{SECRET_ENV_KEY}"
    text = pulumi.runtime.get_config(full_key)
    try:
        values = json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise ConfigError(SECRET_ENV_KEY, None, "an object of NAME: value", secret=True) from None
    if not values:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(SECRET_ENV_KEY, None, "an object of NAME: value", secret=True)
    if not pulumi.runtime.is_config_secret(full_key):
        raise ConfigError(
            SECRET_ENV_KEY, None, f"secret values: pulumi config set --secret --path {full_key}.NAME VALUE", secret=True
        )
    taken = {name for name, _ in settings.job.env}
    for name, value in values.items():
        if problem := env_name_problem(name, taken, "job.env"):
            raise ConfigError.of_key(f"{SECRET_ENV_KEY}.{name}", problem)
        if not isinstance(value, str):
            raise ConfigError(f"{SECRET_ENV_KEY}.{name}", None, "a string (quote numbers and booleans)", secret=True)
    whole = (config or pulumi.Config(NAMESPACE)).require_secret_object(SECRET_ENV_KEY)

    def value_of(name: str) -> pulumi.Output[str]:
        return whole.apply(lambda v: str(v[name]))

    return {name: value_of(name) for name in sorted(values)}


def secret_keys() -> frozenset[str]:
    """The keys of this project given as secrets (`--secret`, `secure:`): what they flow into stays secret."""
    return frozenset(key for key in KNOWN_KEYS if runtime_config.is_config_secret(f"{NAMESPACE}:{key}"))


def _secret_leaves() -> list[str]:
    """The text of every value under a secret key, to keep error lines clear of them."""
    leaves: list[str] = []
    for key in secret_keys():
        pending: list[Any] = [runtime_config.get_config(f"{NAMESPACE}:{key}")]
        with contextlib.suppress(TypeError, json.JSONDecodeError):  # structured keys arrive as JSON
            pending.append(json.loads(pending[0]))
        while pending:
            item = pending.pop()
            if isinstance(item, dict):
                pending += list(item.values())
            elif isinstance(item, list):
                pending += item
            elif item is not None and not isinstance(item, bool) and str(item):
                # Not a flag: `true` and `false` are in every remedy a line gives, and hide nothing.
                leaves.append(str(item))
    return leaves


# A secret value this short (a count) is hidden where it stands as a word of its own, not
# inside a longer one: replaced anywhere, a `4` would make `SXM4` read `SXM[secret]`, garbling the
# line and pointing at the secret. A longer value is hidden wherever it appears.
WHOLE_WORD_BELOW = 6


def hide_secrets(text: str) -> str:
    """A message with every value given as a secret replaced by [secret] (for lines that quote
    settings, such as the guard's placement record). Where values overlap, all of their characters
    are hidden, as one [secret]."""
    spans: list[tuple[int, int]] = []
    for leaf in set(_secret_leaves()):
        value = re.escape(leaf)
        pattern = rf"(?<![A-Za-z0-9]){value}(?![A-Za-z0-9])" if len(leaf) < WHOLE_WORD_BELOW else value
        # In a lookahead, so that overlapping occurrences of one value are all found.
        spans += [(m.start(1), m.end(1)) for m in re.finditer(f"(?=({pattern}))", text)]
    shown, end = [], -1  # spans that overlap or touch become one [secret]
    for start, stop in sorted(spans):
        if start > end:
            shown += [text[max(end, 0) : start], "[secret]"]
        end = max(end, stop)
    return "".join([*shown, text[max(end, 0) :]])


def _option_for(key: str) -> str:
    """How an offline tool is given the value of `key`: --secret takes text, so a whole object or
    list comes as YAML with --config (it stays secret: the stack file marks the key)."""
    name = key.partition(":")[2]
    kind = KEYS[name][1].kind if name in KEYS else None
    if isinstance(kind, Section):
        return f"--config '{name}={{...}}'"
    if kind is not None and kind.pulumi_type == "array":
        return f"--config '{name}=[...]'"
    return f"--secret {name}=VALUE"


# The settings that name the objects mlcache makes or imports. A name is part of its object's ID (namespace/name), which Pulumi's
# state, import IDs and the engine's messages hold in plain text: no name can be kept secret.
NAME_KEYS = ("namespace", "cache.name", "job.name", "job.runId", "linstor.storageClassName")


def _differs_from_default(settings: Settings, key: str) -> bool:
    """Whether the setting at a dotted key (`cache.name`) holds other than its declared default."""
    value: Any = settings
    for part in key.split("."):
        attribute, declaration = schema.declarations(type(value))[part]
        value = getattr(value, attribute)
    return (value or None) != (declaration.default or None)  # an empty value is the unset default


def refuse_plain_text_secrets(settings: Settings, secret: frozenset[str], provider_namespace_secret: bool = False) -> None:
    """A secret setting that the engine could only write in plain text is refused (one line, before
    anything is registered): a name given under a secret key (Pulumi tells the program only which
    top-level keys are secret, so any name given there may be the secret), the provider's namespace
    when it is every object's (mlcache:namespace unset), and a Job's custom timeout (job.waitTimeout,
    with job.waitForCompletion), which is a resource option."""
    if provider_namespace_secret and settings.namespace is None:
        raise ConfigError(
            PROVIDER_NAMESPACE,
            None,
            "a value given as plain text while mlcache:namespace is unset: the provider puts every object in it, "
            "and the namespace is part of each object's ID (namespace/name), which Pulumi's state holds in plain text",
            secret=True,
        )
    for key in NAME_KEYS:
        top = key.split(".")[0]
        if top in secret and _differs_from_default(settings, key):
            section = f"; keep secrets out of mlcache:{top} (secret environment variables go in mlcache:secretEnv)"
            raise ConfigError(
                key,
                None,
                "a value given as plain text: it names objects, and a name is part of each object's ID "
                "(namespace/name), which Pulumi's state holds in plain text, so it cannot be kept secret"
                + ("" if top == key else section),
                secret=True,
            )
    if "job" in secret and settings.job.wait_for_completion:
        raise ConfigError(
            "job.waitForCompletion",
            True,
            "false while mlcache:job holds a secret value: job.waitTimeout would be written to the state in plain "
            "text as the Job's custom timeout (put secret environment variables in mlcache:secretEnv: `pulumi "
            "config set --secret --path mlcache:secretEnv.NAME VALUE`)",
        )


def load_settings(config: pulumi.Config | None = None) -> Settings:
    """The settings; an error about a secret key shows neither its value nor, when it would hold one, the rule."""
    try:
        settings = parse_settings(read_raw_config(config or pulumi.Config(NAMESPACE)))
        provider_secret = runtime_config.is_config_secret(PROVIDER_NAMESPACE)
        refuse_plain_text_secrets(settings, secret_keys(), provider_secret)
        if settings.namespace is None and not provider_secret:
            # The provider puts every object there: a name the API server refuses fails each one at up.
            provider_namespace = runtime_config.get_config(PROVIDER_NAMESPACE)
            if provider_namespace and not schema.is_dns_label(provider_namespace):
                raise ConfigError(PROVIDER_NAMESPACE, provider_namespace, dns_label("ml-training").allowed)
        return settings
    except ConfigError as err:
        if err.value == SECURE_PLACEHOLDER:
            raise ConfigError.unreadable_secret(err.key, _option_for(err.key)) from None
        if err.about_key:
            raise
        secret = err.key.partition(":")[2].split(".")[0].split("[")[0] in secret_keys()
        quotes_a_secret = hide_secrets(err.allowed) != err.allowed
        if not secret and not quotes_a_secret:
            raise
        allowed = err.allowed
        if quotes_a_secret:
            allowed = "a valid value (the rule is not shown: it would show a secret value)"
        raise ConfigError(err.key, None if secret else err.value, allowed, secret=secret) from None


def pulumi_config() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block, derived from the declarations above."""
    secrets: dict[str, dict[str, Any]] = {
        key: {"type": "string", "default": "", "description": TOKEN_DESCRIPTIONS[key]} for key in SECRET_KEYS
    }
    secrets[SECRET_ENV_KEY] = {"default": {}, "description": SECRET_ENV_DESCRIPTION}
    return schema.pulumi_config_block(Settings, secrets)


def reference_rows() -> list[str]:
    rows = schema.reference_rows(Settings)
    rows += [
        f'| `{key}` | secret string | `""` | a secret (plain text is refused) | {TOKEN_DESCRIPTIONS[key]} |'
        for key in SECRET_KEYS
    ]
    rows.append(
        f"| `{SECRET_ENV_KEY}` | map of secret strings | `{{}}` | environment variable names other than job.env's; "
        f"secret values (plain text is refused) | {SECRET_ENV_DESCRIPTION} |"
    )
    return rows

"""Typed stack settings: every `mlcache:*` config key is parsed and validated here, once.

Nothing in `components/` re-checks a value: a bad key fails here, before any resource is
registered, with a one-line error naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pulumi

NAMESPACE = "mlcache"

BACKENDS = ("linstor", "rook-ceph")
VOLUME_MODES = ("Filesystem", "Block")
FS_TYPES = ("xfs", "ext4")
RECLAIM_POLICIES = ("Delete", "Retain")
LINSTOR_LAYERS = ("drbd", "luks", "nvme", "cache", "writecache", "bcache", "storage")
RUNBOOK_ZONES = (
    "ucsd",
    "sdsu",
    "gatech",
    "chico",
    "humboldt",
    "ucmerced",
    "brookdale",
    "cau",
    "onenet",
    "udel",
)
DEFAULT_IMAGE = (
    "modelscope-registry.us-west-1.cr.aliyuncs.com/modelscope-repo/modelscope:"
    "ubuntu22.04-cuda12.9.1-py312-torch2.10.0-vllm0.19.1-modelscope1.35.4-swift4.1.3"
)
# LINSTOR refuses XFS volumes below 300 MiB.
XFS_MIN_BYTES = 300 * 2**20

# Top-level keys: scalars are read as strings, the rest are JSON (Pulumi structured config).
SCALAR_KEYS = ("backend", "zone", "namespace", "adopt")
STRUCTURED_KEYS = ("zones", "linstor", "rookCeph", "cache", "job", "benchmark")
# Secret keys -> the environment variable the hub clients read.
TOKEN_ENV = {"hfToken": "HF_TOKEN", "modelscopeToken": "MODELSCOPE_API_TOKEN"}
SECRET_KEYS = tuple(TOKEN_ENV)
KNOWN_KEYS = SCALAR_KEYS + STRUCTURED_KEYS + SECRET_KEYS

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
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A model on a hub: [huggingface:|modelscope:]org/name (no prefix: ModelScope, ms-swift's default).
_MODEL_ID = re.compile(r"^(huggingface:|modelscope:)?[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# fio's size syntax: a whole number with an optional binary suffix (fio's default kb_base=1024).
_FIO_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]?$")
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$")
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}

LINSTOR_FIELDS = (
    "storageClassName",
    "manageStorageClass",
    "replicas",
    "storagePool",
    "fsType",
    "layerList",
    "allowRemoteVolumeAccess",
    "mountOptions",
    "reclaimPolicy",
    "allowVolumeExpansion",
)
JOB_FIELDS = (
    "enabled",
    "name",
    "image",
    "model",
    "dataset",
    "command",
    "args",
    "gpus",
    "gpuResource",
    "gpuProduct",
    "cpu",
    "memory",
    "shmSize",
    "env",
    "tolerations",
    "priorityClassName",
    "backoffLimit",
    "waitForCompletion",
    "waitTimeout",
    "runId",
    "runAsUser",
)
CACHE_FIELDS = ("name", "size", "volumeMode", "mountPath", "devicePath", "protect", "prefetch")
BENCHMARK_FIELDS = ("enabled", "profiles", "fioImage", "size", "shardLoad", "shardCount", "shardSize", "readers")
FIO_PROFILES = ("seqread", "shards")
ROOK_CEPH_FIELDS = ("storageClassName",)
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")
# Fields of each structured key.
FIELDS = {
    "linstor": LINSTOR_FIELDS,
    "rookCeph": ROOK_CEPH_FIELDS,
    "cache": CACHE_FIELDS,
    "job": JOB_FIELDS,
    "benchmark": BENCHMARK_FIELDS,
}


class ConfigError(pulumi.RunError):
    """A config value that is not allowed. RunError: the CLI prints it without a traceback."""

    def __init__(self, key: str, value: Any, allowed: str, *, secret: bool = False):
        self.key = f"{NAMESPACE}:{key}"
        self.value = value
        self.allowed = allowed
        shown = "[secret]" if secret else json.dumps(value)
        super().__init__(f"invalid config {self.key} = {shown}: expected {allowed}")


def parse_quantity(text: str) -> Decimal:
    """Value of a Kubernetes quantity ("100Gi" -> bytes, "500m" -> 0.5); ValueError if malformed."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(text)
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["num"])
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix in _DECIMAL:
            return number * _DECIMAL[suffix]
        if suffix:
            return number * Decimal(10) ** int(suffix[1:])
        return number
    except ArithmeticError as err:  # InvalidOperation, and Overflow of an exponent such as 1e999999999
        raise ValueError(text) from err


@dataclass(frozen=True)
class Toleration:
    key: str | None
    operator: str
    value: str | None
    effect: str | None
    toleration_seconds: int | None


@dataclass(frozen=True)
class LinstorSettings:
    storage_class_name: str
    manage_storage_class: bool
    replicas: int
    storage_pool: str | None
    fs_type: str
    layer_list: str | None
    allow_remote_volume_access: bool
    mount_options: tuple[str, ...]
    reclaim_policy: str
    allow_volume_expansion: bool


@dataclass(frozen=True)
class CacheSettings:
    name: str
    size: str
    volume_mode: str
    mount_path: str
    device_path: str
    protect: bool
    prefetch: tuple[str, ...]

    @property
    def is_block(self) -> bool:
        return self.volume_mode == "Block"


@dataclass(frozen=True)
class JobSettings:
    enabled: bool
    name: str
    image: str
    model: str
    dataset: str
    command: tuple[str, ...]
    args: tuple[str, ...] | None
    gpus: int
    gpu_resource: str
    gpu_product: str
    cpu: str
    memory: str
    shm_size: str
    env: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]
    priority_class_name: str | None
    backoff_limit: int
    wait_for_completion: bool
    wait_timeout: str
    run_id: str | None
    run_as_user: int

    @property
    def run_name(self) -> str:
        """The Job's name: one run of job.name, identified by job.runId when set."""
        return f"{self.name}-{self.run_id}" if self.run_id else self.name


@dataclass(frozen=True)
class BenchmarkSettings:
    enabled: bool
    profiles: tuple[str, ...]
    fio_image: str | None
    size: str
    shard_load: bool
    shard_count: int
    shard_size: str
    readers: int


@dataclass(frozen=True)
class Placement:
    """Where pods that use the cache may run: the GPU product, and the zone when pinned."""

    gpu_product: str
    zone: str | None


@dataclass(frozen=True)
class Settings:
    backend: str
    zone: str | None
    zones: tuple[str, ...]
    namespace: str | None
    linstor: LinstorSettings
    rook_ceph_storage_class_name: str
    cache: CacheSettings
    job: JobSettings
    benchmark: BenchmarkSettings
    adopt: bool

    @property
    def is_linstor(self) -> bool:
        return self.backend == "linstor"

    @property
    def storage_class_name(self) -> str:
        """The class the cache PVC uses, whichever backend is selected."""
        return self.linstor.storage_class_name if self.is_linstor else self.rook_ceph_storage_class_name

    @property
    def manages_storage_class(self) -> bool:
        return self.is_linstor and self.linstor.manage_storage_class

    @property
    def placement(self) -> Placement:
        return Placement(gpu_product=self.job.gpu_product, zone=self.zone)


class _Section:
    """Reads the fields of one structured key; an unknown field (a typo, usually) is refused up front."""

    def __init__(self, key: str, raw: Any, fields: tuple[str, ...]):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(key, raw, f"an object with the fields {', '.join(fields)}")
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", raw[unknown[0]], f"a known field of {key}: {', '.join(fields)}")
        self.key = key
        self.raw = raw

    def _get(self, field: str, default: Any) -> tuple[str, Any]:
        value = self.raw.get(field)
        return f"{self.key}.{field}", default if value is None else value

    def text(
        self, field: str, default: str | None, check: Callable[[str], bool] | None = None, allowed: str = "a non-empty string"
    ) -> str | None:
        key, value = self._get(field, default)
        if value is None:
            return None
        return _text(key, value, check, allowed)

    def choice(self, field: str, default: str, choices: tuple[str, ...]) -> str:
        key, value = self._get(field, default)
        return _choice(key, value, choices)

    def flag(self, field: str, default: bool) -> bool:
        key, value = self._get(field, default)
        return _flag(key, value)

    def integer(self, field: str, default: int, minimum: int) -> int:
        key, value = self._get(field, default)
        return _integer(key, value, minimum)

    def quantity(self, field: str, default: str, minimum: Decimal = Decimal(0), what: str = "") -> str:
        key, value = self._get(field, default)
        return _quantity(key, value, minimum, what)

    def texts(
        self, field: str, default: tuple[str, ...] | None, check: Callable[[str], bool], allowed: str
    ) -> tuple[str, ...] | None:
        key, value = self._get(field, default)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and check(v) for v in value):
            raise ConfigError(key, value, f"a list of {allowed}")
        return tuple(value)

    def path(self, field: str, default: str) -> str:
        key, value = self._get(field, default)
        return _text(key, value, _is_absolute_path, "an absolute path such as /cache (no '..', not '/')")


def _text(key: str, value: Any, check: Callable[[str], bool] | None, allowed: str) -> str:
    if not isinstance(value, str) or not value or (check is not None and not check(value)):
        raise ConfigError(key, value, allowed)
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(choices))
    return value


def _flag(key: str, value: Any) -> bool:
    # `pulumi config set` without --type stores booleans as the strings "true"/"false".
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ConfigError(key, value, "true or false")


def _integer(key: str, value: Any, minimum: int) -> int:
    allowed = f"a whole number >= {minimum}"
    if isinstance(value, bool):
        raise ConfigError(key, value, allowed)
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, allowed)
    return value


def _quantity(key: str, value: Any, minimum: Decimal, what: str) -> str:
    allowed = f"a Kubernetes quantity such as 100Gi or 500m, greater than {what or minimum}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(key, value, allowed)
    text = str(value)
    try:
        amount = parse_quantity(text)
    except ValueError:
        raise ConfigError(key, value, allowed) from None
    if amount <= minimum:
        raise ConfigError(key, value, allowed)
    return text


def _any_text(_: str) -> bool:
    return True


def _is_absolute_path(path: str) -> bool:
    parts = path.split("/")
    return path.startswith("/") and path != "/" and ".." not in parts and "" not in parts[1:]


def _is_pinned_image(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def _is_layer_list(value: str) -> bool:
    layers = value.split()
    return bool(layers) and layers[-1] == "storage" and all(layer in LINSTOR_LAYERS for layer in layers)


def _parse_linstor(raw: Any) -> LinstorSettings:
    s = _Section("linstor", raw, LINSTOR_FIELDS)
    replicas = s.integer("replicas", 1, minimum=1)
    layer_list = s.text(
        "layerList",
        None,
        _is_layer_list,
        "space-separated LINSTOR layers from "
        + ", ".join(LINSTOR_LAYERS)
        + ", ending in storage (e.g. 'storage' or 'drbd storage')",
    )
    if replicas > 1 and layer_list and "drbd" not in layer_list.split():
        raise ConfigError(
            "linstor.layerList", layer_list, f"a list with drbd: only DRBD replicates, and linstor.replicas is {replicas}"
        )
    return LinstorSettings(
        storage_class_name=s.text(
            "storageClassName", "linstor-fast-cache", _DNS_SUBDOMAIN.match, "a DNS subdomain name such as linstor-fast-cache"
        ),
        manage_storage_class=s.flag("manageStorageClass", True),
        replicas=replicas,
        storage_pool=s.text("storagePool", None, lambda v: bool(v.split()), "space-separated LINSTOR storage pool names"),
        fs_type=s.choice("fsType", "xfs", FS_TYPES),
        layer_list=layer_list,
        allow_remote_volume_access=s.flag("allowRemoteVolumeAccess", False),
        mount_options=s.texts(
            "mountOptions", ("noatime",), lambda v: bool(v) and "," not in v, "mount options, one per item (e.g. noatime)"
        ),
        reclaim_policy=s.choice("reclaimPolicy", "Delete", RECLAIM_POLICIES),
        allow_volume_expansion=s.flag("allowVolumeExpansion", True),
    )


def _parse_cache(raw: Any, fs_type: str | None) -> CacheSettings:
    s = _Section("cache", raw, CACHE_FIELDS)
    volume_mode = s.choice("volumeMode", "Filesystem", VOLUME_MODES)
    xfs = fs_type == "xfs" and volume_mode == "Filesystem"
    return CacheSettings(
        name=s.text("name", "ms-swift-cache-pvc", _DNS_SUBDOMAIN.match, "a DNS subdomain name such as ms-swift-cache-pvc"),
        size=s.quantity(
            "size",
            "100Gi",
            Decimal(XFS_MIN_BYTES - 1) if xfs else Decimal(0),
            "300Mi (the LINSTOR minimum for XFS)" if xfs else "0",
        ),
        volume_mode=volume_mode,
        mount_path=s.path("mountPath", "/cache"),
        device_path=s.path("devicePath", "/dev/cache"),
        protect=s.flag("protect", False),
        prefetch=_parse_prefetch(s, volume_mode),
    )


def _parse_prefetch(s: _Section, volume_mode: str) -> tuple[str, ...]:
    models = s.texts("prefetch", (), _MODEL_ID.match, "model ids such as Qwen/Qwen3-VL-8B-Instruct or huggingface:org/name")
    if models and volume_mode == "Block":
        raise ConfigError("cache.prefetch", list(models), "an empty list in Block mode: models are files, a raw device has none")
    return models


def _parse_benchmark(raw: Any, volume_mode: str) -> BenchmarkSettings:
    s = _Section("benchmark", raw, BENCHMARK_FIELDS)
    enabled = s.flag("enabled", False)
    profiles = s.texts("profiles", FIO_PROFILES, lambda v: v in FIO_PROFILES, "fio profiles from " + ", ".join(FIO_PROFILES))
    fio_image = s.text("fioImage", None, _is_pinned_image, "an fio image with an explicit tag other than latest, or a digest")
    shard_load = s.flag("shardLoad", True)
    if enabled and shard_load and volume_mode == "Block":
        raise ConfigError("benchmark.shardLoad", True, "false in Block mode: shards are files, a raw device has none")
    if enabled and profiles and fio_image is None:
        raise ConfigError("benchmark.fioImage", None, "a pinned fio image (tag or digest) when benchmark.profiles is not empty")
    if enabled and not profiles and not shard_load:
        raise ConfigError("benchmark.profiles", [], "at least one profile, or benchmark.shardLoad true")
    fio_size = "a size in fio's syntax such as 10G or 512M"
    return BenchmarkSettings(
        enabled=enabled,
        profiles=profiles,
        fio_image=fio_image,
        size=s.text("size", "10G", _FIO_SIZE.match, fio_size),
        shard_load=shard_load,
        shard_count=s.integer("shardCount", 8, minimum=1),
        shard_size=s.text("shardSize", "1G", _FIO_SIZE.match, fio_size),
        readers=s.integer("readers", 8, minimum=1),
    )


def _parse_tolerations(key: str, value: Any) -> tuple[Toleration, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(key, value, "a list of tolerations")
    tolerations = []
    for index, item in enumerate(value):
        s = _Section(f"{key}[{index}]", item, TOLERATION_FIELDS)
        operator = s.choice("operator", "Equal", ("Equal", "Exists"))
        seconds = s.raw.get("tolerationSeconds")
        tolerations.append(
            Toleration(
                key=s.text("key", None),
                operator=operator,
                value=s.text("value", None, allowed="a string (omit it with operator Exists)"),
                effect=None
                if s.raw.get("effect") is None
                else s.choice("effect", "", ("NoSchedule", "PreferNoSchedule", "NoExecute")),
                toleration_seconds=None if seconds is None else s.integer("tolerationSeconds", 0, minimum=0),
            )
        )
    return tuple(tolerations)


def _parse_env(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(key, value, "a map of environment variable names to string values")
    for name, item in value.items():
        if not _ENV_NAME.match(name) or name in RESERVED_ENV:
            raise ConfigError(f"{key}.{name}", item, "an environment variable name other than " + ", ".join(RESERVED_ENV))
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ConfigError(f"{key}.{name}", item, "a string value")
    return tuple((name, str(item)) for name, item in sorted(value.items()))


def _parse_job(raw: Any) -> JobSettings:
    s = _Section("job", raw, JOB_FIELDS)
    shm_size = s.quantity("shmSize", "32Gi")
    memory = s.quantity(
        "memory", "128Gi", parse_quantity(shm_size), f"job.shmSize ({shm_size}: /dev/shm counts against the memory limit)"
    )
    name = s.text(
        "name",
        "sft-qwen3vl-fire-4gpu",
        lambda v: bool(_DNS_LABEL.match(v)) and len(v) <= 63,
        "a DNS label of at most 63 characters such as sft-qwen3vl-fire-4gpu",
    )
    room = 63 - len(name) - 1
    run_id = s.text(
        "runId",
        None,
        lambda v: bool(_DNS_LABEL.match(v)) and len(v) <= room,
        f"a DNS label of at most {max(room, 0)} characters such as 2026-11-28 or r2 (the Job is named job.name-runId)",
    )
    return JobSettings(
        enabled=s.flag("enabled", True),
        name=name,
        image=s.text("image", DEFAULT_IMAGE, _is_pinned_image, "an image with an explicit tag other than latest, or a digest"),
        model=s.text("model", "Qwen/Qwen3-VL-8B-Instruct"),
        dataset=s.text("dataset", "AI-ModelScope/LaTeX_OCR#20000"),
        command=s.texts("command", ("swift", "sft"), _any_text, "strings") or _empty_command(),
        args=s.texts("args", None, _any_text, "strings"),
        gpus=s.integer("gpus", 4, minimum=1),
        gpu_resource=s.text(
            "gpuResource",
            "nvidia.com/gpu",
            _RESOURCE_NAME.match,
            "a qualified resource name such as nvidia.com/gpu or nvidia.com/a100",
        ),
        gpu_product=s.text(
            "gpuProduct",
            "NVIDIA-A100-SXM4-80GB",
            lambda v: len(v) <= 63 and bool(_LABEL_VALUE.match(v)),
            "a node label value such as NVIDIA-A100-SXM4-80GB",
        ),
        cpu=s.quantity("cpu", "16"),
        memory=memory,
        shm_size=shm_size,
        env=_parse_env("job.env", s.raw.get("env")),
        tolerations=_parse_tolerations("job.tolerations", s.raw.get("tolerations")),
        priority_class_name=s.text("priorityClassName", None, _DNS_SUBDOMAIN.match, "a PriorityClass name"),
        backoff_limit=s.integer("backoffLimit", 2, minimum=1),
        wait_for_completion=s.flag("waitForCompletion", False),
        wait_timeout=s.text("waitTimeout", "24h", _DURATION.match, "a duration such as 24h or 90m"),
        run_id=run_id,
        run_as_user=s.integer("runAsUser", 10001, minimum=1),
    )


def _empty_command() -> tuple[str, ...]:
    # The run-once wrapper execs the command itself, so the image's entrypoint cannot stand in.
    raise ConfigError("job.command", [], "a non-empty list such as [swift, sft]")


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Build typed settings from decoded config values (None = unset)."""
    backend = _choice("backend", raw.get("backend") or "linstor", BACKENDS)
    zones_raw = raw.get("zones")
    zones = RUNBOOK_ZONES if zones_raw is None else zones_raw
    if (
        not isinstance(zones, (list, tuple))
        or not zones
        or not all(isinstance(z, str) and _LABEL_VALUE.match(z) and z for z in zones)
    ):
        raise ConfigError("zones", zones_raw, "a non-empty list of zone names (node label values)")
    zone = raw.get("zone") or None
    if zone is not None and zone not in zones:
        raise ConfigError("zone", zone, "empty (the scheduler chooses) or one of the zones: " + ", ".join(zones))
    namespace = raw.get("namespace") or None
    if namespace is not None:
        _text("namespace", namespace, lambda v: bool(_DNS_LABEL.match(v)) and len(v) <= 63, "a DNS label such as ml-training")
    linstor = _parse_linstor(raw.get("linstor"))
    rook = _Section("rookCeph", raw.get("rookCeph"), ROOK_CEPH_FIELDS)
    rook_class = rook.text(
        "storageClassName", "rook-ceph-block", _DNS_SUBDOMAIN.match, "a StorageClass name such as rook-ceph-block"
    )
    cache = _parse_cache(raw.get("cache"), linstor.fs_type if backend == "linstor" else None)
    adopt = _flag("adopt", False if raw.get("adopt") is None else raw["adopt"])
    if adopt and namespace is None:
        raise ConfigError("adopt", adopt, "false unless mlcache:namespace is set: the PVC's import id is <namespace>/<name>")
    return Settings(
        adopt=adopt,
        backend=backend,
        zone=zone,
        zones=tuple(zones),
        namespace=namespace,
        linstor=linstor,
        rook_ceph_storage_class_name=rook_class,
        cache=cache,
        job=_parse_job(raw.get("job")),
        benchmark=_parse_benchmark(raw.get("benchmark"), cache.volume_mode),
    )


def read_raw_config(config: pulumi.Config) -> dict[str, Any]:
    """Decode the non-secret keys of the project's config namespace (structured ones are JSON)."""
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


def load_settings(config: pulumi.Config | None = None) -> Settings:
    return parse_settings(read_raw_config(config or pulumi.Config(NAMESPACE)))

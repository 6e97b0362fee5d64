"""Typed settings: defaults, and a clear error for every bad value of every key."""

from __future__ import annotations

import pytest
import yaml

from mlcache.program import reference as config_reference
from mlcache.program import schema
from mlcache.program.settings import (
    KNOWN_KEYS,
    RUNBOOK_ZONES,
    SECRET_ENV_KEY,
    SECRET_KEYS,
    ConfigError,
    Settings,
    check_keys,
    check_unset,
    parse_quantity,
    parse_settings,
)
from tests.conftest import ROOT


def test_defaults_follow_the_runbook():
    s = parse_settings({})
    assert s.backend == "linstor" and s.zone is None and s.zones == RUNBOOK_ZONES
    assert s.linstor.storage_class_name == "linstor-fast-cache" and s.linstor.replicas == 1
    assert s.linstor.fs_type == "xfs" and not s.linstor.allow_remote_volume_access
    assert s.cache.name == "ms-swift-cache-pvc" and s.cache.volume_mode == "Filesystem"
    assert s.cache.mount_path == "/cache" and s.cache.device_path == "/dev/cache"
    assert s.job.name == "sft-qwen3vl-fire-4gpu" and s.job.gpus == 4
    assert s.job.gpu_resource == "nvidia.com/gpu" and s.job.gpu_product == "NVIDIA-A100-SXM4-80GB"
    assert not s.job.wait_for_completion


def test_pulumi_yaml_and_the_reference_are_derived_from_the_declarations():
    """Pulumi.yaml's config block and docs/configuration.md come from settings.py; stale = fail."""
    assert config_reference.stale() == []
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(KNOWN_KEYS)
    assert all(declaration.get("description") for declaration in declared.values())


def test_every_declared_default_is_valid_and_is_what_an_empty_config_gets():
    """The defaults of Pulumi.yaml, as the CLI hands them over, parse to the same settings as none."""
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    raw = {key: d["default"] for key, d in declared.items() if key not in (*SECRET_KEYS, SECRET_ENV_KEY)}
    assert parse_settings(raw) == parse_settings({})


def test_a_stale_reference_is_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(config_reference, "REFERENCE", tmp_path / "configuration.md")
    (tmp_path / "configuration.md").write_text(config_reference.reference_text().replace("`100Gi`", "`200Gi`"))
    assert config_reference.stale() == [tmp_path / "configuration.md"]


BAD_VALUES = [
    ({"backend": "ceph"}, "backend", "linstor, rook-ceph"),
    ({"zone": "mars"}, "zone", "ucsd"),
    ({"zone": "ucsd", "zones": ["sdsu"]}, "zone", "sdsu"),
    ({"zones": []}, "zones", "non-empty list"),
    ({"zones": "ucsd"}, "zones", "list"),
    ({"namespace": "Bad_NS"}, "namespace", "DNS label"),
    ({"linstor": {"replicas": 0}}, "linstor.replicas", "from 1"),
    ({"linstor": {"replicas": "two"}}, "linstor.replicas", "from 1"),
    ({"linstor": {"replicas": 1.5}}, "linstor.replicas", "from 1"),
    ({"linstor": {"replicas": True}}, "linstor.replicas", "from 1"),
    ({"linstor": {"fsType": "ntfs"}}, "linstor.fsType", "xfs, ext4"),
    ({"linstor": {"layerList": "drbd,storage"}}, "linstor.layerList", "space-separated"),
    ({"linstor": {"layerList": "storage drbd"}}, "linstor.layerList", "ending in storage"),
    ({"linstor": {"replicas": 2, "layerList": "storage"}}, "linstor.layerList", "drbd"),
    ({"linstor": {"storageClassName": "Linstor_Fast"}}, "linstor.storageClassName", "DNS subdomain"),
    ({"linstor": {"manageStorageClass": "yes"}}, "linstor.manageStorageClass", "true or false"),
    ({"linstor": {"allowRemoteVolumeAccess": 0}}, "linstor.allowRemoteVolumeAccess", "true or false"),
    ({"linstor": {"reclaimPolicy": "Recycle"}}, "linstor.reclaimPolicy", "Delete, Retain"),
    ({"linstor": {"mountOptions": "noatime"}}, "linstor.mountOptions", "list"),
    ({"linstor": 3}, "linstor", "object"),
    ({"rookCeph": {"storageClassName": ""}}, "rookCeph.storageClassName", "StorageClass name"),
    ({"cache": {"volumeMode": "Blocky"}}, "cache.volumeMode", "Filesystem, Block"),
    ({"cache": {"size": "lots"}}, "cache.size", "quantity"),
    ({"cache": {"size": "-5Gi"}}, "cache.size", "quantity"),
    ({"cache": {"size": "0"}}, "cache.size", "quantity"),
    ({"cache": {"size": "100Mi"}}, "cache.size", "300Mi"),
    ({"cache": {"mountPath": "cache"}}, "cache.mountPath", "absolute path"),
    ({"cache": {"mountPath": "/"}}, "cache.mountPath", "absolute path"),
    ({"cache": {"devicePath": "/dev/../etc"}}, "cache.devicePath", "absolute path"),
    ({"cache": {"name": "Cache PVC"}}, "cache.name", "DNS subdomain"),
    ({"cache": {"protect": "maybe"}}, "cache.protect", "true or false"),
    ({"job": {"gpus": 0}}, "job.gpus", "from 1"),
    ({"job": {"gpus": 1.5}}, "job.gpus", "from 1"),
    ({"job": {"gpuResource": "gpu"}}, "job.gpuResource", "extended resource name"),
    ({"job": {"gpuProduct": "A100 80GB"}}, "job.gpuProduct", "label value"),
    ({"job": {"image": "modelscope:latest"}}, "job.image", "pinned by a tag"),
    ({"job": {"image": "modelscope"}}, "job.image", "pinned by a tag"),
    ({"job": {"name": "SFT_job"}}, "job.name", "DNS label"),
    ({"job": {"cpu": "many"}}, "job.cpu", "quantity"),
    ({"job": {"memory": "16Gi"}}, "job.memory", "job.shmSize"),
    ({"job": {"shmSize": "-1"}}, "job.shmSize", "quantity"),
    ({"job": {"env": {"A": {"b": 1}}}}, "job.env.A", "string"),
    ({"job": {"env": ["A=1"]}}, "job.env", "map"),
    ({"job": {"tolerations": [{"operator": "Maybe"}]}}, "job.tolerations[0].operator", "Equal, Exists"),
    ({"job": {"tolerations": [{"effect": "Never"}]}}, "job.tolerations[0].effect", "NoSchedule"),
    # The benchmark's files are on the cache: they must fit in it (fio's units are binary: 2G > 2Gi is false).
    (
        {"cache": {"size": "2Gi"}, "benchmark": {"enabled": True, "fioImage": "r/fio:3.35", "size": "3G", "shardLoad": False}},
        "benchmark.size",
        "a size of at most 90% of cache.size (2Gi)",
    ),
    (
        {"cache": {"size": "2Gi"}, "benchmark": {"enabled": True, "fioImage": "r/fio:3.35", "profiles": [], "shardCount": 3}},
        "benchmark.shardSize",
        "benchmark.shardCount (3) files take at most 90% of cache.size (2Gi) for the shardLoad step",
    ),
    (
        {"cache": {"size": "2Gi"}, "benchmark": {"enabled": True, "fioImage": "r/fio:3.35", "size": "1G", "readers": 3}},
        "benchmark.shardSize",
        "benchmark.readers (3) files take at most 90% of cache.size (2Gi) for the shards step",
    ),
    ({"benchmark": {"size": "10g"}}, "benchmark.size", "optional K, M, G or T suffix"),
    # Equal is the default operator: without a key, the key is what is missing, not an operator never typed.
    ({"job": {"tolerations": [{"effect": "NoSchedule"}]}}, "job.tolerations[0].key", "the key of the taint to tolerate"),
    ({"job": {"tolerations": [{"operator": "Equal"}]}}, "job.tolerations[0].operator", "Exists when the key is empty"),
    ({"job": {"tolerations": {"key": "a"}}}, "job.tolerations", "list"),
    ({"job": {"backoffLimit": 0}}, "job.backoffLimit", "from 1"),
    ({"job": {"waitForCompletion": "sometimes"}}, "job.waitForCompletion", "true or false"),
    ({"job": {"waitTimeout": "a day"}}, "job.waitTimeout", "duration"),
    ({"job": {"command": "swift sft"}}, "job.command", "list"),
    ({"job": {"enabled": "no"}}, "job.enabled", "true or false"),
    # As strict as the API server (issue 12 section 2).
    ({"cache": {"name": "c\n"}}, "cache.name", "DNS subdomain"),
    ({"job": {"name": "sft\n"}}, "job.name", "DNS label"),
    ({"cache": {"name": "c" * 254}}, "cache.name", "at most 253"),
    ({"linstor": {"storageClassName": "a" * 300}}, "linstor.storageClassName", "at most 253"),
    ({"job": {"name": "a" * 50}, "benchmark": {"enabled": True, "fioImage": "fio:3.36"}}, "job.name", "storage-bench"),
    ({"job": {"name": "a" * 40, "runId": "r" * 23}}, "job.runId", "at most 22"),
    ({"job": {"runAsUser": 2**31}}, "job.runAsUser", "2147483647"),
    ({"job": {"gpus": "0x10"}}, "job.gpus", "whole number"),
    ({"job": {"gpus": "1e1"}}, "job.gpus", "whole number"),
    ({"job": {"gpus": "010"}}, "job.gpus", "whole number"),
    ({"job": {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}}, "job.tolerations[0].value", "Exists"),
    ({"job": {"tolerations": [{"key": "a", "tolerationSeconds": 5}]}}, "job.tolerations[0].effect", "NoExecute"),
    # Beyond 2^53 the engine's float64 would change the number (2^63 - 1 arrives as -2^63: evict now).
    (
        {"job": {"tolerations": [{"key": "a", "effect": "NoExecute", "tolerationSeconds": 2**63 - 1}]}},
        "job.tolerations[0].tolerationSeconds",
        "leave it out to tolerate for ever",
    ),
    (
        {"job": {"tolerations": [{"key": "a", "effect": "NoExecute", "tolerationSeconds": "9007199254740993"}]}},
        "job.tolerations[0].tolerationSeconds",
        "from 0 to 9007199254740992",
    ),
    ({"job": {"tolerations": [{"operator": "Equal", "value": "b"}]}}, "job.tolerations[0].operator", "Exists when the key"),
    ({"job": {"tolerations": [{"key": "bad key!", "operator": "Exists"}]}}, "job.tolerations[0].key", "label key"),
    ({"job": {"tolerations": [{"key": "a", "value": "x" * 64}]}}, "job.tolerations[0].value", "label value"),
    ({"cache": {"mountPath": "/tmp"}}, "cache.mountPath", "/tmp"),
    ({"cache": {"mountPath": "/dev/shm"}}, "cache.mountPath", "/dev/shm"),
    ({"cache": {"mountPath": "/opt/mlcache"}}, "cache.mountPath", "/opt/mlcache"),
    ({"cache": {"mountPath": "/opt"}}, "cache.mountPath", "overlaps /opt/mlcache"),
    ({"cache": {"mountPath": "/tmp/cache"}}, "cache.mountPath", "overlaps /tmp"),
    ({"cache": {"mountPath": "/ca che"}}, "cache.mountPath", "absolute path"),
    ({"cache": {"volumeMode": "Block", "devicePath": "/dev/shm/x"}}, "cache.devicePath", "/dev/shm"),
    ({"cache": {"mountPath": "/proc/cache"}}, "cache.mountPath", "the runtime mounts /proc"),
    ({"cache": {"mountPath": "/sys"}}, "cache.mountPath", "the runtime mounts /sys"),
    ({"cache": {"mountPath": "/dev"}}, "cache.mountPath", "the runtime mounts /dev"),
    ({"cache": {"volumeMode": "Block", "devicePath": "/proc/x"}}, "cache.devicePath", "the runtime mounts /proc"),
    ({"job": {"image": "Repo/Img:1.0"}}, "job.image", "pinned"),
    ({"job": {"image": "repo img:1"}}, "job.image", "pinned"),
    ({"job": {"image": "repo/img:1:2"}}, "job.image", "pinned"),
    ({"job": {"image": "repo/img@sha256:zz"}}, "job.image", "pinned"),
    ({"job": {"image": "repo/img@sha256:" + "a" * 63}}, "job.image", "pinned"),
    ({"job": {"env": {"V": 1.1}}}, "job.env.V", "quote it (the Pulumi CLI reads an unquoted 1.10 as the number 1.1)"),
    ({"job": {"runId": "2026-11-28 00:00:00 +0000 UTC"}}, "job.runId", 'quote a date ("2026-11-28"'),
    ({"job": {"env": {"V": "a\x00b"}}}, "job.env.V", "no NUL character"),
    ({"job": {"env": {"BIG": 12345678901234567000}}}, "job.env.BIG", "carries a number this long inexactly"),
    ({"job": {"cpu": "0.5 "}}, "job.cpu", "quantity"),
    ({"cache": {"size": "1e999999999"}}, "cache.size", "quantity"),
    ({"linstor": {"mountOptions": ["noatime\n"]}}, "linstor.mountOptions[0]", "mount option"),
    ({"zones": ["ucsd", "bad zone"]}, "zones[1]", "label value"),
    ({"job": {"gpuResource": "kubernetes.io/gpu"}}, "job.gpuResource", "extended resource name"),
    ({"job": {"gpuResource": "nvidia.com/gpu/x"}}, "job.gpuResource", "extended resource name"),
]


@pytest.mark.parametrize(("raw", "key", "allowed"), BAD_VALUES, ids=[case[1] + ":" + str(case[0]) for case in BAD_VALUES])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(raw, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse_settings(raw)
    message = str(err.value)
    assert err.value.key == f"mlcache:{key}"
    assert f"mlcache:{key} = " in message
    assert allowed in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (
            {"job": {"gpu": 4}},
            "invalid config key mlcache:job.gpu (did you mean mlcache:job.gpus?): expected a known field of job: ",
        ),
        ({"cache": {"sise": "1Ti"}}, "invalid config key mlcache:cache.sise (did you mean mlcache:cache.size?): expected "),
        ({"cache": {"qqq": 1}}, "invalid config key mlcache:cache.qqq: expected a known field of cache: "),
        ({"linstor": {"replica": 2}}, "invalid config key mlcache:linstor.replica (did you mean mlcache:linstor.replicas?): "),
        (
            {"job": {"env": {"NPROC_PER_NODE": "8"}}},
            "invalid config key mlcache:job.env.NPROC_PER_NODE: expected a name mlcache does not set itself (it sets ",
        ),
        ({"job": {"env": {"HF_TOKEN": "1Ti"}}}, "invalid config key mlcache:job.env.HF_TOKEN: expected a name mlcache does "),
        (
            {"job": {"env": {"1A": "1Ti"}}},
            "invalid config key mlcache:job.env.1A: expected an environment variable name of letters, digits and '_', not "
            "starting with a digit",
        ),
    ],
)
def test_a_wrong_name_is_named_with_the_name_it_probably_meant_and_without_the_value(raw, line):
    with pytest.raises(ConfigError) as err:
        parse_settings(raw)
    assert str(err.value).startswith(line) and "1Ti" not in str(err.value)


def test_strings_from_pulumi_config_set_are_accepted():
    """`pulumi config set --path` without --type stores "2" and "true" as strings."""
    s = parse_settings({"linstor": {"replicas": "2", "manageStorageClass": "false"}, "cache": {"protect": "true"}})
    assert s.linstor.replicas == 2 and not s.linstor.manage_storage_class and s.cache.protect


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100Gi", 100 * 2**30),
        ("500Mi", 500 * 2**20),
        ("1G", 10**9),
        ("500m", 0.5),
        ("8", 8),
        ("1e3", 1000),
        ("1.5Gi", 1.5 * 2**30),
    ],
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["lots", "Gi", "1GB", "1 Gi", "--1", ""])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_ext4_or_block_lifts_the_xfs_minimum():
    assert parse_settings({"linstor": {"fsType": "ext4"}, "cache": {"size": "100Mi"}}).cache.size == "100Mi"
    assert parse_settings({"cache": {"size": "100Mi", "volumeMode": "Block"}}).cache.size == "100Mi"


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        ({"job": {"cpu": 0.5}}, lambda s: s.job.cpu == "0.5"),
        ({"job": {"cpu": "500m"}}, lambda s: s.job.cpu == "500m"),
        ({"job": {"env": {"UMASK": "0022", "V": "1.10"}}}, lambda s: dict(s.job.env) == {"UMASK": "0022", "V": "1.10"}),
        ({"job": {"env": {"N": 8, "DEBUG": True}}}, lambda s: dict(s.job.env) == {"N": "8", "DEBUG": "true"}),
        (
            {"job": {"args": ["--epochs", 3], "runId": 20261128}},
            lambda s: s.job.args == ("--epochs", "3") and s.job.run_id == "20261128",
        ),
        ({"job": {"image": "repo/img@sha256:" + "a" * 64}}, lambda s: s.job.image.endswith("a" * 64)),
        ({"job": {"image": "localhost:5000/img:1"}}, lambda s: s.job.image == "localhost:5000/img:1"),
        ({"job": {"runAsUser": 2**31 - 1}}, lambda s: s.job.run_as_user == 2**31 - 1),
        ({"job": {"tolerations": [{"operator": "Exists"}]}}, lambda s: s.job.tolerations[0].key is None),
        (
            {"job": {"tolerations": [{"key": "a", "effect": "NoExecute", "tolerationSeconds": 2**53}]}},
            lambda s: s.job.tolerations[0].toleration_seconds == 2**53,
        ),
        ({"job": {"tolerations": [{"key": "a", "value": ""}]}}, lambda s: s.job.tolerations[0].value is None),
        ({"job": {"name": "a" * 49}, "benchmark": {"enabled": True, "fioImage": "fio:3.36"}}, lambda s: s.benchmark.enabled),
        ({"cache": {"mountPath": "/cache/models"}}, lambda s: s.cache.mount_path == "/cache/models"),
    ],
)
def test_values_at_the_edge_of_what_kubernetes_allows_are_accepted(raw, check):
    assert check(parse_settings(raw))


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("mlcahce:backend", "(did you mean mlcache:backend?)"),
        ("mlcahce:bakend", "(did you mean mlcache:backend?)"),
        ("mlcache:zon", "did you mean mlcache:zone?"),
        ("mlcache:jobs", "did you mean mlcache:job?"),
    ],
)
def test_a_mistyped_key_is_refused_naming_the_key_it_probably_meant(key, hint):
    with pytest.raises(ConfigError) as err:
        check_keys({key: "linstor"})
    assert err.value.key == key and hint in str(err.value)


@pytest.mark.parametrize("key", ["mlcache:job.gpus", "mlcache:cache.size", "mlcache:zones[0]"])
def test_a_nested_key_set_without_path_is_refused_not_ignored(key):
    # What `pulumi config set mlcache:job.gpus 8` (no --path) stores: a literal key nothing reads.
    with pytest.raises(ConfigError) as err:
        check_keys({key: "8"})
    assert err.value.key == key and f"pulumi config set --path {key}" in str(err.value)


def test_a_secret_key_set_without_path_gets_the_secret_hint_and_its_value_is_not_shown():
    with pytest.raises(ConfigError) as err:
        check_keys({"mlcache:secretEnv.WANDB_API_KEY": "wandb-plain-7f3a"})
    assert "pulumi config set --secret --path mlcache:secretEnv.WANDB_API_KEY" in str(err.value)
    assert "wandb-plain-7f3a" not in str(err.value)


@pytest.mark.parametrize(
    ("key", "path", "line"),
    [
        ("mlcache:nosuch", [], "invalid config key mlcache:nosuch: expected a key of this project: backend, "),
        ("mlcache:cache", ["sise"], "invalid config key mlcache:cache.sise (did you mean mlcache:cache.size?): expected "),
        ("mlcache:linstor", ["replica"], "invalid config key mlcache:linstor.replica (did you mean mlcache:linstor.replicas?)"),
        (
            "mlcache:job",
            ["tolerations", 0, "kye"],
            "invalid config key mlcache:job.tolerations[0].kye (did you mean mlcache:job.tolerations[0].key?)",
        ),
        ("mlcahce:zone", [], "invalid config key mlcahce:zone (did you mean mlcache:zone?)"),
    ],
)
def test_an_unset_of_a_key_or_field_the_project_does_not_have_is_refused_as_a_set_is(key, path, line):
    with pytest.raises(ConfigError) as err:
        check_unset(key, path)
    assert str(err.value).startswith(line)


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("mlcache:cache", ["size"]),
        ("mlcache:zone", []),
        ("mlcache:zones", [0]),
        ("mlcache:job", ["env", "ANY_NAME"]),
        ("mlcache:job", ["tolerations", 0, "key"]),
        ("mlcache:secretEnv", ["ANY_NAME"]),
        ("mlcache:hfToken", []),
        ("kubernetes:context", []),
    ],
)
def test_an_unset_of_a_key_the_project_has_passes(key, path):
    check_unset(key, path)


def test_a_mistyped_namespace_with_an_unknown_key_suggests_nothing():
    with pytest.raises(ConfigError) as err:
        check_keys({"mlcahce:foo": "1"})
    assert str(err.value) == "invalid config key mlcahce:foo: expected the namespace mlcache"


def test_a_field_name_that_is_not_text_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        parse_settings({"cache": {1: "x"}})
    assert str(err.value).startswith("invalid config key mlcache:cache.1: expected a known field of cache: name, size")


def test_other_namespaces_are_left_alone():
    check_keys({"kubernetes:context": "gpu", "pulumi:tags": "{}", "aws:region": "x"})


def _declared_text_keys():
    """(key, a valid value) for every declared setting whose kind checks a string's whole text."""
    cases = []
    for name, (_, declaration) in schema.declarations(Settings).items():
        kinds = (
            [(f"{name}.{field}", d) for field, (_, d) in schema.declarations(declaration.kind.cls).items()]
            if isinstance(declaration.kind, schema.Section)
            else [(name, declaration)]
        )
        for key, d in kinds:
            checked = isinstance(d.kind, (schema.Choice, schema.Quantity)) or getattr(d.kind, "check", None) is not None
            if checked and isinstance(d.default, str) and d.default:
                cases.append((key, d.default))
    return cases


@pytest.mark.parametrize(("key", "valid"), _declared_text_keys())
def test_a_trailing_newline_is_refused_for_every_checked_string(key, valid):
    """Patterns match the whole value: `$` would let "value\\n" through into names and commands."""
    assert len(_declared_text_keys()) >= 20
    top, _, field = key.partition(".")
    raw = {top: {field: valid + "\n"} if field else valid + "\n"}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw)
    assert err.value.key == f"mlcache:{key}"


def test_no_whole_number_setting_can_allow_more_than_the_engine_carries_exactly():
    assert schema.Integer(0, 2**53).maximum == 2**53
    with pytest.raises(AssertionError):
        schema.Integer(0, 2**53 + 1)

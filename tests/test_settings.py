"""Typed settings: defaults, and a clear error for every bad value of every key."""

from __future__ import annotations

import pytest
import yaml

from settings import KNOWN_KEYS, RUNBOOK_ZONES, ConfigError, parse_quantity, parse_settings
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


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def test_pulumi_yaml_defaults_match_the_typed_defaults():
    """Pulumi.yaml documents the defaults; settings.py applies them. They must not drift."""
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    typed = parse_settings({})
    sections = {"linstor": typed.linstor, "cache": typed.cache, "job": typed.job}
    for section, values in sections.items():
        for field, default in declared[section]["default"].items():
            attribute = {"env": "env", "tolerations": "tolerations"}.get(field, field)
            actual = next(v for k, v in vars(values).items() if _camel(k) == attribute)
            if isinstance(actual, tuple):
                actual = dict(actual) if field == "env" else list(actual)
            assert actual == default, f"{section}.{field}: Pulumi.yaml says {default!r}, settings.py {actual!r}"
    assert declared["rookCeph"]["default"]["storageClassName"] == typed.rook_ceph_storage_class_name
    assert tuple(declared["zones"]["default"]) == typed.zones
    assert declared["backend"]["default"] == typed.backend


def test_every_key_is_declared_with_a_description():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(KNOWN_KEYS)
    for key, declaration in declared.items():
        assert declaration.get("description"), key


BAD_VALUES = [
    ({"backend": "ceph"}, "backend", "linstor, rook-ceph"),
    ({"zone": "mars"}, "zone", "ucsd"),
    ({"zone": "ucsd", "zones": ["sdsu"]}, "zone", "sdsu"),
    ({"zones": []}, "zones", "non-empty list"),
    ({"zones": "ucsd"}, "zones", "list"),
    ({"namespace": "Bad_NS"}, "namespace", "DNS label"),
    ({"linstor": {"replicas": 0}}, "linstor.replicas", ">= 1"),
    ({"linstor": {"replicas": "two"}}, "linstor.replicas", ">= 1"),
    ({"linstor": {"replicas": 1.5}}, "linstor.replicas", ">= 1"),
    ({"linstor": {"replicas": True}}, "linstor.replicas", ">= 1"),
    ({"linstor": {"fsType": "ntfs"}}, "linstor.fsType", "xfs, ext4"),
    ({"linstor": {"layerList": "drbd,storage"}}, "linstor.layerList", "space-separated"),
    ({"linstor": {"layerList": "storage drbd"}}, "linstor.layerList", "ending in storage"),
    ({"linstor": {"replicas": 2, "layerList": "storage"}}, "linstor.layerList", "drbd"),
    ({"linstor": {"storageClassName": "Linstor_Fast"}}, "linstor.storageClassName", "DNS subdomain"),
    ({"linstor": {"manageStorageClass": "yes"}}, "linstor.manageStorageClass", "true or false"),
    ({"linstor": {"allowRemoteVolumeAccess": 0}}, "linstor.allowRemoteVolumeAccess", "true or false"),
    ({"linstor": {"reclaimPolicy": "Recycle"}}, "linstor.reclaimPolicy", "Delete, Retain"),
    ({"linstor": {"mountOptions": "noatime"}}, "linstor.mountOptions", "list"),
    ({"linstor": {"replica": 2}}, "linstor.replica", "known field"),
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
    ({"job": {"gpus": 0}}, "job.gpus", ">= 1"),
    ({"job": {"gpus": 1.5}}, "job.gpus", ">= 1"),
    ({"job": {"gpuResource": "gpu"}}, "job.gpuResource", "qualified resource name"),
    ({"job": {"gpuProduct": "A100 80GB"}}, "job.gpuProduct", "label value"),
    ({"job": {"image": "modelscope:latest"}}, "job.image", "explicit tag"),
    ({"job": {"image": "modelscope"}}, "job.image", "explicit tag"),
    ({"job": {"name": "SFT_job"}}, "job.name", "DNS label"),
    ({"job": {"cpu": "many"}}, "job.cpu", "quantity"),
    ({"job": {"memory": "16Gi"}}, "job.memory", "job.shmSize"),
    ({"job": {"shmSize": "-1"}}, "job.shmSize", "quantity"),
    ({"job": {"env": {"NPROC_PER_NODE": "8"}}}, "job.env.NPROC_PER_NODE", "other than"),
    ({"job": {"env": {"HF_TOKEN": "hf_x"}}}, "job.env.HF_TOKEN", "other than"),
    ({"job": {"env": {"A": {"b": 1}}}}, "job.env.A", "string"),
    ({"job": {"env": ["A=1"]}}, "job.env", "map"),
    ({"job": {"tolerations": [{"operator": "Maybe"}]}}, "job.tolerations[0].operator", "Equal, Exists"),
    ({"job": {"tolerations": [{"effect": "Never"}]}}, "job.tolerations[0].effect", "NoSchedule"),
    ({"job": {"tolerations": {"key": "a"}}}, "job.tolerations", "list"),
    ({"job": {"backoffLimit": 0}}, "job.backoffLimit", ">= 1"),
    ({"job": {"waitForCompletion": "sometimes"}}, "job.waitForCompletion", "true or false"),
    ({"job": {"waitTimeout": "a day"}}, "job.waitTimeout", "duration"),
    ({"job": {"command": "swift sft"}}, "job.command", "list"),
    ({"job": {"enabled": "no"}}, "job.enabled", "true or false"),
    ({"job": {"gpu": 4}}, "job.gpu", "known field"),
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

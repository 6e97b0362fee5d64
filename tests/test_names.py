"""One names module: the policy pack's copies (it cannot import the program) are pinned to it,
and the components ask for replacement on exactly the fields Kubernetes makes immutable."""

from __future__ import annotations

import sys

from mlcache.program import names
from mlcache.program.components.cache_volume import REPLACE_ON_CHANGES as PVC_REPLACES
from mlcache.program.components.storage_class import REPLACE_ON_CHANGES as CLASS_REPLACES
from tests.conftest import ROOT, only, rendered

sys.path.insert(0, str(ROOT / "policy"))
import policies


def test_the_policy_packs_copies_match_the_names_module():
    assert policies.ZONE_LABEL == names.ZONE_LABEL
    assert policies.BACKEND_ANNOTATION == names.BACKEND_ANNOTATION
    assert policies.ZONE_ANNOTATION == names.ZONE_ANNOTATION
    assert policies.PLACEMENT_ANNOTATION == names.PLACEMENT_ANNOTATION
    assert policies.GPU_PRODUCT_LABEL == names.GPU_PRODUCT_LABEL
    assert policies.LINSTOR_PROVISIONER == names.LINSTOR_PROVISIONER
    assert policies.LINSTOR_PARAMETER == names.LINSTOR_PARAMETER_PREFIX
    assert policies.MULTINODE_RUN_LABEL == names.MULTINODE_RUN_LABEL
    assert policies.WORKER_LABEL == names.WORKER_LABEL
    assert policies.HOSTNAME_LABEL == names.HOSTNAME_LABEL
    assert policies.COPY_COMPONENT_LABEL == names.COPY_COMPONENT_LABEL
    assert names.durable_claim_name("c") == f"c{policies.DURABLE_CLAIM_SUFFIX}"


def test_components_replace_on_the_immutable_fields():
    assert tuple(PVC_REPLACES) == names.IMMUTABLE_FIELDS["PersistentVolumeClaim"]
    assert tuple(CLASS_REPLACES) == names.IMMUTABLE_FIELDS["StorageClass"]
    run = rendered("prod")
    assert only(run, "PersistentVolumeClaim").replace_on_changes == list(names.IMMUTABLE_FIELDS["PersistentVolumeClaim"])
    assert only(run, "StorageClass").replace_on_changes == list(names.IMMUTABLE_FIELDS["StorageClass"])


def test_derived_names_are_the_rendered_ones():
    run = rendered("dev", "benchmark.enabled=true", "benchmark.fioImage=fio:3.36", secrets=("hfToken=hf_x",))
    objects = {(r.kind, r.object_name) for r in run.kubernetes_objects()}
    job = "sft-qwen3vl-fire-4gpu"
    assert {
        ("Job", names.benchmark_job_name(job)),
        ("Secret", names.hub_secret_name(job)),
        ("ConfigMap", names.SCRIPTS_CONFIG_MAP),
        ("NetworkPolicy", names.INGRESS_POLICY),
    } <= objects

"""The program under the mock engine, loading the real Pulumi.dev.yaml and Pulumi.prod.yaml.

Resource options and dependencies come from the captured RegisterResource requests.
"""

from __future__ import annotations

import pytest

from mlcache.preview.mock_engine import ProgramRun, run_program
from mlcache.preview.stack_config import load_stack_config
from mlcache.program.names import GPU_PRODUCT_LABEL, ZONE_LABEL
from mlcache.program.settings import ConfigError
from tests.conftest import env_of, main_container, only, pod_spec, rendered

LINSTOR = "linstor.csi.linbit.com/"


# 1. LINSTOR StorageClass


def test_linstor_storage_class(stack):
    sc = only(rendered(stack), "StorageClass").inputs
    assert sc["provisioner"] == "linstor.csi.linbit.com"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["parameters"][f"{LINSTOR}placementCount"] == "1"
    assert sc["parameters"][f"{LINSTOR}allowRemoteVolumeAccess"] == "false"
    assert sc["parameters"]["csi.storage.k8s.io/fstype"] == "xfs"
    assert all(isinstance(v, str) for v in sc["parameters"].values())
    assert sc["allowVolumeExpansion"] is True


def test_replicas_pool_and_layers_become_string_parameters():
    run = rendered("dev", "linstor.replicas=3", "linstor.storagePool=nvme-pool", "linstor.layerList=drbd storage")
    params = only(run, "StorageClass").inputs["parameters"]
    assert params[f"{LINSTOR}placementCount"] == "3"
    assert params[f"{LINSTOR}storagePool"] == "nvme-pool"
    assert params[f"{LINSTOR}layerList"] == "drbd storage"


def test_storage_class_replaces_on_immutable_fields():
    sc = only(rendered("dev"), "StorageClass")
    assert sc.delete_before_replace
    assert set(sc.replace_on_changes) == {"reclaimPolicy", "volumeBindingMode"}


def test_no_storage_class_for_rook_ceph_or_an_unmanaged_class():
    rook = rendered("dev", "backend=rook-ceph")
    assert rook.find("StorageClass") == []
    assert only(rook, "PersistentVolumeClaim").inputs["spec"]["storageClassName"] == "rook-ceph-block"
    unmanaged = rendered("dev", "linstor.manageStorageClass=false", "linstor.storageClassName=shared-linstor")
    assert unmanaged.find("StorageClass") == []
    assert only(unmanaged, "PersistentVolumeClaim").inputs["spec"]["storageClassName"] == "shared-linstor"
    assert only(unmanaged, "PersistentVolumeClaim").dependencies == []


# 2. Cache PVC


def test_cache_pvc(stack):
    run = rendered(stack)
    pvc = only(run, "PersistentVolumeClaim")
    spec = pvc.inputs["spec"]
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["storageClassName"] == "linstor-fast-cache"
    assert spec["volumeMode"] == "Filesystem"
    assert pvc.object_name == "ms-swift-cache-pvc"


def test_pvc_depends_on_the_class_without_taking_its_output():
    """A class replacement (say, a replica change) must not cascade into replacing the cache."""
    run = rendered("dev")
    pvc = only(run, "PersistentVolumeClaim")
    sc = only(run, "StorageClass")
    assert sc.urn in pvc.dependencies
    assert all(sc.urn not in urns for urns in pvc.property_dependencies.values())


def test_volume_mode_change_is_a_delete_then_create_replacement():
    pvc = only(rendered("dev", "cache.volumeMode=Block"), "PersistentVolumeClaim")
    assert pvc.inputs["spec"]["volumeMode"] == "Block"
    assert "spec.volumeMode" in pvc.replace_on_changes
    assert pvc.delete_before_replace


def test_protect_is_honoured():
    assert only(rendered("prod"), "PersistentVolumeClaim").protect is True
    assert only(rendered("dev"), "PersistentVolumeClaim").protect is False
    assert only(rendered("dev", "cache.protect=true"), "PersistentVolumeClaim").protect is True
    assert only(rendered("prod", "cache.protect=false"), "PersistentVolumeClaim").protect is False


def test_rook_ceph_warns_that_the_zone_is_no_longer_tied_to_the_pod():
    assert any("rook-ceph" in w and "zone" in w for w in rendered("dev", "backend=rook-ceph").warnings)
    assert not any("rook-ceph" in w for w in rendered("dev").warnings)


# 3. Training Job


def test_gpus_requests_equal_limits_and_nproc_matches(stack):
    c = main_container(rendered(stack))
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert env_of(c)["NPROC_PER_NODE"] == "4"


def test_gpu_count_and_resource_name_are_configurable():
    c = main_container(rendered("dev", "job.gpus=8", "job.gpuResource=nvidia.com/a100"))
    assert c["resources"]["limits"]["nvidia.com/a100"] == "8"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert env_of(c)["NPROC_PER_NODE"] == "8"


def test_filesystem_mode_mounts_the_cache_and_points_the_hub_caches_at_it():
    run = rendered("dev", "cache.mountPath=/models")
    c = main_container(run)
    assert {"name": "cache", "mountPath": "/models"} in c["volumeMounts"]
    assert "volumeDevices" not in c
    env = env_of(c)
    assert env["MODELSCOPE_CACHE"] == "/models/modelscope" and env["HF_HOME"] == "/models/huggingface"


def test_block_mode_attaches_the_raw_device_and_warns():
    run = rendered("dev", "cache.volumeMode=Block")
    c = main_container(run)
    assert c["volumeDevices"] == [{"name": "cache", "devicePath": "/dev/cache"}]
    assert all(m["name"] != "cache" for m in c["volumeMounts"])
    assert "MODELSCOPE_CACHE" not in env_of(c)
    assert any("Block" in w and "cache.devicePath" in w for w in run.warnings)  # the key: its value may be secret


def test_memory_backed_shm_with_a_size_limit(stack):
    run = rendered(stack)
    shm = next(v for v in pod_spec(run)["volumes"] if "emptyDir" in v)
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in main_container(run)["volumeMounts"]


def test_restart_never_and_retries(stack):
    job = only(rendered(stack), "Job").inputs
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert isinstance(job["spec"]["backoffLimit"], int) and job["spec"]["backoffLimit"] > 0


def test_claim_name_is_the_pvc_output():
    run = rendered("dev", "cache.name=other-cache")
    job = only(run, "Job")
    pvc = only(run, "PersistentVolumeClaim")
    claim = next(v for v in pod_spec(run)["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"]["claimName"] == "other-cache"
    assert pvc.urn in job.property_dependencies["spec"]


def _match_expressions(run):
    terms = pod_spec(run)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1, "terms are ORed: every constraint must sit in the one term"
    return {e["key"]: (e["operator"], e["values"]) for e in terms[0]["matchExpressions"]}


def test_pinned_zone_and_gpu_product_share_one_term():
    expressions = _match_expressions(rendered("prod"))
    assert expressions == {ZONE_LABEL: ("In", ["ucsd"]), GPU_PRODUCT_LABEL: ("In", ["NVIDIA-A100-SXM4-80GB"])}


def test_unpinned_zone_keeps_only_the_gpu_product():
    assert _match_expressions(rendered("dev")) == {GPU_PRODUCT_LABEL: ("In", ["NVIDIA-A100-SXM4-80GB"])}


def test_job_is_not_awaited_unless_asked():
    job = only(rendered("dev"), "Job")
    assert job.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    assert job.custom_timeouts == {}
    waited = only(rendered("dev", "job.waitForCompletion=true", "job.waitTimeout=36h"), "Job")
    assert "pulumi.com/skipAwait" not in waited.inputs["metadata"].get("annotations", {})
    assert waited.custom_timeouts == {"create": "36h", "update": "36h"}


def test_wait_for_first_consumer_pvc_is_not_awaited_but_rook_ceph_is():
    record = {"mlcache/placement": "zone=* gpuProduct=NVIDIA-A100-SXM4-80GB"}
    linstor = only(rendered("dev"), "PersistentVolumeClaim").inputs["metadata"]["annotations"]
    assert linstor == {"pulumi.com/skipAwait": "true", "mlcache/backend": "linstor", **record}
    rook = only(rendered("dev", "backend=rook-ceph"), "PersistentVolumeClaim").inputs["metadata"]["annotations"]
    assert rook == {"mlcache/backend": "rook-ceph", **record}


def test_the_pvc_records_the_pinned_zone_for_the_policy_pack():
    annotations = only(rendered("prod"), "PersistentVolumeClaim").inputs["metadata"]["annotations"]
    assert annotations["mlcache/zone"] == "ucsd"


def test_never_replace_unready(stack):
    for r in rendered(stack).kubernetes_objects():
        assert "pulumi.com/replaceUnready" not in r.inputs["metadata"].get("annotations", {})


def test_job_can_be_disabled():
    run = rendered("dev", "job.enabled=false")
    assert run.find("Job") == []
    assert run.outputs["jobName"] is None


def test_tolerations_env_and_priority_class_reach_the_pod():
    run = rendered(
        "dev",
        "job.tolerations[0].key=nautilus.io/reservation",
        "job.tolerations[0].operator=Exists",
        "job.tolerations[0].effect=NoSchedule",
        "job.env.WANDB_MODE=offline",
        "job.priorityClassName=opportunistic",
    )
    spec = pod_spec(run)
    assert spec["tolerations"] == [{"key": "nautilus.io/reservation", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["priorityClassName"] == "opportunistic"
    assert env_of(spec["containers"][0])["WANDB_MODE"] == "offline"


def test_custom_args_replace_the_default_swift_arguments():
    c = main_container(rendered("dev", "job.args[0]=--model", "job.args[1]=Qwen/Qwen3-VL-2B-Instruct"))
    assert c["command"][0] == "/bin/sh"
    assert c["args"] == ["swift", "sft", "--model", "Qwen/Qwen3-VL-2B-Instruct"]


def test_default_args_run_lora_on_the_configured_model_and_write_to_the_cache():
    args = main_container(rendered("dev", "job.model=Qwen/Qwen3-VL-4B-Instruct"))["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen3-VL-4B-Instruct"
    assert args[args.index("--tuner_type") + 1] == "lora"
    assert args[args.index("--output_dir") + 1].startswith("/cache/output/")


# Secrets


def test_hub_tokens_go_through_a_secret_and_secret_key_refs():
    token = "hf_" + "q" * 20
    run = rendered("dev", secrets=(f"hfToken={token}",))
    secret = only(run, "Secret")
    assert secret.inputs["stringData"] == {"HF_TOKEN": token}
    env = main_container(run)["env"]
    hf = next(e for e in env if e["name"] == "HF_TOKEN")
    assert hf == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.object_name, "key": "HF_TOKEN"}}}
    assert token not in repr(run.outputs)
    assert rendered("dev").find("Secret") == []


# 4-5. Outputs


def test_stack_outputs(stack):
    out = rendered(stack).outputs
    assert out["backend"] == "linstor" and out["storageClass"] == "linstor-fast-cache"
    assert out["pvcName"] == "ms-swift-cache-pvc" and out["volumeMode"] == "Filesystem"
    assert out["jobName"] == "sft-qwen3vl-fire-4gpu"
    assert out["zone"] == {"dev": "scheduler-chosen", "prod": "ucsd"}[stack]
    assert out["namespace"] == {"dev": "default", "prod": "ml-training"}[stack]
    commands = out["verifyCommands"]
    assert set(commands) >= {"pvcBinding", "podNode", "podZone", "pvNodeAffinity", "linstorResources", "linstorStoragePools"}
    assert commands["linstorStoragePools"].endswith("-- linstor storage-pool list")  # the runbook's "Check Linstor status"
    assert "kubectl get pvc ms-swift-cache-pvc" in commands["pvcBinding"]
    assert "job-name=sft-qwen3vl-fire-4gpu" in commands["podNode"]
    assert f"-n {out['namespace']}" in commands["pvcBinding"]
    assert "topology\\.kubernetes\\.io/zone" in commands["podZone"]


def test_rook_ceph_outputs_and_no_linstor_commands():
    out = rendered("dev", "backend=rook-ceph").outputs
    assert out["backend"] == "rook-ceph" and out["storageClass"] == "rook-ceph-block"
    assert not {"linstorResources", "linstorPods", "linstorStoragePools"} & set(out["verifyCommands"])


# 6. Stacks


def test_dev_stack_is_unpinned_single_replica_filesystem_unprotected():
    run = rendered("dev")
    assert run.outputs["zone"] == "scheduler-chosen"
    assert only(run, "StorageClass").inputs["parameters"][f"{LINSTOR}placementCount"] == "1"
    assert only(run, "PersistentVolumeClaim").inputs["spec"]["volumeMode"] == "Filesystem"
    assert only(run, "PersistentVolumeClaim").protect is False


def test_prod_stack_is_pinned_protected_and_pinned_down():
    config = load_stack_config("prod").values
    assert config["mlcache:zone"] == "ucsd"
    assert config["mlcache:cache"]["protect"] is True and config["mlcache:cache"]["size"]
    image = config["mlcache:job"]["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    assert only(rendered("prod"), "PersistentVolumeClaim").protect is True


# Structure


def test_every_object_is_a_child_of_an_mlcache_component(stack):
    run = rendered(stack)
    components = {r.urn: r for r in run.registrations if not r.custom}
    assert all(c.type.startswith("mlcache:index:") for c in components.values())
    for r in run.kubernetes_objects():
        assert r.parent in components, f"{r.name} is not parented to a component"


def test_bad_config_registers_nothing():
    config = load_stack_config("dev", ["linstor.replicas=0"])
    captured = ProgramRun()
    with pytest.raises(ConfigError):
        run_program(config.engine_config(), [], "dev", run=captured)
    assert captured.registrations == []


def test_a_plain_text_token_is_refused_without_being_shown():
    token = "hf_" + "p" * 20
    config = {**load_stack_config("dev").engine_config(), "mlcache:hfToken": token}  # plain in the stack file
    with pytest.raises(ConfigError) as err:
        run_program(config, [], "dev")
    assert "mlcache:hfToken" in str(err.value) and "--secret" in str(err.value)
    assert token not in str(err.value)


def test_empty_tokens_mean_none():
    assert rendered("dev", secrets=("hfToken=",)).find("Secret") == []


def test_nothing_takes_the_storage_class_outputs():
    """Replacing the class (replica count, pool, fs type) cascades into nothing: no resource's
    inputs use its outputs, and only the PVC waits for it through a plain depends_on edge."""
    run = rendered("prod")
    sc = only(run, "StorageClass")
    for r in run.kubernetes_objects():
        assert all(sc.urn not in urns for urns in r.property_dependencies.values()), r.name
    assert [r.kind for r in run.kubernetes_objects() if sc.urn in r.dependencies] == ["PersistentVolumeClaim"]


def test_the_cache_records_its_placement_and_keeps_it_unless_relocating(stack):
    pvc = only(rendered(stack), "PersistentVolumeClaim")
    zone = "ucsd" if stack == "prod" else "*"
    assert pvc.inputs["metadata"]["annotations"]["mlcache/placement"] == f"zone={zone} gpuProduct=NVIDIA-A100-SXM4-80GB"
    assert pvc.ignore_changes == ['metadata.annotations["mlcache/placement"]']
    assert pvc.replace_on_changes == ["spec.volumeMode"]
    relocating = rendered(stack, "cache.relocate=true")
    moved = only(relocating, "PersistentVolumeClaim")
    assert moved.ignore_changes == []
    assert moved.replace_on_changes == [
        "spec.volumeMode",
        'metadata.annotations["mlcache/placement"]',
        "spec.resources.requests.storage",
    ]
    assert any("cache.relocate is fresh" in w and "DATA LOSS" in w for w in relocating.warnings)
    assert not any("relocate" in w for w in rendered(stack).warnings)
    assert "bound-cache guard stood aside: offline render" in rendered(stack).notes[0]


def test_the_mock_engine_skips_the_sdks_stack_traces_and_puts_its_recorder_back(monkeypatch):
    """The SDK's recorder of source positions (a quarter of a render's CPU) is not called during a
    render and is back after it; an SDK that renames it fails here (setattr raises), not silently slow."""
    from pulumi.runtime import resource as runtime_resource  # noqa: PLC0415

    calls = []

    def recorder():
        calls.append(1)
        return runtime_resource.source_pb2.StackTrace()

    monkeypatch.setattr(runtime_resource, "_get_stack_trace", recorder)
    run = run_program({}, [], "dev")
    assert run.registrations and not calls and runtime_resource._get_stack_trace is recorder


@pytest.mark.parametrize("nodes", ["1", "2"])
def test_more_gpus_than_a_node_of_the_platform_has_is_warned_with_the_way_to_spread_them(nodes):
    said = [w for w in rendered("prod", "job.gpus=16", f"job.nodes={nodes}").warnings if w.startswith("job.gpus is 16")]
    assert len(said) == 1 and "at most 8" in said[0] and "job.nodes" in said[0]
    assert not [w for w in rendered("prod", "job.gpus=8", f"job.nodes={nodes}").warnings if w.startswith("job.gpus is")]


def test_the_longest_prefetch_list_allowed_keeps_the_scripts_configmap_within_the_api_servers_1_mib():
    """The list goes into the scripts ConfigMap, whose data the API server caps at 1 MiB: the most
    ids of the longest form fit; one more id is refused, before anything is registered."""
    import json  # noqa: PLC0415

    from mlcache.program.settings import PREFETCH_MAX  # noqa: PLC0415

    longest = [f"huggingface:{'o' * 96}/{'n' * 92}{index:04d}" for index in range(PREFETCH_MAX)]
    run = run_program({"mlcache:cache": json.dumps({"prefetch": longest})}, [], "dev")
    data = only(run, "ConfigMap").inputs["data"]
    size = sum(len(key.encode()) + len(value.encode()) for key, value in data.items())
    assert data["prefetch.txt"].count("\n") == PREFETCH_MAX and size <= 1 << 20
    refused_run = ProgramRun()
    with pytest.raises(ConfigError) as refused:
        run_program({"mlcache:cache": json.dumps({"prefetch": [*longest, "org/one-more"]})}, [], "dev", refused_run)
    assert str(refused.value).startswith(f"invalid config mlcache:cache.prefetch = [{PREFETCH_MAX + 1} items]: expected a list")
    assert refused_run.registrations == []
    with pytest.raises(ConfigError, match=r"owner and name of at most 96 characters"):
        run_program({"mlcache:cache": json.dumps({"prefetch": [f"org/{'n' * 97}"]})}, [], "dev")


def test_the_providers_namespace_every_object_goes_to_must_be_one_the_api_server_takes():
    run = ProgramRun()
    with pytest.raises(ConfigError) as refused:
        run_program({"kubernetes:namespace": "Bad_NS"}, [], "dev", run)
    assert refused.value.key == "kubernetes:namespace" and "a DNS label" in str(refused.value) and run.registrations == []
    # Where mlcache:namespace names the namespace, the provider's is not where the objects go.
    placed = run_program({"kubernetes:namespace": "Bad_NS", "mlcache:namespace": "ml-training"}, [], "dev")
    assert {r.inputs["metadata"].get("namespace") for r in placed.kubernetes_objects() if r.kind != "StorageClass"} == {
        "ml-training"
    }

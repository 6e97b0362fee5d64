"""The policy pack's validate functions, called directly on resources rendered from the real
stacks (the PolicyPack constructor starts a gRPC server, so it cannot run in a test): one
passing and one violating case for every policy."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from mlcache.cli import validate as validate_command
from mlcache.cluster.bound_cache import assume_live
from mlcache.preview.diff import base_claim
from mlcache.preview.mock_engine import ProgramRun, Registration
from mlcache.preview.render import as_json, render
from tests.conftest import ROOT, rendered

sys.path.insert(0, str(ROOT / "policy"))
import policies

POLICY_BY_NAME = {p.name: p for p in policies.POLICIES}


def policy_resource(r: Registration, props: dict | None = None) -> PolicyResource:
    opts = PolicyResourceOptions(
        protect=r.protect,
        ignore_changes=r.ignore_changes,
        delete_before_replace=r.delete_before_replace,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=r.parent,
    )
    # The engine hands policies read-only proxies (Mapping/Sequence, not dict/list): so do we.
    wrapped = unknown_checking_proxy(props if props is not None else r.inputs)
    return PolicyResource(r.type, wrapped, r.urn, r.name, opts, None, None, [], {})


def stack_args(run: ProgramRun, edit=None) -> StackValidationArgs:
    """The stack's Kubernetes objects, optionally edited by `edit(kind, props)` first."""
    resources = []
    for r in run.kubernetes_objects():
        props = copy.deepcopy(r.inputs)
        if edit:
            edit(r.kind, props)
        resources.append(policy_resource(r, props))
    return StackValidationArgs(resources)


def resource_args(run: ProgramRun, kind: str, edit=None) -> ResourceValidationArgs:
    (r,) = run.find(kind)
    props = copy.deepcopy(r.inputs)
    if edit:
        edit(props)
    return ResourceValidationArgs(r.type, unknown_checking_proxy(props), r.urn, r.name, policy_resource(r).opts, None)


def violations(validate, args) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    validate(args, lambda message, urn=None: found.append((message, urn)))
    return found


def container(props: dict) -> dict:
    return props["spec"]["template"]["spec"]["containers"][0]


def test_the_pack_declares_every_policy_and_the_advisory_one():
    assert set(POLICY_BY_NAME) == {
        "linstor-cache-binds-locally",
        "cache-consumers-pin-the-storage-zone",
        "images-pinned",
        "gpu-requests-equal-limits",
        "no-plaintext-tokens",
        "multinode-workers-one-zone",
        "multinode-one-claim-per-worker",
        "protected-cache-single-replica",
        "cache-not-stranded",
    }
    levels = {name: p.enforcement_level for name, p in POLICY_BY_NAME.items()}
    assert levels.pop("protected-cache-single-replica") == EnforcementLevel.ADVISORY
    assert set(levels.values()) == {EnforcementLevel.MANDATORY}
    config = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert config["runtime"]["name"] == "python"


def test_the_docs_table_lists_every_policy_at_its_level():
    rows = re.findall(r"^\| `([a-z-]+)` \| (mandatory|advisory) \|", (ROOT / "docs" / "previews-and-ci.md").read_text(), re.M)
    assert dict(rows) == {name: p.enforcement_level.value for name, p in POLICY_BY_NAME.items()}


# --- linstor-cache-binds-locally


def test_linstor_cache_binds_locally_passes_on_both_stacks(stack):
    assert violations(policies.validate_linstor_cache_binding, stack_args(rendered(stack))) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("volumeBindingMode", "Immediate", "WaitForFirstConsumer"), ("remote", "true", "allowRemoteVolumeAccess")],
)
def test_linstor_cache_binds_locally_flags_an_immediate_or_remote_class(field, value, expected):
    def edit(kind, props):
        if kind != "StorageClass":
            return
        if field == "remote":
            props["parameters"]["linstor.csi.linbit.com/allowRemoteVolumeAccess"] = value
        else:
            props[field] = value

    run = rendered("prod")
    found = violations(policies.validate_linstor_cache_binding, stack_args(run, edit))
    assert len(found) == 1 and expected in found[0][0]
    assert found[0][1] == run.find("PersistentVolumeClaim")[0].urn


# --- cache-consumers-pin-the-storage-zone


def test_zone_policy_passes_when_the_job_pins_the_storage_zone(stack):
    assert violations(policies.validate_zone_matches_storage, stack_args(rendered(stack))) == []


def test_zone_policy_flags_a_job_pinned_elsewhere():
    def edit(kind, props):
        if kind == "Job":
            terms = props["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            expressions = terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
            next(e for e in expressions if e["key"] == policies.ZONE_LABEL)["values"] = ["sdsu"]

    found = violations(policies.validate_zone_matches_storage, stack_args(rendered("prod"), edit))
    assert len(found) == 1 and "ucsd" in found[0][0] and "sdsu" in found[0][0]


def test_zone_policy_flags_a_job_that_lost_its_zone_pin():
    def edit(kind, props):
        if kind == "Job":
            del props["spec"]["template"]["spec"]["affinity"]

    found = violations(policies.validate_zone_matches_storage, stack_args(rendered("prod"), edit))
    assert len(found) == 1 and "no zone" in found[0][0]


# --- images-pinned


def test_images_pinned_passes(stack):
    assert violations(policies.validate_images_pinned, resource_args(rendered(stack), "Job")) == []


@pytest.mark.parametrize("image", ["repo/trainer:latest", "repo/trainer", "registry:5000/trainer"])
def test_images_pinned_flags_latest_or_untagged(image):
    args = resource_args(rendered("dev"), "Job", lambda props: container(props).update(image=image))
    assert len(violations(policies.validate_images_pinned, args)) == 1


# --- gpu-requests-equal-limits


def test_gpu_requests_equal_limits_passes(stack):
    assert violations(policies.validate_gpu_requests_equal_limits, resource_args(rendered(stack), "Job")) == []


def test_gpu_requests_equal_limits_flags_a_mismatch():
    def edit(props):
        container(props)["resources"]["requests"]["nvidia.com/gpu"] = "2"

    args = resource_args(rendered("prod"), "Job", edit)
    found = violations(policies.validate_gpu_requests_equal_limits, args)
    assert len(found) == 1 and "nvidia.com/gpu" in found[0][0]


# --- no-plaintext-tokens


def test_no_plaintext_tokens_passes_with_secret_refs():
    run = rendered("prod", secrets=("hfToken=hf_" + "a" * 34,))
    assert violations(policies.validate_no_plaintext_tokens, resource_args(run, "Job")) == []


@pytest.mark.parametrize(
    ("name", "value"), [("HF_TOKEN", "hf_" + "a" * 34), ("WANDB_API_KEY", "0123abcd"), ("SOMETHING", "hf_" + "b" * 34)]
)
def test_no_plaintext_tokens_flags_an_inline_credential(name, value):
    args = resource_args(rendered("dev"), "Job", lambda props: container(props)["env"].append({"name": name, "value": value}))
    assert len(violations(policies.validate_no_plaintext_tokens, args)) == 1


# --- protected-cache-single-replica (advisory)


def test_single_replica_advisory_fires_on_protected_prod_only():
    found = violations(policies.validate_protected_cache_replicas, stack_args(rendered("prod")))
    assert len(found) == 1 and "single LINSTOR replica" in found[0][0]
    assert violations(policies.validate_protected_cache_replicas, stack_args(rendered("dev"))) == []


def test_single_replica_advisory_is_quiet_with_two_replicas_or_a_durable_copy():
    run = rendered("prod", "linstor.replicas=2", "linstor.layerList=drbd storage")
    assert violations(policies.validate_protected_cache_replicas, stack_args(run)) == []
    durable = rendered("prod", "cache.durableCopy=true", "cache.prefetch=[Qwen/Qwen3-VL-8B-Instruct]")
    assert violations(policies.validate_protected_cache_replicas, stack_args(durable)) == []


def test_zone_policy_covers_the_benchmark_job():
    run = rendered("prod", "benchmark.enabled=true", "benchmark.fioImage=docker.io/dmonakhov/alpine-fio:3.35")
    assert violations(policies.validate_zone_matches_storage, stack_args(run)) == []

    def edit(kind, props):
        if kind == "Job" and props["metadata"]["name"].endswith("-storage-bench"):
            del props["spec"]["template"]["spec"]["affinity"]

    found = violations(policies.validate_zone_matches_storage, stack_args(run, edit))
    assert len(found) == 1 and "storage-bench" in found[0][0]


# --- cache-not-stranded


def engine_view(created: ProgramRun, now: ProgramRun) -> StackValidationArgs:
    """What the engine hands the pack: objects as `now` registers them, except the claim's placement
    record, which ignore_changes keeps at its value when the claim was created (`created`)."""
    record = created.find("PersistentVolumeClaim")[0].inputs["metadata"]["annotations"][policies.PLACEMENT_ANNOTATION]

    def edit(kind, props):
        if kind == "PersistentVolumeClaim":
            props["metadata"].setdefault("annotations", {})[policies.PLACEMENT_ANNOTATION] = record

    return stack_args(now, edit)


def test_cache_not_stranded_passes_when_the_placement_is_unchanged(stack):
    assert violations(policies.validate_cache_not_stranded, engine_view(rendered(stack), rendered(stack))) == []


@pytest.mark.parametrize(
    ("stack", "change", "expected"),
    [
        ("prod", "zone=sdsu", "zone sdsu instead of ucsd"),
        ("prod", "zone=", "zone any instead of ucsd"),
        ("prod", "job.gpuProduct=NVIDIA-H100-80GB-HBM3", "GPU product NVIDIA-H100-80GB-HBM3 instead of"),
        ("dev", "job.gpuProduct=NVIDIA-L40", "GPU product NVIDIA-L40 instead of"),
    ],
)
def test_cache_not_stranded_flags_a_consumer_that_moves_away_from_where_the_cache_was_created(stack, change, expected):
    now = rendered(stack, change)
    found = violations(policies.validate_cache_not_stranded, engine_view(rendered(stack), now))
    assert len(found) == 1 and found[0][0].startswith("STRANDS THE CACHE") and expected in found[0][0]
    assert found[0][1] == now.find("Job")[0].urn and "cache.relocate copy" in found[0][0]


def test_cache_not_stranded_cannot_judge_the_zone_of_a_cache_created_unpinned_nor_an_unrecorded_claim():
    assert violations(policies.validate_cache_not_stranded, engine_view(rendered("dev"), rendered("dev", "zone=ucsd"))) == []

    def unrecorded(kind, props):
        if kind == "PersistentVolumeClaim":
            props["metadata"]["annotations"].pop(policies.PLACEMENT_ANNOTATION, None)
            props["metadata"]["annotations"][policies.ZONE_ANNOTATION] = "ucsd"

    now = rendered("prod", "zone=sdsu")
    assert violations(policies.validate_cache_not_stranded, stack_args(now, unrecorded)) == []


def test_cache_not_stranded_is_satisfied_by_a_relocation_that_records_the_new_placement():
    relocated = rendered("prod", "zone=sdsu")
    assert violations(policies.validate_cache_not_stranded, engine_view(relocated, relocated)) == []


def test_cache_not_stranded_ignores_network_storage():
    now = rendered("prod", "backend=rook-ceph", "zone=sdsu")
    assert violations(policies.validate_cache_not_stranded, engine_view(rendered("prod"), now)) == []


def test_a_move_passes_the_placement_policies_and_its_receiver_is_still_judged():
    with assume_live(base_claim(as_json(rendered("prod")))):  # prod as deployed: its claim and training Job
        moving, _ = render("prod", ["zone=sdsu", "cache.relocate=copy"], [])
    for validate in (policies.validate_zone_matches_storage, policies.validate_cache_not_stranded):
        assert violations(validate, stack_args(moving)) == []

    def receiver_in_ucsd(kind, props):
        if kind == "Job" and props["metadata"]["name"] == "ms-swift-cache-pvc-copy-g1":
            terms = props["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            expressions = terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
            next(e for e in expressions if e["key"] == policies.ZONE_LABEL)["values"] = ["ucsd"]

    (found,) = violations(policies.validate_zone_matches_storage, stack_args(moving, receiver_in_ucsd))
    assert "ms-swift-cache-pvc-copy-g1 mounts cache ms-swift-cache-pvc-g1" in found[0]


def test_validate_runs_the_pack_a_mandatory_violation_fails_it_an_advisory_one_passes(capsys):
    assert validate_command.main(["--stack", "dev", "--config", "job.env.WANDB_API_KEY=abc123"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("policy no-plaintext-tokens (mandatory) (training-job): container prefetch sets")
    assert "mlcache:secretEnv.NAME" in err
    assert validate_command.main(["--stack", "prod"]) == 0
    out, err = capsys.readouterr()
    assert "and passing the policy pack (1 advisory): StorageClass/" in out
    assert err.startswith("policy protected-cache-single-replica (advisory) (cache-pvc): protected cache ms-swift-cache-pvc")

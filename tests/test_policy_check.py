"""The policy pack run offline for the PR comment (mlcache/preview/policy_check.py) judges as the
engine's analyzer does: levels, disabled and remediate policies, not_applicable, async validate,
and a policy that breaks."""

from __future__ import annotations

from mlcache.preview.policy_check import PolicyFinding, policy_findings, resource_type
from mlcache.preview.render import as_json
from tests.conftest import rendered

PACK = """
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

def flag(args, report_violation):
    if args.resource_type.endswith(":Job"):
        report_violation("a job")

async def flag_later(args, report_violation):
    if args.resource_type.endswith(":Job"):
        report_violation("a job, awaited")

def skip(args, report_violation):
    args.not_applicable("not here")

def broken(args, report_violation):
    raise KeyError("spec")

POLICIES = [
    ResourceValidationPolicy(name="default-level", description="d", validate=flag),
    ResourceValidationPolicy(name="off", description="d", validate=flag, enforcement_level=EnforcementLevel.DISABLED),
    ResourceValidationPolicy(name="fix", description="d", validate=flag, enforcement_level=EnforcementLevel.REMEDIATE),
    ResourceValidationPolicy(name="later", description="d", validate=flag_later, enforcement_level=EnforcementLevel.MANDATORY),
    ResourceValidationPolicy(name="skips", description="d", validate=skip, enforcement_level=EnforcementLevel.MANDATORY),
    StackValidationPolicy(name="breaks", description="d", validate=broken, enforcement_level=EnforcementLevel.MANDATORY),
]
"""


def test_the_offline_pack_judges_as_the_engines_analyzer(tmp_path):
    pack = tmp_path / "policies.py"
    pack.write_text(PACK)
    found = policy_findings(as_json(rendered("dev"))["objects"], pack)
    assert PolicyFinding("default-level", "advisory", "a job", "training-job") in found
    assert PolicyFinding("fix", "mandatory", "a job", "training-job") in found
    assert PolicyFinding("later", "mandatory", "a job, awaited", "training-job") in found
    assert not [f for f in found if f.policy in ("off", "skips")]
    (broken,) = [f for f in found if f.policy == "breaks"]
    assert broken.level == "mandatory" and broken.message == "could not be judged offline (KeyError: 'spec')"


def test_the_resource_type_is_read_from_the_urn():
    urn = "urn:pulumi:dev::mlcache::mlcache:index:CacheVolume$kubernetes:core/v1:PersistentVolumeClaim::cache-pvc"
    assert resource_type(urn) == "kubernetes:core/v1:PersistentVolumeClaim"


def test_a_finding_on_an_object_whose_metadata_a_secret_hides_says_so_not_none():
    from mlcache.preview.render import render  # noqa: PLC0415

    run, _ = render("prod", [], ["job.image=example.org/hidden/trainer:1.0"])
    (finding,) = [f for f in policy_findings(as_json(run)["objects"]) if f.policy == "protected-cache-single-replica"]
    assert "protected cache (its metadata is secret) has" in finding.message and "None" not in finding.message

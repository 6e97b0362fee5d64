"""The JobSet the `jobset` engine renders, checked against the CRD that ships in the JobSet module
(installed by `scripts/build-engine jobset`): schema-valid, and no field the API server would
prune silently (CRDs drop unknown fields instead of refusing them)."""

from __future__ import annotations

import os
from typing import Any

import jsonschema
import pytest
import yaml

from mlcache.preview.render import documents
from tests.conftest import rendered
from tests.integration.conftest import CACHE


def jobset_schema() -> dict[str, Any]:
    found = sorted(CACHE.glob("jobset-*/crds/jobset.x-k8s.io_jobsets.yaml"))
    if not found:
        reason = f"the JobSet CRD is missing in {CACHE}: run scripts/build-engine jobset"
        if os.environ.get("MLCACHE_REQUIRE_ENGINE") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    crd = yaml.safe_load(found[-1].read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    return version["schema"]["openAPIV3Schema"]


def pruned(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths the API server would drop: fields the structural schema does not declare."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                found += pruned(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += pruned(item, schema["items"], f"{path}[{index}]")
    return found


@pytest.mark.parametrize(
    "overrides", [("job.nodes=2",), ("job.nodes=3", "job.queue=team-a", "job.waitForCompletion=true")], ids=["2", "3-queue"]
)
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_jobset_is_valid_for_its_crd_and_loses_no_field(stack, overrides):
    schema = jobset_schema()
    (jobset,) = [d for d in documents(rendered(stack, "job.engine=jobset", *overrides)) if d["kind"] == "JobSet"]
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(jobset)]
    assert errors == []
    assert pruned(jobset, schema) == []


def test_a_misplaced_field_would_be_caught():
    schema = jobset_schema()
    (jobset,) = [d for d in documents(rendered("dev", "job.engine=jobset", "job.nodes=2")) if d["kind"] == "JobSet"]
    jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["hostName"] = "typo"
    jobset["spec"]["restartPolicy"] = "Always"
    assert sorted(pruned(jobset, schema)) == [
        ".spec.replicatedJobs[0].template.spec.template.spec.hostName",
        ".spec.restartPolicy",
    ]

"""Pure builders of multi-node runs (components/workers.py): names, launch env, affinities."""

from __future__ import annotations

import pytest

from mlcache.program.components.workers import (
    Worker,
    headless_service_manifest,
    jobset_manifest,
    launch_env,
    master_addr,
    peer_ingress_manifest,
    worker_affinity,
)
from mlcache.program.names import (
    HOSTNAME_LABEL,
    MULTINODE_RUN_LABEL,
    WORKER_LABEL,
    ZONE_LABEL,
    longest_generated_name,
    worker_claim_name,
    worker_hostname,
)
from tests.conftest import env_of, pod_spec, rendered


def test_worker_zero_keeps_the_single_node_claim_the_others_are_indexed():
    assert [worker_claim_name("model-cache", i) for i in range(3)] == ["model-cache", "model-cache-1", "model-cache-2"]


@pytest.mark.parametrize(
    ("engine", "hostname", "master"),
    [
        ("jobs", "sft-worker-2", "sft-worker-0.sft"),
        # JobSet: <jobset>-<replicated job>-<job index>-<pod index>, subdomain = the JobSet's name.
        ("jobset", "sft-worker-2-0-0", "sft-worker-0-0-0.sft"),
    ],
)
def test_hostnames_and_master_address(engine, hostname, master):
    assert worker_hostname("sft", 2, engine) == hostname
    assert master_addr("sft", engine) == master


def test_longest_generated_name_counts_jobsets_pod_suffix():
    assert longest_generated_name("sft", 3, "jobs") == "sft-worker-2"
    assert longest_generated_name("sft", 3, "jobset") == "sft-worker-2-0-0-abcde"


def test_launch_env_is_ms_swifts_static_multi_node_launch():
    assert launch_env(3, 1, "sft-worker-0.sft", 8) == {
        "NNODES": "3",
        "NODE_RANK": "1",
        "MASTER_ADDR": "sft-worker-0.sft",
        "MASTER_PORT": "29500",
        "NPROC_PER_NODE": "8",
    }


def test_unpinned_workers_share_a_zone_with_every_worker_and_a_node_with_none():
    affinity = worker_affinity("sft", 1, pinned=False)
    (zone_term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert zone_term == {"labelSelector": {"matchLabels": {MULTINODE_RUN_LABEL: "sft"}}, "topologyKey": ZONE_LABEL}
    (host_term,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert host_term["topologyKey"] == HOSTNAME_LABEL
    assert host_term["labelSelector"]["matchLabels"] == {MULTINODE_RUN_LABEL: "sft"}
    # Not itself (its benchmark shares its node and cache), every other worker.
    assert host_term["labelSelector"]["matchExpressions"] == [{"key": WORKER_LABEL, "operator": "NotIn", "values": ["1"]}]


def test_pinned_workers_rely_on_the_zone_node_affinity_and_still_take_one_node_each():
    affinity = worker_affinity("sft", 0, pinned=True)
    assert "podAffinity" not in affinity
    assert affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == HOSTNAME_LABEL


def _worker_templates(*overrides: str) -> list[dict]:
    """The workers' pod templates in worker order: of their Jobs, or of the JobSet's replicated jobs."""
    objects = rendered("dev", "job.nodes=3", *overrides).kubernetes_objects()
    templates = [r.inputs["spec"]["template"] for r in objects if r.kind == "Job"]
    templates += [
        rj["template"]["spec"]["template"] for r in objects if r.kind == "JobSet" for rj in r.inputs["spec"]["replicatedJobs"]
    ]
    workers = [t for t in templates if WORKER_LABEL in t["metadata"]["labels"]]
    return sorted(workers, key=lambda t: int(t["metadata"]["labels"][WORKER_LABEL]))


def test_each_worker_is_built_with_its_labels_affinities_and_the_training_node_affinity():
    single = pod_spec(rendered("dev"))
    templates = _worker_templates("job.engine=jobs")
    assert [t["metadata"]["labels"][WORKER_LABEL] for t in templates] == ["0", "1", "2"]
    for index, template in enumerate(templates):
        assert template["metadata"]["labels"][MULTINODE_RUN_LABEL] == template["metadata"]["labels"]["mlcache/job"]
        affinity = template["spec"]["affinity"]
        assert affinity["nodeAffinity"] == single["affinity"]["nodeAffinity"]  # where training fits, as on one node
        assert (
            affinity["podAntiAffinity"]
            == worker_affinity(template["metadata"]["labels"][MULTINODE_RUN_LABEL], index, False)["podAntiAffinity"]
        )


def test_launch_env_once_on_the_training_container_and_the_hostname_only_for_engine_jobs():
    for engine, hostnames in (("jobs", True), ("jobset", False)):
        templates = _worker_templates(f"job.engine={engine}")
        assert len(templates) == 3, engine
        for index, template in enumerate(templates):
            (sft,) = [c for c in template["spec"]["containers"] if c["name"] == "sft"]
            names = [e["name"] for e in sft["env"]]
            assert all(names.count(n) == 1 for n in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE"))
            assert env_of(sft)["NODE_RANK"] == str(index) and env_of(sft)["NNODES"] == "3"
            assert ("hostname" in template["spec"]) is hostnames and ("subdomain" in template["spec"]) is hostnames
            assert ("MLCACHE_PEER_JOBS" in names) is hostnames  # engine jobs: a failed worker ends its peers


def test_a_worker_knows_its_peers_and_its_name_in_the_service():
    worker = Worker("sft", 1, 3, "jobs", pinned=True)
    assert worker.peers == ["sft-worker-0", "sft-worker-2"]
    assert worker.network == {"hostname": "sft-worker-1", "subdomain": "sft"}
    assert Worker("sft", 1, 3, "jobset", pinned=True).network == {}
    assert worker.labels == {MULTINODE_RUN_LABEL: "sft", WORKER_LABEL: "1"}


def test_headless_service_publishes_not_ready_workers():
    service = headless_service_manifest("sft", "mlcache", {"mlcache/job": "sft"})
    assert service["metadata"]["name"] == "sft"
    assert service["spec"] == {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"mlcache/job": "sft"}}


def test_peer_ingress_admits_only_multinode_workers():
    policy = peer_ingress_manifest(None, None)
    workers_only = {"matchExpressions": [{"key": MULTINODE_RUN_LABEL, "operator": "Exists"}]}
    assert policy["metadata"]["name"] == "mlcache-workers"
    assert policy["spec"]["podSelector"] == workers_only
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": workers_only}]}]


def test_jobset_has_one_single_replica_job_per_worker_all_or_nothing():
    jobs = [{"metadata": {"name": f"sft-worker-{i}"}, "spec": {"backoffLimit": 2, "template": {"i": i}}} for i in range(3)]
    jobset = jobset_manifest("sft", "mlcache", jobs, max_restarts=2, labels={"app": "ms-swift"}, annotations={})
    assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    spec = jobset["spec"]
    assert [r["name"] for r in spec["replicatedJobs"]] == ["worker-0", "worker-1", "worker-2"]
    assert all(r["replicas"] == 1 for r in spec["replicatedJobs"])
    assert [r["template"]["spec"]["template"] for r in spec["replicatedJobs"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    # A worker's Job fails at its first failed pod; JobSet then restarts every worker.
    assert all(r["template"]["spec"]["backoffLimit"] == 0 for r in spec["replicatedJobs"])
    assert spec["failurePolicy"] == {"maxRestarts": 2}
    assert spec["successPolicy"] == {"operator": "All"}
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True, "subdomain": "sft"}

"""The rehearsal cluster places things (issue 10 §1): raw API objects, no Pulumi. The real
scheduler picks the node, the real PV controller binds, the LINSTOR stand-in provisions with
linstor-csi's topology, kwok runs the pods; every assertion reads where things landed."""

from __future__ import annotations

import re
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import wait_for

NAMESPACE = "ml-training"
A100 = "NVIDIA-A100-SXM4-80GB"
ZONE, HOSTNAME, LINSTOR_NODE = "topology.kubernetes.io/zone", "kubernetes.io/hostname", "linbit.com/hostname"


class Objects:
    """Creates objects with unique names and deletes them after the test (frees GPUs and pools)."""

    def __init__(self, api):
        self.core, self.storage = client.CoreV1Api(api), client.StorageV1Api(api)
        self.suffix = uuid.uuid4().hex[:6]
        self.pods: list[str] = []
        self.claims: list[str] = []
        self.classes: list[str] = []

    def storage_class(self, binding: str = "WaitForFirstConsumer", **parameters: str) -> str:
        name = f"linstor-{self.suffix}-{len(self.classes)}"
        params = {"csi.storage.k8s.io/fstype": "xfs", "linstor.csi.linbit.com/layerList": "storage"}
        params.update({f"linstor.csi.linbit.com/{k}": v for k, v in parameters.items()})
        self.storage.create_storage_class(
            {
                "metadata": {"name": name},
                "provisioner": "linstor.csi.linbit.com",
                "volumeBindingMode": binding,
                "reclaimPolicy": "Delete",
                "parameters": params,
            }
        )
        self.classes.append(name)
        return name

    def claim(self, storage_class: str, size: str = "500Gi", mode: str = "Filesystem", annotations=None) -> str:
        name = f"cache-{self.suffix}-{len(self.claims)}"
        self.core.create_namespaced_persistent_volume_claim(
            NAMESPACE,
            {
                "metadata": {"name": name, "annotations": annotations or {}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "volumeMode": mode,
                    "resources": {"requests": {"storage": size}},
                },
            },
        )
        self.claims.append(name)
        return name

    def pod(self, claim: str, *, gpus: int = 4, zone: str | None = None, node: str | None = None, block: bool = False) -> str:
        name = f"train-{self.suffix}-{len(self.pods)}"
        expressions = [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]}] if gpus else []
        if zone:
            expressions.append({"key": ZONE, "operator": "In", "values": [zone]})
        if node:
            expressions.append({"key": HOSTNAME, "operator": "In", "values": [node]})
        resources = {"cpu": "1", "memory": "1Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
        container = {"name": "main", "image": "busybox", "resources": {"requests": resources, "limits": resources}}
        if block:
            container["volumeDevices"] = [{"name": "cache", "devicePath": "/dev/cache"}]
        else:
            container["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
        spec = {
            "containers": [container],
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": claim}}],
        }
        if expressions:
            spec["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
                }
            }
        self.core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": name}, "spec": spec})
        self.pods.append(name)
        return name

    def running(self, pod: str) -> client.V1Pod:
        return wait_for(lambda: self._phase(pod, "Running"), 60, f"pod {pod} Running")

    def _phase(self, pod: str, phase: str):
        found = self.core.read_namespaced_pod(pod, NAMESPACE)
        return found if found.status.phase == phase else None

    def bound_volume(self, claim: str, timeout: float = 60) -> client.V1PersistentVolume:
        def bound():
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, NAMESPACE)
            return pvc.spec.volume_name if pvc.status.phase == "Bound" else None

        return self.core.read_persistent_volume(wait_for(bound, timeout, f"claim {claim} Bound"))

    def events(self, name: str) -> list[client.CoreV1Event]:
        return self.core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items

    def node(self, name: str) -> client.V1Node:
        return self.core.read_node(name)

    def cleanup(self) -> None:
        deletes = [
            (self.core.delete_namespaced_pod, pod, {"namespace": NAMESPACE, "grace_period_seconds": 0}) for pod in self.pods
        ]
        deletes += [
            (self.core.delete_namespaced_persistent_volume_claim, claim, {"namespace": NAMESPACE}) for claim in self.claims
        ]
        deletes += [(self.storage.delete_storage_class, name, {}) for name in self.classes]
        for delete, name, kwargs in deletes:
            try:
                delete(name, **kwargs)
            except ApiException as error:
                if error.status != 404:  # already gone (the test deleted it)
                    raise


@pytest.fixture
def objects(kube):
    made = Objects(kube)
    yield made
    made.cleanup()


def affinity_terms(pv: client.V1PersistentVolume) -> list[dict[str, list[str]]]:
    """The PV's node affinity as [{key: values}] (terms are ORed)."""
    if pv.spec.node_affinity is None:
        return []
    return [{e.key: e.values for e in term.match_expressions} for term in pv.spec.node_affinity.required.node_selector_terms]


def test_wffc_claim_and_gpu_pod_pinned_to_a_zone_share_one_node(objects):
    cls = objects.storage_class(placementCount="1", allowRemoteVolumeAccess="false")
    claim = objects.claim(cls)
    assert objects.core.read_namespaced_persistent_volume_claim(claim, NAMESPACE).status.phase == "Pending"
    pod = objects.running(objects.pod(claim, zone="ucsd"))
    node = pod.spec.node_name
    assert objects.node(node).metadata.labels[ZONE] == "ucsd"
    assert objects.node(node).metadata.labels["nvidia.com/gpu.product"] == A100
    pvc = objects.core.read_namespaced_persistent_volume_claim(claim, NAMESPACE)
    assert pvc.metadata.annotations["volume.kubernetes.io/selected-node"] == node  # the scheduler's choice
    pv = objects.bound_volume(claim)
    assert affinity_terms(pv) == [{LINSTOR_NODE: [node]}]  # exactly the replica node, linstor-csi's key
    assert pv.spec.csi.driver == "linstor.csi.linbit.com" and pv.spec.csi.fs_type == "xfs"
    assert pv.spec.capacity["storage"] == "500Gi" and pv.spec.volume_mode == "Filesystem"
    # The node whose pool is too small (200Gi) for a 500Gi cache is never the one chosen.
    assert node != "ucsd-a100-small"


def test_node_with_a_too_small_pool_is_skipped_and_the_event_says_why(objects):
    cls = objects.storage_class(allowRemoteVolumeAccess="false")
    # Only ucsd-a100-small (pool 200Gi) is allowed: the scheduler refuses it for lack of storage.
    pod = objects.pod(objects.claim(cls, "500Gi"), node="ucsd-a100-small")
    event = wait_for(
        lambda: next((e for e in objects.events(pod) if e.reason == "FailedScheduling"), None), 60, "FailedScheduling"
    )
    assert "did not have enough free storage" in event.message
    assert objects.core.read_namespaced_pod(pod, NAMESPACE).spec.node_name is None
    # A stale choice of that node reaches the provisioner, which refuses it with an event and
    # hands the claim back to the scheduler (the selected-node annotation is removed).
    claim = objects.claim(cls, "500Gi", annotations={"volume.kubernetes.io/selected-node": "ucsd-a100-small"})
    failed = wait_for(
        lambda: next((e for e in objects.events(claim) if e.reason == "ProvisioningFailed"), None), 60, "ProvisioningFailed"
    )
    # (Smaller claims of other tests may have used part of the 200Gi pool.)
    assert re.search(r"ucsd-a100-small: storage pool lvm-thin has \d+Gi free, the volume needs 500Gi", failed.message)
    wait_for(
        lambda: (
            "volume.kubernetes.io/selected-node"
            not in (objects.core.read_namespaced_persistent_volume_claim(claim, NAMESPACE).metadata.annotations or {})
        ),
        30,
        "selected-node annotation removed",
    )
    assert objects.core.read_namespaced_persistent_volume_claim(claim, NAMESPACE).status.phase == "Pending"


def test_two_replicas_pin_the_volume_to_both_nodes_and_the_pod_can_use_either(objects):
    cls = objects.storage_class(placementCount="2", allowRemoteVolumeAccess="false", layerList="drbd storage")
    claim = objects.claim(cls, "100Gi")
    first = objects.running(objects.pod(claim, zone="ucsd"))
    pv = objects.bound_volume(claim)
    nodes = [term[LINSTOR_NODE][0] for term in affinity_terms(pv)]
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert nodes[0] == first.spec.node_name  # the selected node holds the first replica
    other = nodes[1]
    # The pod moves to the other replica's node: allowed. A node without a replica: refused.
    objects.core.delete_namespaced_pod(first.metadata.name, NAMESPACE, grace_period_seconds=0)
    wait_for(
        lambda: first.metadata.name not in [p.metadata.name for p in objects.core.list_namespaced_pod(NAMESPACE).items],
        60,
        "pod gone",
    )
    moved = objects.running(objects.pod(claim, gpus=0, node=other))
    assert moved.spec.node_name == other
    stranger = next(n for n in ("sdsu-cpu-1", "chico-cpu-1", "ucsd-cpu-1") if n not in nodes)
    refused = objects.pod(claim, gpus=0, node=stranger)
    event = wait_for(
        lambda: next((e for e in objects.events(refused) if e.reason == "FailedScheduling"), None), 60, "FailedScheduling"
    )
    assert "didn't match PersistentVolume's node affinity" in event.message  # v1.34 wording


def test_remote_access_by_zone_gives_a_zone_affinity(objects):
    cls = objects.storage_class(allowRemoteVolumeAccess="- fromSame:\n  - topology.kubernetes.io/zone\n")
    claim = objects.claim(cls, "100Gi")
    pod = objects.running(objects.pod(claim, zone="gatech"))
    assert objects.node(pod.spec.node_name).metadata.labels[ZONE] == "gatech"
    assert affinity_terms(objects.bound_volume(claim)) == [{ZONE: ["gatech"]}]


def test_block_volume(objects):
    cls = objects.storage_class(allowRemoteVolumeAccess="false")
    claim = objects.claim(cls, "200Gi", mode="Block")
    pod = objects.running(objects.pod(claim, zone="sdsu", block=True))
    pv = objects.bound_volume(claim)
    assert pv.spec.volume_mode == "Block"
    assert not pv.spec.csi.fs_type  # no filesystem on a raw device
    assert affinity_terms(pv) == [{LINSTOR_NODE: [pod.spec.node_name]}]
    assert pod.spec.containers[0].volume_devices[0].device_path == "/dev/cache"


def test_rook_ceph_binds_at_once_without_topology(objects):
    claim = objects.claim("rook-ceph-block", "500Gi")
    pv = objects.bound_volume(claim, timeout=30)  # no consumer needed: Immediate binding
    assert pv.spec.csi.driver == "rook-ceph.rbd.csi.ceph.com"
    assert pv.spec.node_affinity is None
    assert pv.spec.csi.fs_type == "ext4"


def test_killed_node_goes_not_ready_and_is_tainted(cluster, objects):
    result = cluster.kill_node("humboldt-cpu-1")
    assert "NotReady after" in result.stderr
    node = objects.node("humboldt-cpu-1")
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "Unknown"  # the node-lifecycle controller: "Kubelet stopped posting node status"
    wait_for(
        lambda: any(t.key == "node.kubernetes.io/unreachable" for t in objects.node("humboldt-cpu-1").spec.taints or []),
        30,
        "unreachable taint",
    )
    # The others keep their heartbeat.
    alive = objects.node("ucsd-cpu-1")
    assert next(c for c in alive.status.conditions if c.type == "Ready").status == "True"

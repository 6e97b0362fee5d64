"""Kubernetes objects shaped as the API server returns them (the client's models serialised with
ApiClient.sanitize_for_serialization): claims, volumes, nodes and pods for the day-2 decisions."""

from __future__ import annotations

from kubernetes import client

API = client.ApiClient()
CLAIM = "ms-swift-cache-pvc"
NAMESPACE = "ml-training"
A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def as_api(obj) -> dict:
    return API.sanitize_for_serialization(obj)


def claim(
    phase: str = "Bound",
    volume: str = "pvc-0a1b",
    size: str = "500Gi",
    capacity: str | None = "500Gi",
    storage_class: str = "linstor-fast-cache",
    placement: str | None = f"zone=ucsd gpuProduct={A100}",
    volume_mode: str = "Filesystem",
    name: str = CLAIM,
) -> dict:
    annotations = {"mlcache/placement": placement} if placement else None
    return as_api(
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name, namespace=NAMESPACE, annotations=annotations),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name=storage_class,
                volume_mode=volume_mode,
                volume_name=volume if phase == "Bound" else None,
                resources=client.V1VolumeResourceRequirements(requests={"storage": size}),
            ),
            status=client.V1PersistentVolumeClaimStatus(
                phase=phase, capacity={"storage": capacity} if capacity and phase == "Bound" else None
            ),
        )
    )


def volume(*nodes: str, key: str = "kubernetes.io/hostname", name: str = "pvc-0a1b") -> dict:
    """A PV pinned (as linstor-csi pins it with remote access off) to `nodes`; none: network storage."""
    affinity = None
    if nodes:
        expression = client.V1NodeSelectorRequirement(key=key, operator="In", values=list(nodes))
        affinity = client.V1VolumeNodeAffinity(
            required=client.V1NodeSelector(node_selector_terms=[client.V1NodeSelectorTerm(match_expressions=[expression])])
        )
    return as_api(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeSpec(capacity={"storage": "500Gi"}, node_affinity=affinity),
        )
    )


def node(
    name: str,
    zone: str,
    product: str | None = A100,
    ready: str | None = "True",
    cordoned: bool = False,
    taints: tuple[str, ...] = (),
) -> dict:
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}
    if product:
        labels["nvidia.com/gpu.product"] = product
    conditions = None
    if ready is not None:
        conditions = [client.V1NodeCondition(type="Ready", status=ready, last_transition_time="2026-11-28T23:00:00Z")]
    return as_api(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1NodeSpec(
                unschedulable=cordoned or None,
                taints=[client.V1Taint(key=t, effect="NoExecute", value="nodeshutdown") for t in taints] or None,
            ),
            status=client.V1NodeStatus(conditions=conditions),
        )
    )


def storage_class(allow_expansion: bool | None = True) -> dict:
    return as_api(
        client.V1StorageClass(
            metadata=client.V1ObjectMeta(name="linstor-fast-cache"),
            provisioner="linstor.csi.linbit.com",
            allow_volume_expansion=allow_expansion,
        )
    )


def pod(name: str = "sft-qwen3vl-fire-4gpu-x7k2p", node_name: str | None = None, unschedulable: str | None = None) -> dict:
    conditions = None
    if unschedulable:
        conditions = [client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)]
    return as_api(
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, namespace=NAMESPACE, labels={"job-name": "sft-qwen3vl-fire-4gpu"}),
            spec=client.V1PodSpec(
                node_name=node_name,
                containers=[client.V1Container(name="sft", image="img:1")],
                volumes=[
                    client.V1Volume(
                        name="cache", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=CLAIM)
                    )
                ],
            ),
            status=client.V1PodStatus(phase="Running" if node_name else "Pending", conditions=conditions),
        )
    )

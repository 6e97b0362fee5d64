"""mlcache fleet: the rehearsal cluster's nodes from a fleet description or `kubectl get nodes -o yaml`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mlcache.cli.fleet import main as fleet_main
from mlcache.rehearsal.fleet import KWOK_KEY, POOLS_ANNOTATION, FleetError, fleet_nodes, kubectl_nodes, load
from tests.conftest import ROOT

ZONE, PRODUCT, COUNT = "topology.kubernetes.io/zone", "nvidia.com/gpu.product", "nvidia.com/gpu.count"
A100 = "NVIDIA-A100-SXM4-80GB"


@pytest.fixture(scope="module")
def runbook() -> list[dict]:
    return load(ROOT / "fleets" / "runbook.yaml")


def labels(node: dict) -> dict:
    return node["metadata"]["labels"]


def test_runbook_fleet_has_the_runbooks_zones_and_gpu_mix(runbook):
    zones = {labels(n)[ZONE] for n in runbook}
    assert {"ucsd", "sdsu", "gatech", "chico"} <= zones
    a100 = [n for n in runbook if labels(n).get(PRODUCT) == A100]
    assert {labels(n)[COUNT] for n in a100} == {"4", "8"}
    assert zones - {labels(n)[ZONE] for n in a100}, "one zone must have no A100 at all"
    assert any(PRODUCT in labels(n) and labels(n)[PRODUCT] != A100 for n in runbook), "other GPU products"
    assert any(PRODUCT not in labels(n) for n in runbook), "GPU-less nodes"


def test_every_node_carries_the_labels_and_allocatable_the_cluster_uses(runbook):
    for node in runbook:
        name = node["metadata"]["name"]
        assert labels(node)["kubernetes.io/hostname"] == name
        assert ZONE in labels(node)
        allocatable = node["status"]["allocatable"]
        assert {"cpu", "memory", "pods"} <= set(allocatable)
        if PRODUCT in labels(node):
            assert allocatable["nvidia.com/gpu"] == labels(node)[COUNT]
        else:
            assert "nvidia.com/gpu" not in allocatable
        # Handed to kwok (annotation and label: the label is what kill-node flips).
        assert node["metadata"]["annotations"][KWOK_KEY] == "fake" and labels(node)[KWOK_KEY] == "fake"


def test_linstor_pools_and_topology_labels(runbook):
    by_name = {n["metadata"]["name"]: n for n in runbook}
    small = by_name["ucsd-a100-small"]
    assert small["metadata"]["annotations"][POOLS_ANNOTATION] == "lvm-thin=200Gi"
    assert labels(small)["linbit.com/hostname"] == "ucsd-a100-small"
    assert labels(small)["linbit.com/sp-lvm-thin"] == "true"
    diskless = by_name["humboldt-cpu-1"]
    assert POOLS_ANNOTATION not in diskless["metadata"]["annotations"]
    assert "linbit.com/hostname" not in labels(diskless)


KUBECTL_OUTPUT = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: gpu-01.ucsd.edu
    annotations: {csi.volume.kubernetes.io/nodeid: '{"linstor.csi.linbit.com":"gpu-01"}', node.alpha.kubernetes.io/ttl: "0"}
    labels:
      kubernetes.io/hostname: gpu-01.ucsd.edu
      topology.kubernetes.io/zone: ucsd
      nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB
      linbit.com/hostname: gpu-01.ucsd.edu
      linbit.com/sp-nvme: "true"
      linbit.com/sp-DfltDisklessStorPool: "true"
    resourceVersion: "123"
    uid: 0f0e
  spec:
    podCIDR: 10.244.1.0/24
    taints:
    - {key: nautilus.io/reservation, value: ml, effect: NoSchedule}
    - {key: node.kubernetes.io/unreachable, effect: NoExecute, timeAdded: "2026-11-28T10:00:00Z"}
  status:
    allocatable: {cpu: 95500m, memory: 1031Gi, pods: "110", nvidia.com/gpu: "8", ephemeral-storage: 1Ti}
    capacity: {cpu: "96", memory: 1056Gi, pods: "110", nvidia.com/gpu: "8"}
    conditions: [{type: Ready, status: "True"}]
    images: [{names: [nvcr.io/nvidia/pytorch], sizeBytes: 1}]
    nodeInfo: {kubeletVersion: v1.31.4}
- apiVersion: v1
  kind: Node
  metadata:
    name: cpu-07
    labels: {kubernetes.io/hostname: cpu-07, topology.kubernetes.io/zone: sdsu}
  spec: {unschedulable: true}
  status:
    allocatable: {cpu: "32", memory: 128Gi, pods: "110"}
"""


def test_kubectl_output_keeps_labels_taints_allocatable_and_drops_status_noise():
    gpu, cpu = kubectl_nodes(yaml.safe_load(KUBECTL_OUTPUT), pool_size="3Ti")
    assert gpu["metadata"]["name"] == "gpu-01.ucsd.edu"
    assert labels(gpu)[PRODUCT] == A100 and labels(gpu)[ZONE] == "ucsd"
    assert gpu["spec"]["taints"] == [{"key": "nautilus.io/reservation", "value": "ml", "effect": "NoSchedule"}]
    assert gpu["status"] == {
        "allocatable": {"cpu": "95500m", "memory": "1031Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "1Ti"},
        "capacity": {"cpu": "95500m", "memory": "1031Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "1Ti"},
    }
    assert set(gpu["metadata"]) == {"name", "labels", "annotations"}
    assert "csi.volume.kubernetes.io/nodeid" not in gpu["metadata"]["annotations"]
    # The node's LINSTOR pools come from its linbit.com/sp-* labels (the diskless pool is no pool).
    assert gpu["metadata"]["annotations"][POOLS_ANNOTATION] == "nvme=3Ti"
    # Other nodes are LINSTOR satellites only when labelled so: this cluster labels them.
    assert POOLS_ANNOTATION not in cpu["metadata"]["annotations"]
    assert cpu["spec"] == {"unschedulable": True}


def test_kubectl_output_without_linstor_labels_gives_every_node_a_pool():
    doc = yaml.safe_load(KUBECTL_OUTPUT)
    for item in doc["items"]:
        item["metadata"]["labels"] = {k: v for k, v in item["metadata"]["labels"].items() if not k.startswith("linbit.com/")}
    nodes = kubectl_nodes(doc)
    assert [n["metadata"]["annotations"][POOLS_ANNOTATION] for n in nodes] == ["lvm-thin=2Ti", "lvm-thin=2Ti"]
    assert [labels(n)["linbit.com/hostname"] for n in nodes] == ["gpu-01.ucsd.edu", "cpu-07"]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            {"name": "a", "zone": "ucsd", "cpu": 8, "memory": "64Gi", "gpu": {"product": A100, "count": "8x"}},
            "nodes[0] (a).gpu.count: '8x'",
        ),
        ({"name": "a", "zone": "ucsd", "cpu": 8, "memory": "64 GB"}, "nodes[0] (a).memory: '64 GB' is not a Kubernetes quantity"),
        ({"name": "a", "zone": "ucsd", "cpu": 8, "memory": "64Gi", "gpus": 4}, "nodes[0].gpus: unknown field"),
        ({"name": "A_1", "zone": "ucsd", "cpu": 8, "memory": "64Gi"}, "nodes[0].name: 'A_1' is not a node name"),
        ({"name": "a", "zone": "uc sd", "cpu": 8, "memory": "64Gi"}, "nodes[0] (a).zone: 'uc sd' is not a label value"),
        ({"name": "a", "zone": "ucsd", "memory": "64Gi"}, "nodes[0] (a).cpu: missing"),
        ({"name": "a", "cpu": 8, "memory": "64Gi"}, "nodes[0] (a).zone: missing"),
        (
            {"name": "a", "zone": "ucsd", "cpu": 8, "memory": "1Ti", "taints": [{"key": "k", "effect": "Never"}]},
            "taints[0].effect: 'Never'",
        ),
    ],
)
def test_bad_fleet_entries_are_named_with_the_value_as_typed(node, message):
    with pytest.raises(FleetError, match=None) as error:
        fleet_nodes({"nodes": [node]})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_duplicate_names_are_refused():
    node = {"name": "a", "zone": "ucsd", "cpu": 8, "memory": "64Gi"}
    with pytest.raises(FleetError, match=r"nodes\[1\].name: 'a' appears twice"):
        fleet_nodes({"nodes": [node, node]})


def test_cli_prints_one_node_per_line_and_one_line_on_bad_input(tmp_path):
    good = subprocess.run(
        [sys.executable, "-m", "mlcache", "fleet", str(ROOT / "fleets" / "runbook.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    nodes = [json.loads(line) for line in good.stdout.splitlines()]
    assert nodes == load(ROOT / "fleets" / "runbook.yaml")
    bad = tmp_path / "fleet.yaml"
    bad.write_text("nodes:\n- {name: a, zone: ucsd, cpu: 8, memory: 64Gi, pool: lots}\n")
    result = subprocess.run([sys.executable, "-m", "mlcache", "fleet", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: fleet {bad}: nodes[0] (a).pool: 'lots' is not a Kubernetes quantity (e.g. 96, 500m, 1Ti, 512Gi)"
    )
    assert result.stdout == ""


NODE = "{name: a, zone: ucsd, cpu: 8, memory: 64Gi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"nodes:\n- {NODE}, labels: {{'bad key!': x}}}}\n", "'bad key!' is not a label key"),
        (f"nodes:\n- {NODE}, labels: {{topology.kubernetes.io/zone: sdsu}}}}\n", "comes from the node's `zone`"),
        (f"nodes:\n- {NODE}, labels: {{nvidia.com/gpu.product: H100}}}}\n", "comes from the node's `gpu.product`"),
        ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"b{i}: [*a, *a, *a]\n" for i in range(40)), "at most 100"),
        ("nodes: []\n" + "#" * (5 * 1024 * 1024) + "\n", "larger than 4096 KiB"),
        (b"nodes: [\xff]\n", "not UTF-8"),
    ],
    ids=["bad label key", "zone label", "gpu label", "alias bomb", "huge", "not utf-8"],
)
def test_hostile_fleet_files_are_refused_in_one_line_before_anything_starts(tmp_path, capsys, text, message):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert fleet_main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err


def test_a_device_or_a_fifo_as_fleet_file_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):  # /dev/zero never ends; a FIFO without a writer would block
        assert fleet_main([path]) == 2
        assert "not a regular file" in capsys.readouterr().err


def test_a_bad_pool_size_is_refused_for_a_fleet_description_too():
    with pytest.raises(FleetError) as err:
        load(ROOT / "fleets" / "runbook.yaml", pool_size="lots")
    assert str(err.value) == "--pool-size: 'lots' is not a Kubernetes quantity (e.g. 96, 500m, 1Ti, 512Gi)"


def _kubectl_node(**fields) -> dict:
    node = {"kind": "Node", "metadata": {"name": "a"}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi"}}}
    return {**node, **fields}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (5, "items[0]: '5' is not a Node object"),
        (_kubectl_node(metadata=5), "items[0].metadata: 5 is not a mapping"),
        (_kubectl_node(metadata={"name": "A_1"}), "items[0].metadata.name: 'A_1' is not a node name"),
        (_kubectl_node(status=5), "items[0] (a).status: 5 is not a mapping"),
        (_kubectl_node(spec=5), "items[0] (a).spec: 5 is not a mapping"),
        (_kubectl_node(spec={"taints": 5}), "items[0] (a).spec.taints: 5 is not a list of taints"),
        (_kubectl_node(spec={"taints": [5]}), "items[0] (a).spec.taints[0]: 5 is not a taint"),
        (_kubectl_node(spec={"unschedulable": "no"}), "items[0] (a).spec.unschedulable: 'no' is not true or false"),
        (
            _kubectl_node(status={"allocatable": {"cpu": "abc", "memory": "xyz"}}),
            "items[0] (a).status.allocatable.cpu: 'abc' is not a Kubernetes quantity",
        ),
        (
            _kubectl_node(status={"allocatable": {"bad key!": "1"}}),
            "items[0] (a).status.allocatable: 'bad key!' is not a resource name",
        ),
        (
            _kubectl_node(metadata={"name": "a", "labels": {"x": [1]}}),
            "items[0] (a).metadata.labels.x: [1] is not a label value",
        ),
        (
            _kubectl_node(metadata={"name": "a", "labels": {"bad key!": "x"}}),
            "items[0] (a).metadata.labels: 'bad key!' is not a label key",
        ),
        (_kubectl_node(metadata={"name": "a", "labels": [1]}), "items[0] (a).metadata.labels: [1] is not a mapping"),
    ],
)
def test_bad_kubectl_output_is_refused_like_a_bad_fleet_description(tmp_path, capsys, item, message):
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump({"kind": "List", "items": [item]}))
    assert fleet_main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"error: fleet {path}: {message}" in err, err


def test_a_node_listed_twice_in_kubectl_output_is_refused():
    with pytest.raises(FleetError, match=r"items\[1\].metadata.name: 'a' appears twice"):
        kubectl_nodes({"kind": "List", "items": [_kubectl_node(), _kubectl_node()]})

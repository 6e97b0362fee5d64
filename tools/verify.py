"""Check a deployed stack against the live cluster: the runbook's troubleshooting and
performance checks, automated.

    python -m tools.verify --stack STACK [--config KEY=VALUE]... [--context CONTEXT]

Reads the PVC, its PV, the training pod(s) and the nodes with the kubernetes client (your
kubeconfig), then decides with pure functions (`diagnose`): PVC phase (Pending is expected
before the first consumer under WaitForFirstConsumer), the class it used, the PV's node
affinity, the training pod's node and zone, and whether pod and volume share node and zone.
It also recognises node loss: the volume's only node is NotReady or gone, so the pod that
mounts the claim cannot be placed; it says what is lost and the command that heals it.
Exit 0 when everything holds, 1 on a mismatch (with the runbook's remedy), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from bound_cache import has_taint, pinned_node_names, ready_condition
from names import HOSTNAME_LABEL, LINSTOR_CONTROLLER, LINSTOR_NAMESPACE, OUT_OF_SERVICE_TAINT, ZONE_LABEL

OK, INFO, FAIL = "ok", "info", "FAIL"


@dataclass(frozen=True)
class Expectation:
    """What the stack asked for (from its outputs)."""

    pvc: str
    namespace: str
    storage_class: str
    backend: str
    zone: str | None
    job: str | None
    stack: str = "STACK"


@dataclass
class Snapshot:
    """The live objects as the API returns them (plain dicts, camelCase keys)."""

    pvc: dict | None
    pv: dict | None = None
    pods: list[dict] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    level: str
    check: str
    message: str
    remedy: str = ""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def node_zone(node: dict | None) -> str | None:
    return _get(node, "metadata", "labels", ZONE_LABEL)


def pv_constraints(pv: dict) -> dict[str, set[str]]:
    """Label key -> allowed values from the PV's required node affinity (ORed terms merged)."""
    allowed: dict[str, set[str]] = {}
    for term in _get(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("operator") == "In":
                allowed.setdefault(expression["key"], set()).update(expression.get("values") or [])
    return allowed


def node_satisfies(node: dict, constraints: dict[str, set[str]]) -> bool:
    labels = _get(node, "metadata", "labels") or {}
    name = _get(node, "metadata", "name")
    for key, values in constraints.items():
        value = name if key == HOSTNAME_LABEL and key not in labels else labels.get(key)
        if value not in values:
            return False
    return True


def scheduling_message(pod: dict) -> str | None:
    for condition in _get(pod, "status", "conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def lost_volume_node(snapshot: Snapshot) -> tuple[str, str] | None:
    """(node, how) when the volume's only node is gone or NotReady; None otherwise.

    A node with no Ready condition at all has not reported yet and is not judged."""
    pinned = pinned_node_names(snapshot.pv)
    if len(pinned) != 1:
        return None
    (name,) = pinned
    node = snapshot.nodes.get(name)
    if node is None:
        return name, "gone (its Node object no longer exists)"
    condition = ready_condition(node)
    if condition is None or condition.get("status") == "True":
        return None
    since = condition.get("lastTransitionTime") or "?"
    reason = "the kubelet stopped reporting" if condition.get("status") == "Unknown" else condition.get("reason") or "NotReady"
    marked = ", marked out-of-service" if has_taint(node, OUT_OF_SERVICE_TAINT) else ""
    return name, f"NotReady (Ready={condition.get('status')} since {since}: {reason}{marked})"


def node_loss_finding(snapshot: Snapshot, expect: Expectation, lost: tuple[str, str]) -> Finding:
    node, how = lost
    stuck = [
        _get(p, "metadata", "name")
        for p in snapshot.pods
        if not _get(p, "spec", "nodeName") or _get(p, "spec", "nodeName") == node
    ]
    pods = f"; pod(s) {', '.join(stuck)} cannot be placed (the volume exists only there)" if stuck else ""
    return Finding(
        FAIL,
        "node loss",
        f"the only node of volume {_get(snapshot.pv, 'metadata', 'name')}, {node}, is {how}{pods}",
        "what is lost: only cache data (models and datasets, re-downloaded by the warm-up: the cache is "
        f"rebuildable); the training run restarts from its last checkpoint. Heal: `python -m tools.heal --stack "
        f"{expect.stack}` (a dry run that says what it would do), then the same with --apply.",
    )


def diagnose_pending_pod(pod: dict, expect: Expectation, snapshot: Snapshot) -> Finding:
    name = _get(pod, "metadata", "name")
    message = scheduling_message(pod) or "not scheduled yet"
    if lost_volume_node(snapshot):
        return Finding(INFO, "pod scheduling", f"pod {name} is Pending: {message} (see node loss)")
    if "volume node affinity conflict" in message:
        return Finding(
            FAIL,
            "pod scheduling",
            f"pod {name} is Pending: {message}",
            "the volume was created on a node (or zone) the pod cannot use (PVC bound elsewhere). "
            "Delete the PVC and let the training pod create it (runbook step 2: this deletes the cached data), "
            "or pin mlcache:zone to the volume's zone.",
        )
    if expect.zone and not any(node_zone(n) == expect.zone for n in snapshot.nodes.values()):
        return Finding(
            FAIL,
            "pod scheduling",
            f"pod {name} is Pending and no node is in zone {expect.zone}: {message}",
            f"no nodes in the requested zone: check `kubectl get nodes -l {ZONE_LABEL}={expect.zone}`, "
            "fix mlcache:zone, or unset it to let the scheduler choose.",
        )
    if "Insufficient" in message or "didn't match" in message:
        return Finding(
            FAIL,
            "pod scheduling",
            f"pod {name} is Pending: {message}",
            "insufficient resources (GPUs of job.gpuProduct, cpu, memory) in the zone, or no node matches the "
            "GPU product: `kubectl describe pod` for details; lower job.gpus, change job.gpuProduct or mlcache:zone.",
        )
    return Finding(INFO, "pod scheduling", f"pod {name} is Pending: {message}")


def diagnose(snapshot: Snapshot, expect: Expectation) -> list[Finding]:
    """Every check, in the runbook's order. Pure: the tests feed it recorded API objects."""
    findings: list[Finding] = []
    pvc = snapshot.pvc
    if pvc is None:
        return [Finding(FAIL, "pvc", f"PVC {expect.namespace}/{expect.pvc} not found", "run `pulumi up` for the stack")]
    phase = _get(pvc, "status", "phase")
    used_class = _get(pvc, "spec", "storageClassName")
    if used_class == expect.storage_class:
        findings.append(Finding(OK, "storage class", f"PVC uses {used_class}"))
    else:
        findings.append(
            Finding(
                FAIL,
                "storage class",
                f"PVC uses {used_class}, the stack expects {expect.storage_class}",
                "the PVC predates the backend switch: follow the README's rollback procedure",
            )
        )
    pods = sorted(snapshot.pods, key=lambda p: _get(p, "metadata", "creationTimestamp") or "")
    running = [p for p in pods if _get(p, "spec", "nodeName")]
    if phase == "Pending":
        if not pods:
            findings.append(
                Finding(OK, "pvc", "PVC is Pending: expected under WaitForFirstConsumer until the training pod is scheduled")
            )
        else:
            findings.append(Finding(INFO, "pvc", "PVC is Pending while its consumer is being scheduled"))
    elif phase == "Bound":
        findings.append(Finding(OK, "pvc", f"PVC is Bound to {_get(pvc, 'spec', 'volumeName')}"))
    else:
        findings.append(Finding(FAIL, "pvc", f"PVC phase is {phase}", "`kubectl describe pvc` for the provisioner's events"))

    constraints = pv_constraints(snapshot.pv) if snapshot.pv else {}
    if snapshot.pv is not None:
        shown = ", ".join(f"{k} in {sorted(v)}" for k, v in sorted(constraints.items())) or "none"
        level = OK if constraints or expect.backend != "linstor" else FAIL
        remedy = "" if level == OK else "a LINSTOR volume without node affinity allows remote access: check the class"
        findings.append(Finding(level, "pv node affinity", f"PV {_get(snapshot.pv, 'metadata', 'name')}: {shown}", remedy))
        pv_zones = constraints.get(ZONE_LABEL, set())
        if expect.zone and pv_zones and expect.zone not in pv_zones:
            findings.append(
                Finding(
                    FAIL,
                    "volume zone",
                    f"the volume is in {sorted(pv_zones)}, the stack pins {expect.zone}",
                    "the PVC was bound before the zone was pinned: recreate it (data loss) or pin the volume's zone",
                )
            )

    lost = lost_volume_node(snapshot)
    if lost:
        findings.append(node_loss_finding(snapshot, expect, lost))
    if expect.job and not pods:
        findings.append(Finding(INFO, "training pod", f"no pod of Job {expect.job} (finished and cleaned up, or not created)"))
    for pod in pods:
        if not _get(pod, "spec", "nodeName"):
            findings.append(diagnose_pending_pod(pod, expect, snapshot))
    for pod in running:
        name, node_name = _get(pod, "metadata", "name"), _get(pod, "spec", "nodeName")
        node = snapshot.nodes.get(node_name)
        zone = node_zone(node)
        findings.append(Finding(OK, "training pod", f"pod {name} runs on {node_name} in zone {zone}"))
        if expect.zone and zone != expect.zone:
            findings.append(
                Finding(FAIL, "pod zone", f"pod {name} is in zone {zone}, the stack pins {expect.zone}", "check job affinity")
            )
        if constraints and node is not None:
            if node_satisfies(node, constraints):
                findings.append(Finding(OK, "locality", f"pod {name} and its volume share node {node_name} and zone {zone}"))
            else:
                findings.append(
                    Finding(
                        FAIL,
                        "locality",
                        f"pod {name} runs on {node_name} (zone {zone}) but the volume is pinned to {shown}",
                        "the pod reads the cache remotely: with allowRemoteVolumeAccess false this should not "
                        "schedule; check the class parameters and recreate the PVC next to the pod",
                    )
                )
        elif expect.backend != "linstor":
            findings.append(
                Finding(INFO, "locality", "rook-ceph: the volume is network storage; reads may cross zones (rollback path)")
            )
    if expect.backend == "linstor" and _get(pvc, "spec", "volumeName"):
        volume = _get(pvc, "spec", "volumeName")
        findings.append(
            Finding(
                INFO,
                "linstor replicas",
                f"kubectl exec -n {LINSTOR_NAMESPACE} {LINSTOR_CONTROLLER} -- linstor resource list -r {volume}",
            )
        )
    return findings


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"[{finding.level:>4}] {finding.check}: {finding.message}")
        if finding.remedy:
            lines.append(f"       remedy: {finding.remedy}")
    return "\n".join(lines)


def expectation_for(stack: str, overrides: list[str], kube_namespace: str) -> Expectation:
    from tools.render import render  # noqa: PLC0415  (runs the program: only the CLI needs it)

    run, config = render(stack, overrides, [])
    return expectation_of(stack, run, config, kube_namespace)


def expectation_of(stack: str, run: Any, config: Any, kube_namespace: str) -> Expectation:
    """What a rendered stack asks for (tools.render's ProgramRun and StackConfig)."""
    outputs = run.outputs
    namespace = config.values.get("mlcache:namespace") or kube_namespace
    return Expectation(
        pvc=outputs["pvcName"],
        namespace=namespace,
        storage_class=outputs["storageClass"],
        backend=outputs["backend"],
        zone=None if outputs["zone"] == "scheduler-chosen" else outputs["zone"],
        job=outputs["jobName"],
        stack=stack,
    )


def read_snapshot(expect: Expectation, core: Any, serialize) -> Snapshot:
    """The live objects, read with a kubernetes CoreV1Api."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        pvc = serialize(core.read_namespaced_persistent_volume_claim(expect.pvc, expect.namespace))
    except ApiException as err:
        if err.status == 404:
            return Snapshot(pvc=None)
        raise
    volume = _get(pvc, "spec", "volumeName")
    pv = serialize(core.read_persistent_volume(volume)) if volume else None
    pods = []
    if expect.job:
        pods = serialize(core.list_namespaced_pod(expect.namespace, label_selector=f"job-name={expect.job}").items)
    nodes = {n["metadata"]["name"]: n for n in serialize(core.list_node().items)}
    return Snapshot(pvc=pvc, pv=pv, pods=pods, nodes=nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    args = parser.parse_args(argv)
    from kubernetes import client, config  # noqa: PLC0415

    try:
        config.load_kube_config(context=args.context)
        _, active = config.list_kube_config_contexts()
    except Exception as err:  # no kubeconfig, unknown context
        print(f"error: cannot load the kubeconfig: {err}", file=sys.stderr)
        return 2
    kube_namespace = (active or {}).get("context", {}).get("namespace") or "default"
    expect = expectation_for(args.stack, args.config, kube_namespace)
    api = client.ApiClient()
    snapshot = read_snapshot(expect, client.CoreV1Api(api), api.sanitize_for_serialization)
    findings = diagnose(snapshot, expect)
    print(f"stack {args.stack}: PVC {expect.namespace}/{expect.pvc}, class {expect.storage_class}, zone {expect.zone or 'any'}")
    print(render_findings(findings))
    return 1 if any(f.level == FAIL for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())

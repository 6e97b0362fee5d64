"""The runbook's verification commands (step 7), filled in for one stack: the program exports
them (`verifyCommands`) and mlcache verify prints them as remedies."""

from __future__ import annotations

import shlex

from mlcache.program.names import LINSTOR_CONTROLLER, LINSTOR_NAMESPACE, ZONE_LABEL

ZONE_JSONPATH = "{.metadata.labels." + ZONE_LABEL.replace(".", "\\.") + "}"


def linstor_resources_command(volume: str) -> str:
    """The LINSTOR view of a volume's replicas (which nodes hold it, in which state)."""
    return f"kubectl -n {LINSTOR_NAMESPACE} exec {LINSTOR_CONTROLLER} -- linstor resource list -r {volume}"


def verification_commands(pvc: str, job: str | None, namespace: str | None, linstor: bool) -> dict[str, str]:
    ns = f" -n {shlex.quote(namespace)}" if namespace else ""
    volume = f"$(kubectl get pvc {pvc}{ns} -o jsonpath='{{.spec.volumeName}}')"
    commands = {
        "pvcBinding": f"kubectl get pvc {pvc}{ns} -w",
        "pvNodeAffinity": f"kubectl get pv {volume} -o jsonpath='{{.spec.nodeAffinity}}'",
        "pvcUsage": f"kubectl get pvc {pvc}{ns} -o jsonpath='{{.status.capacity.storage}}'",
    }
    if job:
        pod_node = f"$(kubectl get pods{ns} -l job-name={job} -o jsonpath='{{.items[0].spec.nodeName}}')"
        commands["podNode"] = f"kubectl get pods{ns} -l job-name={job} -o wide"
        commands["podZone"] = f"kubectl get node {pod_node} -o jsonpath='{ZONE_JSONPATH}'"
    if linstor:
        commands["linstorResources"] = linstor_resources_command(volume)
    return commands

"""The runbook's verification commands (step 7), filled in for one stack: the program exports
them (`verifyCommands`) and mlcache verify prints them as remedies."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from mlcache.program.names import LINSTOR_CONTROLLER, LINSTOR_NAMESPACE, RUN_LABEL, ZONE_LABEL

ZONE_JSONPATH = "{.metadata.labels." + ZONE_LABEL.replace(".", "\\.") + "}"


def linstor_resources_command(volume: str) -> str:
    """The LINSTOR view of a volume's replicas (which nodes hold it, in which state)."""
    return f"kubectl -n {LINSTOR_NAMESPACE} exec {LINSTOR_CONTROLLER} -- linstor resource list -r {volume}"


# The runbook's "Check Linstor status": its pods, and the storage pools' free space on each node.
LINSTOR_STATUS = {
    "linstorPods": f"kubectl get pods -n {LINSTOR_NAMESPACE}",
    "linstorStoragePools": f"kubectl -n {LINSTOR_NAMESPACE} exec {LINSTOR_CONTROLLER} -- linstor storage-pool list",
}


def verification_commands(
    pvc: str, job: str | None, namespace: str | None, linstor: bool, workers: Sequence[str] = (), run: str | None = None
) -> dict[str, str]:
    """The runbook's checks of one cache and its training pod, as the runbook writes them; of a
    multi-node run (`workers`: each worker's claim, `run`: the run's name, on every training pod as
    RUN_LABEL) the same checks over every worker's claim and pod."""
    ns = f" -n {shlex.quote(namespace)}" if namespace else ""
    if len(workers) > 1:
        claims = " ".join(workers)
        volume = f"$(kubectl get pvc {claims}{ns} -o jsonpath='{{.items[*].spec.volumeName}}')"
        # Columns, not a jsonpath over .items: with one volume bound so far kubectl prints an object, not a list.
        affinity = "-o custom-columns=NAME:.metadata.name,NODE_AFFINITY:.spec.nodeAffinity.required.nodeSelectorTerms"
        usage = "-o custom-columns=NAME:.metadata.name,CAPACITY:.status.capacity.storage"
        pods = f"kubectl get pods{ns} -l {RUN_LABEL}={run}"
        zone = f"kubectl get nodes -L {ZONE_LABEL} $({pods} -o jsonpath='{{.items[*].spec.nodeName}}')"
    else:
        claims = pvc
        volume = f"$(kubectl get pvc {pvc}{ns} -o jsonpath='{{.spec.volumeName}}')"
        affinity = "-o jsonpath='{.spec.nodeAffinity}'"
        usage = "-o jsonpath='{.status.capacity.storage}'"
        pods = f"kubectl get pods{ns} -l job-name={job}"
        zone = f"kubectl get node $({pods} -o jsonpath='{{.items[0].spec.nodeName}}') -o jsonpath='{ZONE_JSONPATH}'"
    commands = {
        "pvcBinding": f"kubectl get pvc {claims}{ns} -w",
        "pvNodeAffinity": f"kubectl get pv {volume} {affinity}",
        "pvcUsage": f"kubectl get pvc {claims}{ns} {usage}",
    }
    if job:  # no Job, no pods to check
        commands["podNode"] = f"{pods} -o wide"
        commands["podZone"] = zone
    if linstor:
        commands["linstorResources"] = linstor_resources_command(volume)
        commands.update(LINSTOR_STATUS)
    return commands

"""Heal a cache lost with its node (the library of `mlcache heal`): decide from the live objects
whether the node is proven gone and what to delete (`plan_heal`), then carry it out (`apply_plan`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlcache.cluster.bound_cache import deployed_context, get, has_taint, is_ready, pinned_node_names
from mlcache.cluster.diagnosis import DurableState, Expectation, Snapshot
from mlcache.cluster.kube import CLAIM, NAMESPACED_PODS, POD, Kube, api_path
from mlcache.errors import Unreachable
from mlcache.program.names import OUT_OF_SERVICE_TAINT, cache_name_of, claim_generation, generation_claim_name

if TYPE_CHECKING:
    from mlcache.preview.stack_config import StackConfig


def up_command(stack: str) -> list[str]:
    """The `pulumi up` heal --apply runs once the claim is deleted: the refresh drops the claim from
    the state, the up creates it again."""
    return ["pulumi", "up", "--refresh", "--yes", "--skip-preview", "--non-interactive", "--stack", stack]


def up_blocker(stack: str, project: Path) -> str | None:
    """Why `pulumi up` of the stack cannot run here (None: it can get that far), asked before heal
    deletes anything: the stack's backend (pulumi login), the stack itself and its secrets provider
    (a passphrase) are what the up needs first. Reads the stack's config, decrypted, and discards it."""
    command = ["pulumi", "config", "--stack", stack, "--show-secrets", "--json", "--non-interactive"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return f"`pulumi up --stack {stack}` cannot run here ({reason}); nothing was changed"


DELETE_TIMEOUT = 120  # seconds to wait for the claim to go once its users are gone


@dataclass(frozen=True)
class HealPlan:
    refusal: str | None = None
    dead_node: str | None = None
    proof: str = ""
    stuck_pods: tuple[str, ...] = ()
    steps: tuple[str, ...] = field(default_factory=tuple)
    # The durable copy the new claim is restored from (None: the warm-up downloads again).
    restores_from: str | None = None


def refill(durable: DurableState | None) -> tuple[str, str | None]:
    """How the new claim gets the models back, and the durable claim its restore step reads."""
    if durable is None:
        return "the warm-up downloads every model again (no durable copy: cache.durableCopy is off)", None
    if not durable.bound:
        return f"the durable copy {durable.claim} is not bound, so the warm-up downloads every model again", None
    if durable.refreshed is not None:
        return (
            f"its restore step copies the durable copy {durable.claim} (refreshed {durable.refreshed}) into it at disk "
            "speed, verified; the warm-up then finds the models present",
            durable.claim,
        )
    # The record of the last verified refresh lives on the durable volume, which only the restore
    # step reads: a failed or removed refresh Job keeps an earlier record.
    return (
        f"its restore step copies the durable copy {durable.claim} into it if an earlier refresh left a verified copy "
        f"(its refresh Job is {durable.refresh} now); otherwise the warm-up downloads every model again",
        durable.claim,
    )


def mounts_claim(pod: dict, claim: str) -> bool:
    return any(get(v, "persistentVolumeClaim", "claimName") == claim for v in get(pod, "spec", "volumes") or [])


def plan_heal(
    snapshot: Snapshot,
    expect: Expectation,
    *,
    protected: bool,
    allow_protected: bool,
    durable: DurableState | None = None,
    generations: tuple[int, ...] = (),
) -> HealPlan:
    """What healing would do, or why it must not. Pure: the tests feed it API-shaped objects.
    `generations`: those of the cache's live claims (bound_cache.cache_generations)."""
    where = f"{expect.namespace}/{expect.pvc}"
    if snapshot.pvc is None:
        return HealPlan(refusal=f"claim {where} does not exist: nothing to heal (`pulumi up` creates it)")
    volume = get(snapshot.pvc, "spec", "volumeName")
    if get(snapshot.pvc, "status", "phase") != "Bound" or not volume or snapshot.pv is None:
        return HealPlan(refusal=f"claim {where} is not bound to a volume: nothing is lost, nothing to heal")
    nodes = pinned_node_names(snapshot.pv)
    if not nodes:
        return HealPlan(refusal=f"volume {volume} is not pinned to a node (network storage): a node loss does not strand it")
    if len(nodes) > 1:
        return HealPlan(
            refusal=(
                f"volume {volume} has {len(nodes)} replicas ({', '.join(nodes)}): LINSTOR fails over by itself and "
                "the pod can use a surviving replica; nothing to heal (check `linstor resource list -r "
                f"{volume}` in the piraeus-datastore namespace)"
            )
        )
    (name,) = nodes
    node = snapshot.nodes.get(name)
    if node is None:
        proof = f"node {name} no longer exists (its Node object was deleted)"
    elif has_taint(node, OUT_OF_SERVICE_TAINT):
        proof = f"node {name} is marked {OUT_OF_SERVICE_TAINT} (checked to be shut down)"
    elif is_ready(node) and get(node, "spec", "unschedulable"):
        return HealPlan(
            refusal=(
                f"node {name} is only cordoned and still Ready: volume {volume} and its data are there. "
                f"`kubectl uncordon {name}` lets the pod back on it; nothing to heal"
            )
        )
    elif is_ready(node):
        return HealPlan(
            refusal=f"node {name} is Ready: volume {volume} is intact; nothing to heal (mlcache verify says why a pod waits)"
        )
    else:
        condition: dict = next((c for c in get(node, "status", "conditions") or [] if c.get("type") == "Ready"), {})
        return HealPlan(
            refusal=(
                f"cannot prove node {name} is gone: Ready is {condition.get('status', 'unreported')} since "
                f"{condition.get('lastTransitionTime', '?')}, which a network partition or a reboot also shows, and the "
                "volume may come back with it. Once you have checked that it is powered off, mark it the Kubernetes "
                f"way: `kubectl taint nodes {name} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute` (or `kubectl delete "
                f"node {name}`), then run this again"
            )
        )
    if len(generations) > 1:
        return HealPlan(refusal=_move_refusal(expect, generations), dead_node=name, proof=proof)
    stuck = tuple(
        sorted(
            get(p, "metadata", "name")
            for p in snapshot.pods
            if get(p, "spec", "nodeName") == name and mounts_claim(p, expect.pvc)
        )
    )
    steps = [f"force-delete pod {expect.namespace}/{pod} (bound to the dead node {name})" for pod in stuck]
    steps.append(f"delete claim {where} (volume {volume} on {name}: only cache data, already lost)")
    how, source = refill(durable)
    steps.append(
        f"{' '.join(up_command(expect.stack))}: re-creates the claim (nothing else is replaced); the "
        f"training pod binds a fresh volume on a healthy node and {how}"
    )
    refusal = None
    if protected and not allow_protected:  # refused, with the plan the flag would carry out
        refusal = (
            f"stack {expect.stack} protects its cache (cache.protect true): re-creating claim {where} needs "
            "--allow-protected (its data is already lost with the node; the new claim is protected again)"
        )
    return HealPlan(refusal=refusal, dead_node=name, proof=proof, stuck_pods=stuck, steps=tuple(steps), restores_from=source)


def _move_refusal(expect: Expectation, generations: tuple[int, ...]) -> str:
    """Two generations of the cache live: the program takes the newest for the cache, so heal one at a time."""
    cache_name = cache_name_of(expect.pvc)
    current = claim_generation(cache_name, expect.pvc)
    others = ", ".join(generation_claim_name(cache_name, g) for g in generations if g != current)
    if current == max(generations):
        return (
            f"claim {others}, the old claim of the last move, is still kept (cache.protect) beside {expect.pvc}: with "
            f"{expect.pvc} deleted, `pulumi up` would take it for the cache. Nothing was changed. It holds the models "
            f"as they were at the switch, and with {expect.pvc}'s volume lost it may be their only copy left: heal "
            f"re-creates {expect.pvc} only once it is retired, which deletes it, so copy out what you need first. Retire "
            f"it (`mlcache verify --stack {expect.stack}` names it; `pulumi state unprotect` it, set cache.protect "
            f"false, `pulumi up` with the settings {expect.pvc} was made for), then heal"
        )
    return (
        f"a move of the cache from {expect.pvc} into {others} is under way. Nothing was changed. Call the move off first "
        f"(settings back to those of {expect.pvc}, `pulumi up`), then heal"
    )


def connection_blocker(stack: str, config: StackConfig, context: str | None) -> str | None:
    """Why `heal --apply` must not run with this connection, or None. It deletes in the cluster it
    reads, then `pulumi up` re-creates where the stack's provider deploys: one cluster, known here."""
    from mlcache.cluster.live import hidden_connection, stack_provider  # noqa: PLC0415

    if hidden := hidden_connection(config):
        if context:
            return None  # the user names the stack's cluster; nothing here can check it
        return (
            f"--apply: {', '.join(hidden)} is a secret, unreadable here, so the cluster to heal is not known; "
            "give --context naming the stack's cluster"
        )
    if not context:
        return None
    own = stack_provider(config, None)
    if own.cluster:
        return (
            f"--apply --context {context!r}: stack {stack} sets kubernetes:cluster {own.cluster!r}, which `pulumi up` "
            "uses in place of the context's cluster; drop --context so heal reads that cluster too"
        )
    try:
        deploys_to = deployed_context(own, os.environ)
    except (OSError, LookupError) as err:
        raise Unreachable(f"no usable kubeconfig ({type(err).__name__}: {err})") from None
    if deploys_to == context:
        return None
    return (
        f"--apply --context {context!r}: `pulumi up` of stack {stack} deploys with context {deploys_to!r} (its "
        "kubernetes:context, else the kubeconfig's current one), so heal would delete in one cluster and re-create in "
        "another; drop --context, or name that context"
    )


def render_plan(plan: HealPlan, apply: bool) -> str:
    if plan.refusal and not plan.steps:
        return f"refused: {plan.refusal}"
    heading = "will:" if apply else "would (dry run; add --apply to act):"
    lines = [f"node loss proven: {plan.proof}", "with --allow-protected it would:" if plan.refusal else heading]
    lines += [f"  {index}. {step}" for index, step in enumerate(plan.steps, start=1)]
    if plan.refusal:
        lines.append(f"refused: {plan.refusal}")
    return "\n".join(lines)


def read_heal_snapshot(expect: Expectation, kube: Kube) -> Snapshot:
    """The claim, its PV, every node, and every pod of the namespace that mounts the claim."""
    from mlcache.cluster.live import read_snapshot  # noqa: PLC0415

    snapshot = read_snapshot(expect, kube)
    pods = kube.items(api_path(NAMESPACED_PODS, namespace=expect.namespace))
    snapshot.pods = [p for p in pods if mounts_claim(p, expect.pvc)]
    return snapshot


def apply_plan(plan: HealPlan, expect: Expectation, kube: Kube) -> bool:
    """Carry the plan out; True when healed (the outcome is printed on stdout either way)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    for pod in plan.stuck_pods:
        print(f"force-deleting pod {expect.namespace}/{pod}", file=sys.stderr)
        try:
            kube.delete(api_path(POD, namespace=expect.namespace, name=pod), {"gracePeriodSeconds": 0})
        except ApiException as err:
            if err.status != 404:
                raise
    print(f"deleting claim {expect.namespace}/{expect.pvc}", file=sys.stderr)
    claim = api_path(CLAIM, namespace=expect.namespace, name=expect.pvc)
    kube.delete(claim)
    deadline = time.monotonic() + DELETE_TIMEOUT
    while True:
        if kube.optional(claim) is None:
            break
        if time.monotonic() > deadline:
            print(
                f"not healed: claim {expect.namespace}/{expect.pvc} still exists after {DELETE_TIMEOUT}s (a pod on a "
                "live node still uses it: `kubectl describe pvc`)"
            )
            return False
        time.sleep(1)
    from mlcache import CHECKOUT  # noqa: PLC0415

    command = up_command(expect.stack)
    print("running: " + " ".join(command), file=sys.stderr)
    # pulumi's own output is progress: stderr. stdout keeps the report (the plan and its outcome).
    code = subprocess.run(command, cwd=CHECKOUT, stdout=sys.stderr, check=False).returncode
    if code != 0:
        print(f"not healed: the claim is deleted, but `{' '.join(command)}` failed (exit {code}); run it again")
        return False
    refilled = f"restores the durable copy {plan.restores_from}" if plan.restores_from else "the warm-up refills it"
    print(f"healed: claim {expect.namespace}/{expect.pvc} re-created; the pending pod binds a fresh volume and {refilled}")
    return True

"""Heal a cache lost with its node (the library of `mlcache heal`): decide from the live objects
whether the node is proven gone and what to delete (`plan_heal`), then carry it out (`apply_plan`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from mlcache.cluster.bound_cache import (
    deployed_context,
    get,
    has_taint,
    is_cordoned,
    is_ready,
    job_ended,
    mounted_claims,
    pinned_node_names,
    ready_condition,
)
from mlcache.cluster.diagnosis import DurableState, Expectation, Snapshot
from mlcache.cluster.kube import CLAIM, JOB, JOBS, NAMESPACED_PODS, POD, Kube, api_path
from mlcache.cluster.objects import amount_text, free_on, pod_fits_labels, pod_requests, untolerated_taints
from mlcache.errors import Unreachable
from mlcache.program.names import (
    BENCHMARK_APP_LABEL,
    OUT_OF_SERVICE_TAINT,
    SWITCHED_ANNOTATION,
    cache_name_of,
    claim_generation,
    generation_claim_name,
)

if TYPE_CHECKING:
    from mlcache.preview.stack_config import StackConfig


def up_command(stack: str, targets: Sequence[str]) -> list[str]:
    """The `pulumi up` heal --apply runs once the claim is deleted: the refresh drops the claim from
    the state, the up creates it again, and only the targets (the claim; the durable copy's refresh
    Job, pinned to the lost node, which the program no longer registers): a setting changed since the
    last up (a new job.gpus) waits for the user's own `pulumi up` instead of replacing the training
    Job here."""
    return ["pulumi", "up", "--refresh", "--yes", "--skip-preview", "--non-interactive", "--stack", stack, *_targeting(targets)]


def _targeting(targets: Sequence[str]) -> list[str]:
    return [flag for urn in targets for flag in ("--target", urn)]


def _why_failed(done: subprocess.CompletedProcess) -> str:
    """Why a Pulumi CLI command failed: its last `error:` line, else its last line on stderr."""
    errors = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip().startswith("error:")]
    return (errors or done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def state_urns(stack: str, wanted: Mapping[str, str], project: Path) -> tuple[dict[str, str], str]:
    """The URNs the stack's state holds objects under, by ID (namespace/name, which the state keeps in
    plain text): {ID: URN} for the IDs of `wanted` ({ID: type}) it holds, read with `pulumi stack
    export`, or ({}, why not)."""
    command = ["pulumi", "stack", "export", "--stack", stack, "--non-interactive"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {}, _why_failed(done)
    try:
        resources = json.loads(done.stdout).get("deployment", {}).get("resources") or []
    except (json.JSONDecodeError, AttributeError):
        return {}, "`pulumi stack export` printed no deployment"
    found = {
        r["id"]: r["urn"]
        for r in resources
        if isinstance(r, dict) and r.get("id") in wanted and r.get("type") == wanted[r["id"]] and not r.get("delete")
    }
    return found, ""


def targeted_up_blocker(stack: str, targets: Sequence[str], project: Path) -> str | None:
    """Why `pulumi up --target` of these cannot run (None: its preview passes), asked before anything
    is deleted: a targeted update refuses, among others, a provider the checkout changed since the
    last up and a dependency (a StorageClass new since then) left out of the targets."""
    command = ["pulumi", "preview", "--refresh", "--non-interactive", "--stack", stack, *_targeting(targets)]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    reason = _why_failed(done)
    return (
        f"the preview of the targeted `pulumi up` fails ({reason}); nothing was changed. Apply the stack's pending "
        f"changes first (`pulumi up --refresh --stack {stack}`), then heal"
    )


def up_blocker(stack: str, project: Path) -> str | None:
    """Why `pulumi up` of the stack cannot run here (None: it can get that far), asked before heal
    deletes anything: the stack's backend (pulumi login), the stack itself and its secrets provider
    (a passphrase) are what the up needs first. Reads the stack's config, decrypted, and discards it."""
    command = ["pulumi", "config", "--stack", stack, "--show-secrets", "--json", "--non-interactive"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    return f"`pulumi up --stack {stack}` cannot run here ({_why_failed(done)}); nothing was changed"


DELETE_TIMEOUT = 120  # seconds to wait for the claim to go once its users are gone


@dataclass(frozen=True)
class HealPlan:
    refusal: str | None = None
    dead_node: str | None = None
    proof: str = ""
    stuck_pods: tuple[str, ...] = ()
    steps: tuple[str, ...] = field(default_factory=tuple)
    # The claim the new one is restored from: the durable copy, or the old claim a protected move
    # kept (None: the warm-up downloads again).
    restores_from: str | None = None
    # The Jobs heal deletes: those mounting a lost claim that is restored by a move (their pods
    # must not bind the new claim before the copy into it is verified).
    jobs: tuple[str, ...] = ()
    # What the user runs next, when heal does not run `pulumi up` itself (a restore from the kept
    # claim takes settings only the user should change).
    then: tuple[str, ...] = ()


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


def gone_proof(name: str, node: dict | None) -> str | None:
    """What proves the node is gone, the way Kubernetes accepts it (None: nothing does)."""
    if node is None:
        return f"node {name} no longer exists (its Node object was deleted)"
    if has_taint(node, OUT_OF_SERVICE_TAINT):
        return f"node {name} is marked {OUT_OF_SERVICE_TAINT} (checked to be shut down)"
    return None


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
    kept: Snapshot | None = None,
    jobs: Sequence[dict] = (),
) -> HealPlan:
    """What healing would do, or why it must not. Pure: the tests feed it API-shaped objects.
    `generations`: those of the cache's live claims (bound_cache.cache_generations); `kept`: with
    two, the older one's claim, volume and the nodes; `jobs`: the Jobs of the namespace."""
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
    if proven := gone_proof(name, node):
        proof = proven
    elif is_ready(node) and is_cordoned(node):
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
        condition = ready_condition(node) or {}
        return HealPlan(
            refusal=(
                f"cannot prove node {name} is gone: Ready is {condition.get('status', 'unreported')} since "
                f"{condition.get('lastTransitionTime', '?')}, which a network partition or a reboot also shows, and the "
                "volume may come back with it. Once you have checked that it is powered off, mark it the Kubernetes "
                f"way: `kubectl taint nodes {name} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute` (or `kubectl delete "
                f"node {name}`), then run this again"
            )
        )
    kept_claim = None
    if len(generations) > 1:
        kept_claim = get(kept.pvc, "metadata", "name") if kept else None
        switched = get(snapshot.pvc, "metadata", "annotations", SWITCHED_ANNOTATION) is not None
        if refusal := _move_refusal(expect, generations, switched, kept):
            return HealPlan(refusal=refusal, dead_node=name, proof=proof)
    stuck = tuple(
        sorted(
            get(p, "metadata", "name")
            for p in snapshot.pods
            if get(p, "spec", "nodeName") == name and mounts_claim(p, expect.pvc)
        )
    )
    steps = [f"force-delete pod {expect.namespace}/{pod} (bound to the dead node {name})" for pod in stuck]
    refusal = None
    if protected and not allow_protected:  # refused, with the plan the flag would carry out
        refusal = (
            f"stack {expect.stack} protects its cache (cache.protect true): re-creating claim {where} needs "
            "--allow-protected (its data is already lost with the node; the new claim is protected again)"
        )
    if kept_claim is not None:
        base = HealPlan(refusal=refusal, dead_node=name, proof=proof, stuck_pods=stuck)
        return _restore_from_kept(base, expect, kept_claim, f"{where} (volume {volume} on {name})", jobs, steps)
    steps.append(f"delete claim {where} (volume {volume} on {name}: only cache data, already lost)")
    how, source = refill(durable)
    steps.append(
        f"pulumi up --refresh --stack {expect.stack} --target <the claim's URN>: re-creates the claim and nothing else "
        f"(a setting changed since the last up waits for yours, but for the claim's own); the training pod binds a fresh "
        f"volume on {healthy_node(snapshot, name)} and {how}"
    )
    return HealPlan(refusal=refusal, dead_node=name, proof=proof, stuck_pods=stuck, steps=tuple(steps), restores_from=source)


def healthy_node(snapshot: Snapshot, dead: str) -> str:
    """Where the training pod lands once the claim is re-created: a Ready, schedulable node of its
    placement whose taints it tolerates, with room for what it requests, other than the dead one;
    said plainly when none has room now (the pod then waits Pending, the new claim unbound)."""
    pod = next(iter(snapshot.pods), None)
    if pod is None or not any(get(n, "status", "allocatable") for n in snapshot.nodes.values()):
        return "a healthy node"  # nothing to check against
    needs = pod_requests(pod)
    placed = {
        name: node
        for name, node in snapshot.nodes.items()
        if name != dead
        and pod_fits_labels(pod, node)
        and is_ready(node)
        and not is_cordoned(node)
        and not untolerated_taints(pod, node)
    }
    short = {}
    for name, node in sorted(placed.items()):
        free = free_on(node, snapshot.bound_pods)
        lacking = {r: (free.get(r, Decimal(0)), q) for r, q in needs.items() if free.get(r, Decimal(0)) < q}
        if not lacking:
            return "a healthy node"
        short[name] = ", ".join(f"{_amount(r, has)} of {_amount(r, wants)} {r}" for r, (has, wants) in lacking.items())
    where = "; ".join(f"{name}: {lacking} free" for name, lacking in short.items())
    return (
        "a healthy node of its placement once one has room for it: none has now "
        f"({where or 'no Ready, schedulable node of its placement whose taints it tolerates'}), so the pod waits "
        "Pending until then (`mlcache verify` says why)"
    )


def _amount(resource: str, value: Decimal) -> str:
    """A request or a free amount as a person reads it: bytes in Gi, anything else as counted."""
    if resource in ("memory", "ephemeral-storage"):
        return f"{value / 2**30:.4g}Gi"
    return amount_text(value)


def _restore_from_kept(
    base: HealPlan, expect: Expectation, kept_claim: str, lost: str, jobs: Sequence[dict], steps: Sequence[str]
) -> HealPlan:
    """The lost claim is the newer of two generations, training switched onto it, the older kept by
    cache.protect: heal deletes the lost claim and every Job that mounts it (a pod of one would bind
    the new claim before the copy has filled it, and a finished one would make the guard take the
    new claim for switched), and the user's next ups move the cache from the kept claim into a new
    one as any move does (copied, verified, then training switches), with those Jobs off until then."""
    on_lost = [j for j in jobs if expect.pvc in mounted_claims(j)]
    names = tuple(sorted(get(j, "metadata", "name") for j in on_lost))
    steps = [
        *steps,
        *(
            f"delete Job {expect.namespace}/{name} (it mounts the lost claim: no pod may bind the new one before the "
            "copy into it is verified)"
            for name in names
        ),
        f"delete claim {lost}: only cache data, already lost",
    ]
    # The settings that name those Jobs, off until the switch.
    keys = ["job.enabled"]
    if any(get(j, "metadata", "labels", key) == value for j in on_lost for key, value in BENCHMARK_APP_LABEL.items()):
        keys.append("benchmark.enabled")
    stack = f"--stack {expect.stack}"
    finished = [get(j, "metadata", "name") for j in on_lost if job_ended(j, "Complete")]
    again = (
        f" (Job {', '.join(finished)} had completed, and its completion marker was on the lost claim: it trains "
        "again; leave job.enabled false if its outputs are kept elsewhere)"
        if finished
        else ""
    )
    then = (
        "; ".join(f"pulumi config set --path mlcache:{key} false {stack}" for key in keys)
        + f"; pulumi config set --path mlcache:cache.relocate copy {stack}",
        f"pulumi up --refresh {stack}: a move copies {expect.namespace}/{kept_claim} (the models as they were at the "
        f"last switch) into a new {expect.pvc} on a healthy node of its placement, verified",
        f"mlcache verify {stack}, until it says the copy into {expect.pvc} is verified",
        "; ".join(f"pulumi config set --path mlcache:{key} true {stack}" for key in keys)
        + f"; pulumi up {stack}: training runs on the new {expect.pvc}{again}; {kept_claim} stays kept (cache.protect)",
    )
    return replace(base, steps=tuple(steps), restores_from=kept_claim, jobs=names, then=then)


def _kept_refusal(expect: Expectation, kept_claim: str, kept: Snapshot | None) -> str | None:
    """Why the claim a protected move kept cannot be restored from (None: it can): unread, not
    bound, its volume's node(s) gone too, or not Ready and not proven gone (it may come back)."""
    where = f"claim {kept_claim}, the old claim of the last move, kept (cache.protect) beside {expect.pvc},"
    retire = f"Nothing was changed. To re-create {expect.pvc} empty: {_retire(expect, kept_claim)}, then heal"
    if kept is None:
        return f"{where} was not read. Nothing was changed"
    if get(kept.pvc, "status", "phase") != "Bound" or kept.pv is None:
        return f"{where} is not bound to a volume: there is nothing to restore {expect.pvc} from. {retire}"
    nodes = pinned_node_names(kept.pv)
    if not nodes or any(is_ready(kept.nodes.get(n)) for n in nodes):
        return None  # attaches anywhere, or a node of its volume is up (cordoned: the sender tolerates it)
    proofs = [gone_proof(n, kept.nodes.get(n)) for n in nodes]
    if all(proofs):
        return (
            f"{where} is lost too ({'; '.join(p for p in proofs if p)}): there is nothing to restore {expect.pvc} from. {retire}"
        )
    return (
        f"{where} is on {', '.join(nodes)}, not Ready and not proven gone: it may come back, with the models as they "
        f"were at the switch. Nothing was changed. Run heal again once it is Ready (heal then restores {expect.pvc} from "
        "it) or proven gone"
    )


def _other_generations(expect: Expectation, generations: tuple[int, ...]) -> tuple[int | None, list[str]]:
    """The generation of the claim training mounts, and the claims of the others live, oldest first."""
    cache_name = cache_name_of(expect.pvc)
    current = claim_generation(cache_name, expect.pvc)
    return current, [generation_claim_name(cache_name, g) for g in sorted(generations) if g != current]


def _move_refusal(expect: Expectation, generations: tuple[int, ...], switched: bool, kept: Snapshot | None) -> str | None:
    """Two generations of the cache live: the program takes the newest for the cache, so heal one at
    a time. The newer one lost after training switched onto it, beside an older one kept that can be
    copied from, is restored from it (None); a multi-node run's is not (a move copies one claim)."""
    current, other_claims = _other_generations(expect, generations)
    others = ", ".join(other_claims)
    if current != max(generations):
        return (
            f"a move of the cache from {expect.pvc} into {others} is under way. Nothing was changed. Call the move off "
            f"first (settings back to those of {expect.pvc}, `pulumi up`), then heal"
        )
    if not switched:
        return (
            f"a move of the cache from {others} into {expect.pvc} is under way, and training has not switched to "
            f"{expect.pvc}: {others} still holds the cache. Nothing was changed. Call the move off (settings back to "
            f"those of {others}, `pulumi up`), which deletes the lost {expect.pvc}; move again once a node of the "
            "placement is up"
        )
    if expect.run is not None:
        return (
            f"claim {others}, the old claim of the last move, is kept (cache.protect) beside {expect.pvc}, worker 0's "
            f"claim of a job.nodes {len(expect.run.claims)} run: a restore from it would be a move, and a move copies a "
            f"single-node cache. Nothing was changed. To re-create {expect.pvc} empty (the warm-up downloads again): "
            f"{_retire(expect, others)}, then heal"
        )
    return _kept_refusal(expect, others, kept)


def _retire(expect: Expectation, kept_claim: str) -> str:
    return (
        f"retire {kept_claim} first, since with {expect.pvc} deleted `pulumi up` would take it for the cache "
        f"(`pulumi state unprotect` it, set cache.protect false, `pulumi up` with the settings {expect.pvc} was made for)"
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


def _numbered(steps: Sequence[str], start: int = 1) -> list[str]:
    return [f"  {index}. {step}" for index, step in enumerate(steps, start=start)]


def render_plan(plan: HealPlan, apply: bool) -> str:
    if plan.refusal and not plan.steps:
        return f"refused: {plan.refusal}"
    heading = "will:" if apply else "would (dry run; add --apply to act):"
    lines = [f"node loss proven: {plan.proof}", "with --allow-protected it would:" if plan.refusal else heading]
    lines += _numbered(plan.steps)
    if plan.then:
        lines.append(f"then you restore it from {plan.restores_from} (heal does not change the stack's settings):")
        lines += _numbered(plan.then, start=len(plan.steps) + 1)
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


def read_kept(expect: Expectation, generations: tuple[int, ...], kube: Kube) -> tuple[Snapshot | None, list[dict]]:
    """With two generations live, the other one's claim, volume and the nodes (None: one generation),
    and the Jobs of the namespace (what a restore from it deletes)."""
    from mlcache.cluster.live import read_snapshot  # noqa: PLC0415

    if len(generations) < 2:
        return None, []
    other = _other_generations(expect, generations)[1][-1]  # the newest of them
    return read_snapshot(replace(expect, pvc=other, job=None, run=None), kube), kube.items(
        api_path(JOBS, namespace=expect.namespace)
    )


def apply_plan(plan: HealPlan, expect: Expectation, kube: Kube, targets: Sequence[str] = ()) -> bool:
    """Carry the plan out; True when healed (the outcome is printed on stdout either way). `targets`:
    the URNs of the `pulumi up` that re-creates the claim, the claim's first (state_urns); a plan that
    restores from a kept claim runs none."""
    for pod in plan.stuck_pods:
        print(f"force-deleting pod {expect.namespace}/{pod}", file=sys.stderr)
        kube.delete_if_present(api_path(POD, namespace=expect.namespace, name=pod), {"gracePeriodSeconds": 0})
    for job in plan.jobs:
        print(f"deleting Job {expect.namespace}/{job}", file=sys.stderr)
        # Its pods with it (the API's default for a Job leaves them).
        kube.delete_if_present(api_path(JOB, namespace=expect.namespace, name=job), {"propagationPolicy": "Background"})
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
    if plan.then:
        print(f"healed: claim {expect.namespace}/{expect.pvc} deleted; restore it from {plan.restores_from} with these steps:")
        print("\n".join(_numbered(plan.then, start=len(plan.steps) + 1)))
        return True
    from mlcache import CHECKOUT  # noqa: PLC0415

    if not targets:
        raise ValueError("a plan that re-creates the claim needs its URN to target")
    command = up_command(expect.stack, targets)
    print("running: " + shlex.join(command), file=sys.stderr)  # a URN holds `$`: quoted to paste
    # pulumi's own output is progress: stderr. stdout keeps the report (the plan and its outcome).
    try:
        code = subprocess.run(command, cwd=CHECKOUT, stdout=sys.stderr, check=False).returncode
        failure = f"exit {code}" if code else None
    except OSError as err:  # the CLI itself, not the cluster (this runs where cluster errors are caught)
        failure = f"{type(err).__name__}: {err}"
    if failure is not None:
        print(
            f"not healed: the claim is deleted, but `{shlex.join(command)}` failed ({failure}); run it again, or "
            f"`pulumi up --refresh --stack {expect.stack}`, which also applies every other pending change"
        )
        return False
    if kube.optional(claim) is None:
        print(f"not healed: `pulumi up` ran but did not re-create claim {expect.namespace}/{expect.pvc}: see `mlcache verify`")
        return False
    refilled = f"restores the durable copy {plan.restores_from}" if plan.restores_from else "the warm-up refills it"
    print(f"healed: claim {expect.namespace}/{expect.pvc} re-created; the pending pod binds a fresh volume and {refilled}")
    return True

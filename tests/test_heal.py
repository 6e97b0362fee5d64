"""mlcache heal's decisions on API-shaped objects: it heals only a proven node loss of a
single-replica volume, and refuses, saying why, in every other case."""

from __future__ import annotations

import dataclasses

import pytest

from mlcache.cli.heal import main
from mlcache.cluster.diagnosis import Expectation, Snapshot
from mlcache.cluster.heal import plan_heal, render_plan
from tests.api_objects import claim, node, pod, volume

EXPECT = Expectation(
    "ms-swift-cache-pvc", "ml-training", "linstor-fast-cache", "linstor", "ucsd", "sft-qwen3vl-fire-4gpu", stack="prod"
)
HEALTHY = node("gpu-ucsd-2", "ucsd")


def snapshot(dead: dict | None, *, pv=None, pods=()) -> Snapshot:
    nodes = {"gpu-ucsd-2": HEALTHY}
    if dead is not None:
        nodes[dead["metadata"]["name"]] = dead
    return Snapshot(pvc=claim(), pv=pv or volume("gpu-ucsd-1"), pods=list(pods), nodes=nodes)


def heal(snap: Snapshot, protected=False, allow_protected=False):
    return plan_heal(snap, EXPECT, protected=protected, allow_protected=allow_protected)


def test_a_deleted_node_is_proof_and_the_plan_recreates_the_claim():
    stuck = pod("sft-old", node_name="gpu-ucsd-1")
    pending = pod("sft-new", unschedulable="1 node(s) had volume node affinity conflict")
    plan = heal(snapshot(None, pods=[stuck, pending]))
    assert plan.refusal is None and plan.dead_node == "gpu-ucsd-1" and "no longer exists" in plan.proof
    assert plan.stuck_pods == ("sft-old",)
    text = render_plan(plan, apply=False)
    assert "dry run" in text and "force-delete pod ml-training/sft-old" in text
    assert (
        "delete claim ml-training/ms-swift-cache-pvc" in text
        and "pulumi up --refresh --yes --skip-preview --non-interactive --stack prod:" in text
    )


def test_the_out_of_service_taint_is_proof():
    dead = node("gpu-ucsd-1", "ucsd", ready="Unknown", taints=("node.kubernetes.io/out-of-service",))
    plan = heal(snapshot(dead))
    assert plan.refusal is None and "out-of-service" in plan.proof


def test_an_unreachable_node_is_not_proof():
    dead = node("gpu-ucsd-1", "ucsd", ready="Unknown", taints=("node.kubernetes.io/unreachable",))
    plan = heal(snapshot(dead))
    assert plan.refusal.startswith("cannot prove node gpu-ucsd-1 is gone: Ready is Unknown")
    assert "kubectl taint nodes gpu-ucsd-1 node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in plan.refusal


@pytest.mark.parametrize(
    ("dead", "reason"),
    [
        (node("gpu-ucsd-1", "ucsd", cordoned=True), "only cordoned"),
        (node("gpu-ucsd-1", "ucsd"), "is Ready"),
        (node("gpu-ucsd-1", "ucsd", ready="False"), "cannot prove"),
    ],
)
def test_a_live_node_is_refused(dead, reason):
    assert reason in heal(snapshot(dead)).refusal


def test_more_than_one_replica_is_refused():
    plan = heal(snapshot(None, pv=volume("gpu-ucsd-1", "gpu-ucsd-2")))
    assert "2 replicas" in plan.refusal and "LINSTOR fails over by itself" in plan.refusal


def test_protected_stack_needs_the_explicit_flag_and_its_dry_run_shows_what_the_flag_would_do():
    refused, allowed = heal(snapshot(None), protected=True), heal(snapshot(None), protected=True, allow_protected=True)
    assert "--allow-protected" in refused.refusal and allowed.refusal is None
    assert refused.steps == allowed.steps and refused.steps
    lines = render_plan(refused, apply=False).splitlines()
    assert lines[0].startswith("node loss proven: node gpu-ucsd-1 no longer exists")
    assert lines[1] == "with --allow-protected it would:"
    assert lines[2:-1] == [f"  {index}. {step}" for index, step in enumerate(allowed.steps, start=1)]
    assert lines[-1].startswith("refused: stack prod protects its cache (cache.protect true)")
    assert render_plan(refused, apply=True) == render_plan(refused, apply=False)


def test_nothing_to_heal_without_a_bound_pinned_volume():
    assert "does not exist" in plan_heal(Snapshot(pvc=None), EXPECT, protected=False, allow_protected=False).refusal
    unbound = Snapshot(pvc=claim(phase="Pending"), nodes={})
    assert "not bound" in plan_heal(unbound, EXPECT, protected=False, allow_protected=False).refusal
    network = snapshot(None, pv=volume())
    assert "network storage" in heal(network).refusal


def test_command_line_needs_a_stack(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: mlcache heal: the following arguments are required: --stack (see --help)\n"


def test_apply_refuses_before_anything_is_deleted_when_pulumi_up_cannot_run(tmp_path, capsys, monkeypatch):
    """A stack whose secrets the CLI cannot open (no passphrase here): refused before the cluster is
    even read, so no pod or claim is deleted for an up that would then fail."""
    fake = tmp_path / "pulumi"
    fake.write_text(
        "#!/bin/sh\necho 'error: getting stack configuration: get stack secrets manager: passphrase must be set' >&2\nexit 255\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "never-read"))
    code = main(["--stack", "prod", "--allow-protected", "--apply"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (
        "error: --apply re-creates the claim with `pulumi up` after deleting it: `pulumi up --stack prod` cannot run here "
        "(error: getting stack configuration: get stack secrets manager: passphrase must be set); nothing was changed\n"
    )


def test_a_cache_with_two_live_generations_is_healed_one_at_a_time():
    """During a move the new claim is being filled: deleting the claim training mounts would make
    the next up take the other generation for the cache. After a protected move whose kept claim is
    lost too, nothing is left to restore from."""
    both_lost = heal_generations(EXPECT, (0, 1), f"{EXPECT.pvc}-g1", kept=kept_snapshot(ready="Unknown"))
    assert both_lost.refusal.startswith(f"claim {EXPECT.pvc}, the old claim of the last move, is kept (cache.protect)")
    assert "is on gpu-sdsu-1, not Ready either: there is nothing left to restore" in both_lost.refusal
    assert "Nothing was changed" in both_lost.refusal and not both_lost.steps and both_lost.proof
    unread = heal_generations(EXPECT, (0, 1), f"{EXPECT.pvc}-g1")
    assert "and it was not read: there is nothing left to restore" in unread.refusal and not unread.steps
    moving = heal_generations(EXPECT, (0, 1), EXPECT.pvc)
    assert moving.refusal.startswith(f"a move of the cache from {EXPECT.pvc} into {EXPECT.pvc}-g1 is under way")
    assert heal_generations(EXPECT, (1,), f"{EXPECT.pvc}-g1").refusal is None


def job_mounting(name: str, claim_name: str) -> dict:
    volumes = [{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim_name}}]
    return {"metadata": {"name": name}, "spec": {"template": {"spec": {"volumes": volumes}}}}


def kept_snapshot(ready: str = "True") -> Snapshot:
    kept_node = node("gpu-sdsu-1", "sdsu", ready=ready)
    return Snapshot(pvc=claim(name=EXPECT.pvc, volume="pvc-kept"), pv=volume("gpu-sdsu-1"), nodes={"gpu-sdsu-1": kept_node})


def test_after_a_protected_move_heal_deletes_the_lost_claim_and_its_jobs_and_says_how_to_restore_from_the_kept_one():
    """The kept claim holds the models as they were at the switch: the user's next ups move them
    into a new claim like any move, with training off until the copy is verified, so that no pod of
    a Job on the lost claim binds the new one before the copy has filled it."""
    current = f"{EXPECT.pvc}-g1"
    jobs = [job_mounting("sft-run-2", current), job_mounting("sft-run-1", EXPECT.pvc), job_mounting("other", "x")]
    stuck = pod("sft-run-2-abcde", node_name="gpu-ucsd-1")
    stuck["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = current
    expect = dataclasses.replace(EXPECT, pvc=current)
    plan = plan_heal(
        snapshot(None, pods=[stuck]),
        expect,
        protected=True,
        allow_protected=True,
        generations=(0, 1),
        kept=kept_snapshot(),
        jobs=jobs,
    )
    assert plan.refusal is None and plan.restores_from == EXPECT.pvc and plan.jobs == ("sft-run-2",)
    assert plan.steps == (
        "force-delete pod ml-training/sft-run-2-abcde (bound to the dead node gpu-ucsd-1)",
        "delete Job ml-training/sft-run-2 (it mounts the lost claim: its pods must not bind the new one before the copy "
        "into it is verified)",
        f"delete claim ml-training/{current} (volume pvc-0a1b on gpu-ucsd-1): only cache data, already lost",
    )
    assert plan.then[0] == (
        "pulumi config set --path mlcache:job.enabled false --stack prod; pulumi config set --path mlcache:cache.relocate "
        "copy --stack prod"
    )
    assert plan.then[1].startswith(f"pulumi up --refresh --stack prod: a move copies ml-training/{EXPECT.pvc} (the models")
    assert plan.then[-1].startswith("pulumi config set --path mlcache:job.enabled true --stack prod; pulumi up --stack prod")
    lines = render_plan(plan, apply=False).splitlines()
    assert lines[1] == "would (dry run; add --apply to act):" and lines[5] == (
        f"then you restore it from {EXPECT.pvc} (heal does not change the stack's settings):"
    )
    assert lines[6:] == [f"  {index}. {step}" for index, step in enumerate(plan.then, start=4)]
    # prod protects its cache: the same plan, refused without the flag.
    refused = plan_heal(
        snapshot(None, pods=[stuck]),
        expect,
        protected=True,
        allow_protected=False,
        generations=(0, 1),
        kept=kept_snapshot(),
        jobs=jobs,
    )
    assert "--allow-protected" in refused.refusal and refused.steps == plan.steps and refused.then == plan.then


def heal_generations(expect, generations, current, kept=None):
    expect = dataclasses.replace(expect, pvc=current)
    return plan_heal(snapshot(None), expect, protected=False, allow_protected=False, generations=generations, kept=kept)

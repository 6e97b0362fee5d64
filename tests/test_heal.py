"""mlcache heal's decisions on API-shaped objects: it heals only a proven node loss of a
single-replica volume, and refuses, saying why, in every other case."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

import pytest

from mlcache.cli.heal import main
from mlcache.cluster.diagnosis import Expectation, RunExpectation, Snapshot
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
        and "pulumi up --refresh --stack prod --target <the claim's URN>: re-creates the claim and nothing else" in text
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


def test_a_secure_value_the_render_cannot_read_is_given_with_config_and_only_such_a_value(tmp_path, capsys, monkeypatch):
    """A `secure:` job.image (its check refuses the offline placeholder) stopped heal at the render;
    --config gives it, the claim healed still being the stack file's. Any other key is refused:
    heal would otherwise act on a claim `pulumi up` does not re-create."""
    import mlcache.cli.heal as heal_command  # noqa: PLC0415
    from mlcache.preview import render as render_module  # noqa: PLC0415
    from tests.conftest import ROOT  # noqa: PLC0415

    for name in ("__main__.py", "Pulumi.yaml", "mlcache", "workloads"):
        (tmp_path / name).symlink_to(ROOT / name)
    secure_image = "    image:\n      secure: v1:AAAAbm90LXJlYWRhYmxl"
    stack, found = re.subn(r"(?m)^    image: .*$", secure_image, (ROOT / "Pulumi.prod.yaml").read_text())
    assert found == 1  # the Job's image, under mlcache:job
    (tmp_path / "Pulumi.prod.yaml").write_text(stack)
    monkeypatch.setattr(heal_command, "CHECKOUT", tmp_path)
    stack_render = render_module.render_or_refuse
    monkeypatch.setattr(render_module, "render_or_refuse", lambda *args: stack_render(*args, project_dir=tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "never-read"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert main(["--stack", "prod"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: mlcache:job.image is a `secure:` value, which the offline tools cannot read: give its value with "
        "--secret job.image=VALUE to render (mlcache access, verify and heal take it as --config)"
    )
    for key in ("job.image", "mlcache:job.image", 'job["image"]'):  # one path, as `pulumi config set --path` reads it
        assert main(["--stack", "prod", "--config", f"{key}=registry.example/org/sft:1.0"]) == 3  # rendered: on to the cluster
        assert "kubeconfig" in capsys.readouterr().err.lower()
    assert main(["--stack", "nope", "--config", "job.image=x"]) == 2
    assert capsys.readouterr().err.startswith("error: no stack file Pulumi.nope.yaml; stacks here: prod")
    assert main(["--stack", "prod", "--config", "job.image=registry.example/org/sft:1.0", "--config", "zone=sdsu"]) == 2
    assert capsys.readouterr().err == (
        "error: --config zone: heal takes --config only for a `secure:` value of Pulumi.prod.yaml, which the offline "
        "render cannot read; every other value comes from the stack file, which `pulumi up` applies\n"
    )


CLAIM_URN = "urn:pulumi:prod::mlcache::mlcache:index:CacheVolume$kubernetes:core/v1:PersistentVolumeClaim::cache-pvc"
REFRESH_URN = "urn:pulumi:prod::mlcache::mlcache:index:DurableRefresh$kubernetes:batch/v1:Job::refresh"


@pytest.mark.parametrize("preview_fails", [False, True], ids=["preview-passes", "preview-fails"])
def test_heals_up_targets_the_claim_and_the_durable_refresh_found_by_id_and_is_previewed_first(
    tmp_path, monkeypatch, preview_fails
):
    """The claim (and the durable copy's refresh Job, pinned to the lost node) by their IDs in the
    state; the targeted up previewed before anything is deleted, a failing preview refused in one line."""
    import mlcache.cli.heal as heal_command  # noqa: PLC0415
    from mlcache.program.outputs import DurableOutput  # noqa: PLC0415

    resources = [
        {"urn": CLAIM_URN, "type": "kubernetes:core/v1:PersistentVolumeClaim", "id": "ml-training/ms-swift-cache-pvc"},
        {"urn": REFRESH_URN, "type": "kubernetes:batch/v1:Job", "id": "ml-training/ms-swift-cache-pvc-durable-refresh"},
        {"urn": "urn:other", "type": "kubernetes:core/v1:PersistentVolumeClaim", "id": "elsewhere/ms-swift-cache-pvc"},
    ]
    (tmp_path / "export.json").write_text(json.dumps({"deployment": {"resources": resources}}))
    fake = tmp_path / "pulumi"
    failing = "echo 'error: provider urn:x has not been registered yet' >&2; exit 255" if preview_fails else "exit 0"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = stack ]; then cat {tmp_path}/export.json; exit 0; fi\n'
        f'echo "$@" > {tmp_path}/preview-args\n{failing}\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    durable = DurableOutput("ms-swift-cache-pvc-durable", "ms-swift-cache-pvc-durable-refresh", "w")
    targets: list[str] = []
    blocker = heal_command.heal_targets_blocker("prod", dataclasses.replace(EXPECT, durable=durable), targets)
    assert targets == [CLAIM_URN, REFRESH_URN]
    previewed = (tmp_path / "preview-args").read_text().split()
    assert previewed[:2] == ["preview", "--refresh"] and previewed[-4:] == ["--target", CLAIM_URN, "--target", REFRESH_URN]
    if preview_fails:
        assert blocker is not None and blocker.startswith(
            "the preview of the targeted `pulumi up` fails (error: provider urn:x has not been registered yet); "
            "nothing was changed"
        )
    else:
        assert blocker is None
    # A state without the claim: refused, nothing deleted.
    (tmp_path / "export.json").write_text(json.dumps({"deployment": {"resources": resources[1:]}}))
    assert heal_command.heal_targets_blocker("prod", EXPECT, []) == (
        "the claim's URN for `pulumi up --target` cannot be read (the state of stack prod holds no claim "
        "ml-training/ms-swift-cache-pvc); nothing was changed"
    )


def test_the_up_heal_runs_is_printed_quoted_to_paste():
    from mlcache.cluster.heal import up_command  # noqa: PLC0415

    assert shlex.split(shlex.join(up_command("prod", [CLAIM_URN]))) == up_command("prod", [CLAIM_URN])
    assert up_command("prod", [CLAIM_URN])[-2:] == ["--target", CLAIM_URN]


CURRENT = f"{EXPECT.pvc}-g1"


def test_a_cache_with_two_live_generations_is_healed_one_at_a_time():
    """During a move the old claim holds the cache: heal the new one only once the move is called
    off. After a protected move the kept claim is restored from, unless it is lost too, not read, or
    its node may yet come back (then nothing is advised that deletes it)."""
    unproven = heal_generations(EXPECT, (0, 1), CURRENT, kept=kept_snapshot(ready="Unknown"))
    assert unproven.refusal.startswith(f"claim {EXPECT.pvc}, the old claim of the last move, kept (cache.protect) beside")
    assert "is on gpu-sdsu-1, not Ready and not proven gone: it may come back" in unproven.refusal
    assert "Run heal again once it is Ready" in unproven.refusal and "retire" not in unproven.refusal
    assert not unproven.steps and unproven.proof
    gone = heal_generations(EXPECT, (0, 1), CURRENT, kept=kept_snapshot(ready="Unknown", out_of_service=True))
    assert "is lost too (node gpu-sdsu-1 is marked node.kubernetes.io/out-of-service" in gone.refusal
    assert (
        f"there is nothing to restore {CURRENT} from. Nothing was changed. To re-create {CURRENT} empty: retire" in gone.refusal
    )
    assert not gone.steps
    unread = heal_generations(EXPECT, (0, 1), CURRENT)
    assert unread.refusal.endswith("was not read. Nothing was changed") and not unread.steps
    cordoned = heal_generations(EXPECT, (0, 1), CURRENT, kept=kept_snapshot(cordoned=True))
    assert cordoned.refusal is None and cordoned.restores_from == EXPECT.pvc  # the sender tolerates the cordon
    # Verified but not switched (no training Job mounts either claim): the old claim holds the cache.
    unswitched = heal_generations(EXPECT, (0, 1), CURRENT, kept=kept_snapshot(), switched=False)
    assert unswitched.refusal.startswith(
        f"a move of the cache from {EXPECT.pvc} into {CURRENT} is under way, and training has not switched to {CURRENT}"
    )
    moving = heal_generations(EXPECT, (0, 1), EXPECT.pvc, kept=kept_snapshot())
    assert moving.refusal.startswith(f"a move of the cache from {EXPECT.pvc} into {CURRENT} is under way. Nothing")
    run = RunExpectation("sft", (CURRENT, f"{CURRENT}-w1"), "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu", 4)
    multi = heal_generations(dataclasses.replace(EXPECT, run=run), (0, 1), CURRENT, kept=kept_snapshot())
    assert "a move copies a single-node cache. Nothing was changed" in multi.refusal and not multi.steps
    assert heal_generations(EXPECT, (1,), CURRENT).refusal is None


def job_mounting(name: str, claim_name: str, labels: dict | None = None, complete: bool = False) -> dict:
    volumes = [{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim_name}}]
    status = {"conditions": [{"type": "Complete", "status": "True"}]} if complete else {"active": 1}
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"template": {"spec": {"volumes": volumes}}},
        "status": status,
    }


def kept_snapshot(ready: str = "True", out_of_service: bool = False, cordoned: bool = False) -> Snapshot:
    taints = ("node.kubernetes.io/out-of-service",) if out_of_service else ()
    kept_node = node("gpu-sdsu-1", "sdsu", ready=ready, taints=taints, cordoned=cordoned)
    return Snapshot(pvc=claim(name=EXPECT.pvc, volume="pvc-kept"), pv=volume("gpu-sdsu-1"), nodes={"gpu-sdsu-1": kept_node})


def lost_snapshot(pods=(), switched: bool = True) -> Snapshot:
    lost = snapshot(None, pods=pods)
    lost.pvc["metadata"]["name"] = CURRENT
    if switched:
        lost.pvc["metadata"]["annotations"]["mlcache/switched-from"] = EXPECT.pvc
    return lost


def test_after_a_protected_move_heal_deletes_the_lost_claim_and_its_jobs_and_says_how_to_restore_from_the_kept_one():
    """The kept claim holds the models as they were at the switch: the user's next ups move them
    into a new claim like any move, with the Jobs on the lost claim off until the copy is verified,
    so that no pod binds the new one before the copy has filled it."""
    jobs = [
        job_mounting("sft-run-2", CURRENT),
        job_mounting("sft-storage-bench", CURRENT, labels={"app": "mlcache-benchmark"}, complete=True),
        job_mounting("sft-run-1", EXPECT.pvc, complete=True),
        job_mounting("other", "x"),
    ]
    stuck = pod("sft-run-2-abcde", node_name="gpu-ucsd-1")
    stuck["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = CURRENT
    expect = dataclasses.replace(EXPECT, pvc=CURRENT)
    lost = lost_snapshot(pods=[stuck])
    plan = plan_heal(lost, expect, protected=True, allow_protected=True, generations=(0, 1), kept=kept_snapshot(), jobs=jobs)
    assert plan.refusal is None and plan.restores_from == EXPECT.pvc and plan.jobs == ("sft-run-2", "sft-storage-bench")
    assert plan.steps == (
        "force-delete pod ml-training/sft-run-2-abcde (bound to the dead node gpu-ucsd-1)",
        "delete Job ml-training/sft-run-2 (it mounts the lost claim: no pod may bind the new one before the copy into "
        "it is verified)",
        "delete Job ml-training/sft-storage-bench (it mounts the lost claim: no pod may bind the new one before the "
        "copy into it is verified)",
        f"delete claim ml-training/{CURRENT} (volume pvc-0a1b on gpu-ucsd-1): only cache data, already lost",
    )
    assert plan.then[0] == (
        "pulumi config set --path mlcache:job.enabled false --stack prod; pulumi config set --path "
        "mlcache:benchmark.enabled false --stack prod; pulumi config set --path mlcache:cache.relocate copy --stack prod"
    )
    assert plan.then[1].startswith(f"pulumi up --refresh --stack prod: a move copies ml-training/{EXPECT.pvc} (the models")
    assert plan.then[2] == f"mlcache verify --stack prod, until it says the copy into {CURRENT} is verified"
    assert plan.then[3].startswith(
        "pulumi config set --path mlcache:job.enabled true --stack prod; pulumi config set --path "
        "mlcache:benchmark.enabled true --stack prod; pulumi up --stack prod"
    )
    assert "Job sft-storage-bench had completed" in plan.then[3]
    lines = render_plan(plan, apply=False).splitlines()
    assert lines[1] == "would (dry run; add --apply to act):" and lines[6] == (
        f"then you restore it from {EXPECT.pvc} (heal does not change the stack's settings):"
    )
    assert lines[7:] == [f"  {index}. {step}" for index, step in enumerate(plan.then, start=5)]
    # prod protects its cache: the same plan, refused without the flag.
    refused = plan_heal(lost, expect, protected=True, allow_protected=False, generations=(0, 1), kept=kept_snapshot(), jobs=jobs)
    assert "--allow-protected" in refused.refusal and refused.steps == plan.steps and refused.then == plan.then
    # A training Job that had completed on the lost claim: said to train again.
    jobs[0] = job_mounting("sft-run-2", CURRENT, complete=True)
    finished = plan_heal(lost, expect, protected=True, allow_protected=True, generations=(0, 1), kept=kept_snapshot(), jobs=jobs)
    assert "(Job sft-run-2, sft-storage-bench had completed, and its completion marker was on the lost claim" in finished.then[3]


def heal_generations(expect, generations, current, kept=None, switched=True):
    expect = dataclasses.replace(expect, pvc=current)
    lost = lost_snapshot(switched=switched and current == CURRENT)
    return plan_heal(lost, expect, protected=False, allow_protected=False, generations=generations, kept=kept)


def test_the_plan_says_when_no_healthy_node_of_the_placement_has_room_for_the_training_pod():
    """Heal re-creates the claim either way (its data is lost), but promises a healthy node only
    when a Ready one of the placement has room: else it says the pod waits, and where room is short."""

    def with_gpus(obj: dict, section: str, gpus: int) -> dict:
        copy = json.loads(json.dumps(obj))
        if section == "allocatable":
            copy["status"]["allocatable"] = {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": str(gpus)}
        else:
            copy["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": str(gpus)}}
        return copy

    training = with_gpus(pod("sft-new", unschedulable="1 node(s) had volume node affinity conflict"), "requests", 4)
    healthy = with_gpus(HEALTHY, "allocatable", 4)
    holder = {**with_gpus(pod("other-run", node_name="gpu-ucsd-2"), "requests", 4), "metadata": {"name": "other-run"}}
    elsewhere = with_gpus(node("gpu-sdsu-1", "sdsu", product="NVIDIA-H100-80GB-HBM3"), "allocatable", 8)
    training["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}

    def plan_text(bound: list[dict]) -> str:
        snap = Snapshot(
            pvc=claim(),
            pv=volume("gpu-ucsd-1"),
            pods=[training],
            nodes={"gpu-ucsd-2": healthy, "gpu-sdsu-1": elsewhere},
            bound_pods=bound,
        )
        return render_plan(heal(snap), apply=False)

    full = plan_text([holder])
    assert (
        "on a healthy node of its placement once one has room for it: none has now (gpu-ucsd-2: 0 of 4 nvidia.com/gpu free)"
        in full
    )
    assert "gpu-sdsu-1" not in full  # another GPU product: not of the placement
    assert "binds a fresh volume on a healthy node and" in plan_text([])
    # Short of memory, not GPUs: the shortage named is the memory's.
    training["spec"]["containers"][0]["resources"]["requests"]["memory"] = "768Gi"
    assert "none has now (gpu-ucsd-2: 512Gi of 768Gi memory free)" in plan_text([])
    del training["spec"]["containers"][0]["resources"]["requests"]["memory"]
    # A node whose taint the pod does not tolerate is no place for it.
    healthy["spec"]["taints"] = [{"key": "dedicated", "value": "other-team", "effect": "NoSchedule"}]
    assert "none has now (no Ready, schedulable node of its placement whose taints it tolerates)" in plan_text([])
    training["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "other-team"}]
    assert "binds a fresh volume on a healthy node and" in plan_text([])


def test_a_pulumi_cli_that_cannot_start_is_said_as_such_not_as_an_unreachable_cluster(tmp_path, monkeypatch, capfd):
    """apply_plan runs inside the block that turns network errors into "the API server cannot be
    reached": a CLI that cannot start (not executable here) is reported as the up's failure instead."""
    from mlcache.cluster.heal import apply_plan  # noqa: PLC0415
    from mlcache.cluster.live import cluster_errors  # noqa: PLC0415

    class Cluster:
        """The claim as the API server keeps it: deleted on request."""

        api = type("Api", (), {"configuration": type("Configuration", (), {"host": "https://10.0.0.1:6443"})()})()

        def __init__(self) -> None:
            self.claim: dict | None = claim()

        def delete_if_present(self, path: str, body: dict) -> None:
            pass

        def delete(self, path: str) -> None:
            self.claim = None

        def optional(self, path: str) -> dict | None:
            return self.claim

    (tmp_path / "pulumi").write_text("#!/bin/sh\nexit 0\n")  # not executable: PermissionError
    monkeypatch.setenv("PATH", str(tmp_path))
    plan = heal(snapshot(None))
    with cluster_errors(Cluster()):
        healed = apply_plan(plan, EXPECT, Cluster(), [CLAIM_URN])
    out = capfd.readouterr().out
    assert healed is False and "cannot be reached" not in out
    assert "not healed: the claim is deleted, but `pulumi up --refresh" in out and "failed (PermissionError: " in out

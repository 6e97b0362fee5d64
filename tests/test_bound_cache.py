"""The bound-cache guard's decisions on API-shaped objects: a change the bound volume cannot take
is refused with one message naming where it is bound, the configured placement and the ways out."""

from __future__ import annotations

import dataclasses

import pulumi
import pytest

from mlcache.cluster.bound_cache import (
    LiveCache,
    PlacementRecord,
    ProviderSettings,
    Unread,
    Wanted,
    assume_live,
    judge,
    quantity_bytes,
    read_live_cache,
)
from mlcache.preview.diff import base_claim
from mlcache.preview.mock_engine import ProgramRun, run_program
from mlcache.preview.render import as_json
from mlcache.preview.stack_config import load_stack_config
from tests.api_objects import A100, CLAIM, H100, NAMESPACE, claim, node, storage_class, volume
from tests.conftest import rendered

UCSD = node("gpu-ucsd-1", "ucsd")
WANTED = Wanted(
    stack="prod",
    claim=CLAIM,
    storage_class="linstor-fast-cache",
    volume_mode="Filesystem",
    size="500Gi",
    placement=PlacementRecord("ucsd", A100),
    relocate="false",
    protect=False,
    expansion_allowed=True,
    has_consumer=True,
)


def wanted(**changes) -> Wanted:
    return dataclasses.replace(WANTED, **changes)


def bound(pvc=None, nodes=(UCSD,), **kwargs) -> LiveCache:
    return LiveCache(NAMESPACE, pvc or claim(), volume("gpu-ucsd-1"), list(nodes), kwargs.get("sc", storage_class()))


def test_the_same_placement_passes_and_says_where_the_cache_is():
    verdict = judge(WANTED, bound())
    assert verdict.refusal is None
    assert "bound to volume pvc-0a1b on node gpu-ucsd-1 (zone ucsd" in verdict.notes[0]


def test_a_zone_change_is_refused_naming_node_zone_placement_and_both_ways_out():
    refusal = judge(wanted(placement=PlacementRecord("sdsu", A100)), bound()).refusal
    assert "node gpu-ucsd-1 (zone ucsd, GPU product NVIDIA-A100-SXM4-80GB)" in refusal
    assert "configured placement (zone sdsu, GPU product NVIDIA-A100-SXM4-80GB) cannot reach it" in refusal
    assert "Nothing was changed" in refusal
    assert "put the placement back (mlcache:zone ucsd or unset, job.gpuProduct NVIDIA-A100-SXM4-80GB)" in refusal
    assert "pulumi config set --path mlcache:cache.relocate fresh" in refusal and "DATA LOSS" in refusal


def test_protected_cache_refusal_says_to_unprotect_with_the_relocation():
    refusal = judge(wanted(placement=PlacementRecord("sdsu", A100), protect=True), bound()).refusal
    assert "cache.relocate fresh` plus `pulumi config set --path mlcache:cache.protect false`" in refusal


def test_a_gpu_product_the_volume_node_lacks_is_refused_and_pinning_its_own_zone_is_not():
    assert "GPU product NVIDIA-H100" in judge(wanted(placement=PlacementRecord("ucsd", H100)), bound()).refusal
    unpinned = claim(placement=f"zone=* gpuProduct={A100}")
    assert judge(wanted(placement=PlacementRecord("ucsd", A100)), bound(unpinned)).refusal is None
    assert judge(wanted(placement=PlacementRecord("sdsu", A100)), bound(unpinned)).refusal is not None
    assert judge(wanted(placement=PlacementRecord(None, A100)), bound()).refusal is None


def test_relocate_lets_the_placement_change_through_and_says_it_recreates_the_cache():
    verdict = judge(wanted(placement=PlacementRecord("sdsu", A100), relocate="fresh"), bound())
    assert verdict.refusal is None and "relocating" in verdict.notes[0] and "DATA LOSS" in verdict.notes[0]


def test_relocate_of_a_protected_cache_is_refused_until_unprotected():
    refusal = judge(wanted(placement=PlacementRecord("sdsu", A100), relocate="fresh", protect=True), bound()).refusal
    assert "re-creates the protected cache" in refusal and "mlcache:cache.protect false" in refusal


def test_relocate_left_on_does_nothing_while_nothing_changes_and_refuses_a_growth_it_would_wipe():
    verdict = judge(wanted(relocate="fresh"), bound())
    assert verdict.refusal is None and "relocating" not in " ".join(verdict.notes)
    refusal = judge(wanted(relocate="fresh", size="600Gi"), bound()).refusal
    assert "relocate is still fresh" in refusal and "relocate false" in refusal


def test_relocate_left_on_recreates_for_a_shrink():
    verdict = judge(wanted(relocate="fresh", size="100Gi"), bound())
    assert verdict.refusal is None and "its size changes (500Gi -> 100Gi)" in verdict.notes[0]


def test_a_shrink_is_refused_with_the_way_out():
    refusal = judge(wanted(size="100Gi"), bound()).refusal
    assert "smaller than the live claim ml-training/ms-swift-cache-pvc (500Gi)" in refusal
    assert "put cache.size back to 500Gi or more" in refusal and "cache.relocate fresh" in refusal


def test_shrinking_back_after_a_failed_expansion_is_allowed_as_kubernetes_allows_it():
    failed_expansion = claim(size="800Gi", capacity="500Gi")
    assert judge(wanted(size="600Gi"), bound(failed_expansion)).refusal is None
    assert judge(wanted(size="500Gi"), bound(failed_expansion)).refusal is not None


@pytest.mark.parametrize(
    ("expansion_allowed", "live_class", "refused", "way_out"),
    [
        (True, storage_class(True), False, ""),
        (False, storage_class(True), True, "mlcache:linstor.allowVolumeExpansion true"),
        (None, storage_class(False), True, "ask the cluster admin"),
        (None, storage_class(True), False, ""),
    ],
)
def test_growth_needs_a_class_that_allows_expansion(expansion_allowed, live_class, refused, way_out):
    verdict = judge(wanted(size="1Ti", expansion_allowed=expansion_allowed), bound(sc=live_class))
    assert (verdict.refusal is not None) == refused
    if refused:
        assert way_out in verdict.refusal and "does not allow expansion" in verdict.refusal


def test_an_unbound_claim_takes_no_size_change_but_any_placement():
    pending = LiveCache(NAMESPACE, claim(phase="Pending"))
    assert "not bound yet" in judge(wanted(size="600Gi"), pending).refusal
    moved = judge(wanted(placement=PlacementRecord("sdsu", H100)), pending)
    assert moved.refusal is None and moved.unbound  # the placement record may follow the config
    assert not judge(WANTED, bound()).unbound and not judge(WANTED, Unread("offline")).unbound


def test_absent_claim_network_storage_replacement_and_offline_stand_aside():
    assert "does not exist yet" in judge(WANTED, LiveCache(NAMESPACE, None)).notes[0]
    rook = LiveCache(NAMESPACE, claim(), volume(), [])
    assert judge(wanted(placement=PlacementRecord("sdsu", H100)), rook).refusal is None
    switched = wanted(storage_class="rook-ceph-block", placement=PlacementRecord("sdsu", A100), relocate="fresh")
    assert "re-created by this change" in judge(switched, bound()).notes[0]
    assert judge(wanted(volume_mode="Block", size="1Gi", relocate="fresh"), bound()).refusal is None
    pending = LiveCache(NAMESPACE, claim(phase="Pending"))  # nothing cached yet: it simply follows
    assert "re-created by this change" in judge(dataclasses.replace(switched, relocate="false"), pending).notes[0]


def test_a_change_that_re_creates_a_bound_claim_is_refused_unless_relocate_says_how():
    """A class or volume-mode change re-creates the claim (Kubernetes cannot change either): with
    cache.relocate false the models would go with it, so the guard refuses and names both ways."""
    for change in ({"storage_class": "rook-ceph-block"}, {"volume_mode": "Block"}):
        refusal = judge(wanted(**change), bound()).refusal
        assert refusal.startswith(f"bound-cache guard: this change re-creates the bound claim {NAMESPACE}/{CLAIM}: its ")
        assert "Nothing was changed" in refusal and "cache.relocate fresh" in refusal
        # A raw device holds no files to copy: only a class change is offered the move.
        assert ("cache.relocate copy" in refusal) == ("storage_class" in change)
    offline = judge(wanted(size="1Gi"), Unread("offline render"))
    assert offline.refusal is None and offline.notes == ("bound-cache guard stood aside: offline render",)


def test_where_a_move_by_copy_is_refused_no_refusal_offers_it():
    """Block mode (a raw device: no files) and multi-node runs (a copy moves one claim): the settings
    refuse cache.relocate copy there, so the guard's ways out name fresh only, and say why."""
    block = claim(volume_mode="Block")
    cases = [
        (wanted(volume_mode="Block", placement=PlacementRecord("sdsu", A100)), bound(block), "a raw device holds no files"),
        (wanted(volume_mode="Block", size="100Gi"), bound(block), "a raw device holds no files"),
        (wanted(volume_mode="Filesystem"), bound(block), "a raw device holds no files"),  # Block -> Filesystem
        (wanted(nodes=2, placement=PlacementRecord("sdsu", A100)), bound(), "a copy moves a single-node cache"),
        (wanted(nodes=2, size="100Gi"), bound(), "a copy moves a single-node cache"),
    ]
    for asked, live, why in cases:
        refusal = judge(asked, live).refusal
        assert "cache.relocate copy" not in refusal and "cache.relocate fresh" in refusal, refusal
        assert f"(no move by copy here: {why}" in refusal
    protected = judge(wanted(volume_mode="Block", relocate="fresh", protect=True, size="100Gi"), bound(block)).refusal
    assert "re-creates the protected cache" in protected and "cache.relocate copy" not in protected
    assert "(no move by copy here: a raw device holds no files" in protected
    named = judge(wanted(claim="ms.swift-cache", placement=PlacementRecord("sdsu", A100)), bound()).refusal
    assert "cache.relocate copy" not in named and "no move by copy here: the copy's objects are named after cache.name" in named
    # Where it can, the move is offered first.
    assert "cache.relocate copy" in judge(wanted(placement=PlacementRecord("sdsu", A100)), bound()).refusal


def test_a_growth_with_relocate_fresh_left_on_says_to_set_it_false_even_when_protected():
    """Unprotecting would only lead to the growth refusal: that one comes first."""
    refusal = judge(wanted(relocate="fresh", protect=True, size="600Gi"), bound()).refusal
    assert "relocate is still fresh" in refusal and "cache.protect false" not in refusal


def test_a_gone_node_is_reported_as_node_loss_not_refused():
    verdict = judge(wanted(placement=PlacementRecord("sdsu", A100)), bound(nodes=()))
    assert verdict.refusal is None and "mlcache heal --stack prod" in verdict.notes[0]


def test_no_consumer_no_placement_refusal():
    assert judge(wanted(placement=PlacementRecord("sdsu", A100), has_consumer=False), bound()).refusal is None


def test_placement_records_round_trip_and_quantities_parse():
    for record in (PlacementRecord("ucsd", A100), PlacementRecord(None, H100)):
        assert PlacementRecord.parse(record.text()) == record
    assert PlacementRecord.parse("something else") is None and PlacementRecord.parse(None) is None
    assert quantity_bytes("500Gi") == 500 * 2**30 and quantity_bytes("1T") == 10**12 and quantity_bytes("1024") == 1024


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- {name: gone, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}
users:
- {name: me, user: {token: not-a-real-token}}
contexts:
- {name: gone, context: {cluster: gone, user: me, namespace: team}}
current-context: gone
"""


def test_no_kubeconfig_or_no_reachable_cluster_makes_the_guard_stand_aside(tmp_path):
    missing = read_live_cache(CLAIM, None, ProviderSettings(kubeconfig=str(tmp_path / "none")), {})
    assert isinstance(missing, Unread) and missing.reason.startswith("no cluster to read")
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    for provider, environ in ((ProviderSettings(), {"KUBECONFIG": str(path)}), (ProviderSettings(kubeconfig=KUBECONFIG), {})):
        unreachable = read_live_cache(CLAIM, None, provider, environ)
        assert isinstance(unreachable, Unread)
        assert unreachable.reason.startswith("cannot reach the cluster to read PersistentVolumeClaim team/ms-swift-cache-pvc")
    unknown_context = read_live_cache(CLAIM, None, ProviderSettings(context="elsewhere"), {"KUBECONFIG": str(path)})
    assert isinstance(unknown_context, Unread) and "elsewhere" in unknown_context.reason


def test_a_refused_change_prints_the_refusal_alone_not_the_guards_pass_line_before_it():
    """`pulumi preview` of a zone change the cache cannot follow: the error, with no `claim ... is
    bound to ...` note ahead of it that reads as the guard having passed the change."""
    live = base_claim(as_json(rendered("prod")))
    for overrides, refused in ((["zone=sdsu"], True), ([], False)):
        config = load_stack_config("prod", overrides)
        run = ProgramRun()
        with assume_live(live):
            if refused:
                with pytest.raises(pulumi.RunError, match=r"bound-cache guard: the cache .* is bound to"):
                    run_program(config.engine_config(), sorted(config.secret_keys), "prod", run)
            else:
                run_program(config.engine_config(), sorted(config.secret_keys), "prod", run)
        said = [note for note in run.notes if note.startswith("bound-cache guard: claim")]
        assert bool(said) is not refused, run.notes

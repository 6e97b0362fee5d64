"""mlcache: the zone-local model cache runbook as a Pulumi program.

Reads like the runbook: typed settings, the StorageClass (step 1), the cache PVC (step 3),
the training Job pinned next to it (steps 5-6), and the verification commands (step 7).
"""

from dataclasses import replace

import pulumi

from mlcache.cluster.bound_cache import guard_bound_cache
from mlcache.program.components.cache_copy import CacheCopy, move_output
from mlcache.program.components.cache_pod import CachePod
from mlcache.program.components.cache_volume import CacheVolume, placement_of
from mlcache.program.components.durable_copy import DurableClaim, DurableRefresh, durable_output
from mlcache.program.components.hub_credentials import HubCredentials, SecretEnv
from mlcache.program.components.ingress_isolation import IngressIsolation
from mlcache.program.components.secret_flow import SecretFlow
from mlcache.program.components.storage_benchmark import StorageBenchmark
from mlcache.program.components.storage_class import LinstorStorageClass
from mlcache.program.components.training_job import TrainingJob
from mlcache.program.components.training_workers import TrainingWorkers
from mlcache.program.components.workload_scripts import WorkloadScripts
from mlcache.program.names import INGRESS_POLICY, SCRIPTS_CONFIG_MAP, hub_secret_name, secret_env_name
from mlcache.program.outputs import SCHEDULER_CHOSEN, RunOutput
from mlcache.program.settings import load_settings, read_secret_env, read_tokens, secret_keys
from mlcache.program.verification import verification_commands

settings = load_settings()
# The secret settings, checked with the others before anything is registered (also with job.enabled
# false): the hub tokens and secretEnv's values, as secret Outputs.
tokens, secret_values = read_tokens(), read_secret_env(settings)
# A key given as a secret keeps every object input and output it flows into secret.
secrets = SecretFlow(secret_keys())

# Day 2: read the live cache and refuse, before anything is registered, a change of placement or
# size that its bound volume cannot take (docs/day2.md).
live_cache = guard_bound_cache(settings)

# A move (cache.relocate copy) keeps the old claim until the copy into the new one is verified.
move = live_cache.move

# A move off LINSTOR keeps the class its old claim is on for as long as it keeps the claim.
storage_class = (
    LinstorStorageClass("cache-storage-class", settings.linstor, adopt=settings.adopt)
    if settings.manages_storage_class or (move and move.keeps_source and settings.linstor.made_class == move.source.storage_class)
    else None
)
cache = CacheVolume(
    "cache",
    settings.cache,
    storage_class_name=settings.storage_class_name,
    namespace=settings.namespace,
    backend=settings.backend,
    placement=settings.placement,
    made_class=storage_class,
    adopt=settings.adopt,
    workers=settings.job.nodes,
    claim_unbound=live_cache.unbound,
    generation=live_cache.generation,
    switched_from=live_cache.switched_from,
    kept=move.source if move and move.keeps_source else None,
)

# The warm-up, prewarm and benchmark scripts (Filesystem mode: Block mode has no files to fetch or load).
scripts = None
if not settings.cache.is_block:
    scripts = WorkloadScripts(
        "workload-scripts", settings.cache, settings.job, config_map_name=SCRIPTS_CONFIG_MAP, namespace=settings.namespace
    )

# No pod that mounts the cache accepts inbound connections.
IngressIsolation("ingress-isolation", policy_name=INGRESS_POLICY, namespace=settings.namespace)

# The durable copy (cache.durableCopy): a replicated copy of the models for recovery after node loss.
durable = None
if settings.cache.durable_copy:
    durable = DurableClaim(
        "durable-copy",
        settings.cache,
        storage_class_name=settings.rook_ceph.storage_class_name,
        size=live_cache.durable_size or settings.cache.size,
        namespace=settings.namespace,
    )

# Every pod on the cache (training, warm-up, benchmark, copy) is placed, hardened and attached alike.
cache_pod = CachePod(
    job=settings.job,
    cache=settings.cache,
    placement=settings.placement,
    namespace=settings.namespace,
    claim_name=cache.claim_name,
    scripts=scripts.name if scripts else None,
    durable_claim=durable.name if durable else None,
)
if move and move.copying:
    assert cache.kept_claim_name is not None, "a copying move keeps its old claim (Move.keeps_source)"
    CacheCopy(
        "cache-copy",
        move,
        target=cache_pod,
        source_claim=cache.kept_claim_name,
        into_uid=cache.pvc.metadata.uid,
    )
if move and not move.switched:
    # Until the copy is verified, training stays where it was: on the old claim, placed as it was made for.
    assert cache.kept_claim_name is not None, "a move not switched yet keeps its old claim (Move.keeps_source)"
    cache_pod = replace(cache_pod, claim_name=cache.kept_claim_name, placement=placement_of(move.source.placement))
# The claims training mounts, worker 0's first.
claim_names = [cache_pod.claim_name, *cache.claim_names[1:]]

# During a move the Jobs on the cache stay as they are until the switch (docs/moving-the-cache.md).
held = move is not None and not move.switched
training: TrainingJob | TrainingWorkers | None = None
if settings.job.enabled:
    credentials = None
    if tokens:
        credentials = HubCredentials(
            "hub-credentials", tokens, secret_name=hub_secret_name(settings.job.name), namespace=settings.namespace
        )
    secret_env = None
    if secret_values:
        secret_env = SecretEnv(
            "secret-env", secret_values, secret_name=secret_env_name(settings.job.name), namespace=settings.namespace
        )
    if settings.job.nodes == 1:
        training = TrainingJob("training", cache_pod, credentials=credentials, secret_env=secret_env, held=held)
    else:
        # Several nodes: one worker per node, each on its own cache claim, all in one zone.
        training = TrainingWorkers("training", cache_pod, claim_names=claim_names, credentials=credentials, secret_env=secret_env)

# Refreshed beside the bound cache, after each warm-up (on the next up once the cache is first bound).
# With job.enabled false (a move's way out) there is no warm-up to follow: the durable copy stays as it is.
if durable and live_cache.nodes and settings.job.enabled:
    DurableRefresh("durable-refresh", cache_pod, nodes=live_cache.nodes)

benchmark = None
if settings.benchmark.enabled:
    benchmark = StorageBenchmark("storage-benchmark", cache_pod, settings.benchmark, claim_names=claim_names, held=held)

secrets.export("backend", settings.backend)
secrets.export("storageClass", storage_class.name if storage_class else settings.storage_class_name)
secrets.export("storageClassManaged", settings.manages_storage_class)
secrets.export("pvcName", cache_pod.claim_name)
secrets.export("namespace", cache.namespace)
secrets.export("volumeMode", settings.cache.volume_mode)
secrets.export("zone", settings.zone or SCHEDULER_CHOSEN)
secrets.export("cacheMove", move_output(move, settings.cache.name, cache.claim_name))
secrets.export("durableCopy", durable_output(durable, settings.cache))
secrets.export("jobName", training.name if training else None)
secrets.export("runMarker", training.run_marker if training else None)
secrets.export("benchmarkJob", benchmark.name if benchmark else None)
# The run's workers: what mlcache verify and mlcache rehearse check placement against.
run_output = RunOutput(
    name=settings.job.run_name,
    nodes=settings.job.nodes,
    engine=settings.job.engine,
    cache_claims=tuple(claim_names),
    jobs=tuple(training.names if training else ()),
    benchmark_jobs=tuple(benchmark.names if benchmark else ()),
    gpu_product=settings.job.gpu_product,
    gpu_resource=settings.job.gpu_resource,
    gpus_per_node=settings.job.gpus,
)
secrets.export("run", run_output.exported())
secrets.export(
    "verifyCommands",
    pulumi.Output.all(cache_pod.claim_name, training.name if training else None, cache.namespace, *claim_names).apply(
        lambda names: verification_commands(
            names[0], names[1], names[2], linstor=settings.is_linstor, workers=names[3:], run=settings.job.run_name
        )
    ),
)

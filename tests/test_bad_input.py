"""Bad input, broadly: hypothesis generates invalid values for every config key and field, and
each is rejected with a ConfigError naming that key, before any resource is registered."""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcache.preview.mock_engine import ProgramRun, run_program
from mlcache.program import schema
from mlcache.program.settings import (
    KEYS,
    RUNBOOK_ZONES,
    SCALAR_KEYS,
    STRUCTURED_KEYS,
    ConfigError,
    parse_quantity,
    parse_settings,
)

# Values of the wrong JSON type for a field that wants a string, list or object. A whole number
# is not among them: given for text, it is its digits (the CLI types an unquoted 8 as a number).
FRACTIONS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
NOT_A_STRING = st.one_of(FRACTIONS, st.booleans(), st.lists(st.text(), max_size=2), st.dictionaries(st.text(), st.text()))
# What the CLI makes of an unquoted date: refused where text is wanted, asking for quotes.
CLI_TIME = st.just("2026-11-28 00:00:00 +0000 UTC")
NOT_A_LIST = st.one_of(st.text(), st.integers(), st.booleans(), st.dictionaries(st.text(), st.text(), max_size=2))
NOT_AN_OBJECT = st.one_of(st.text(min_size=1), st.integers(), st.booleans(), st.lists(st.integers(), min_size=1, max_size=2))
NON_EMPTY_TEXT = st.text(min_size=1, max_size=20)

# Fields of each structured (object) key, from the declarations.
FIELDS = {name: tuple(schema.setting_names(d.kind.cls)) for name, (_, d) in KEYS.items() if isinstance(d.kind, schema.Section)}


def bad_text(valid) -> st.SearchStrategy:
    """Strings `valid` refuses (hypothesis text biased to DNS-breaking characters), or non-strings."""
    text = st.one_of(
        st.just(""),
        st.text(alphabet=string.ascii_letters + string.digits + "-_. /:@", min_size=1, max_size=70),
        st.text(max_size=10),
    )
    return st.one_of(text.filter(lambda v: not valid(v)), NOT_A_STRING)


def is_dns_label(v: str, limit: int = 63) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", v)) and len(v) <= limit


def is_dns_subdomain(v: str) -> bool:
    return all(is_dns_label(part) for part in v.split(".")) and bool(v)


def is_quantity_above(v: str, floor: int) -> bool:
    try:
        return parse_quantity(v) > floor
    except ValueError:
        return False


def bad_quantity(floor: int) -> st.SearchStrategy:
    """Non-quantities and quantities at or below `floor` (whole numbers are quantities too)."""
    return st.one_of(
        bad_text(lambda v: is_quantity_above(v, floor)).filter(lambda v: not isinstance(v, (int, float)) or isinstance(v, bool)),
        st.integers(max_value=floor),
        st.just("0"),
        st.just("-1Gi"),
    )


def bad_choice(choices) -> st.SearchStrategy:
    return st.one_of(NON_EMPTY_TEXT.filter(lambda v: v not in choices), NOT_A_STRING)


def bad_int(minimum: int) -> st.SearchStrategy:
    return st.one_of(
        st.integers(max_value=minimum - 1),
        st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
        NON_EMPTY_TEXT.filter(lambda v: not v.isdigit()),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    )


BAD_FLAG = st.one_of(NON_EMPTY_TEXT.filter(lambda v: v not in ("true", "false")), st.integers(), st.lists(st.booleans()))
BAD_PATH = st.one_of(bad_text(lambda v: v.startswith("/") and v != "/" and ".." not in v.split("/") and "//" not in v))

# One invalid-value strategy per key: "key" (top level) or "key.field".
BAD_VALUES: dict[str, st.SearchStrategy] = {
    "backend": NON_EMPTY_TEXT.filter(lambda v: v not in ("linstor", "rook-ceph")),
    "zone": NON_EMPTY_TEXT.filter(lambda v: v not in RUNBOOK_ZONES),
    "zones": st.one_of(st.just([]), NOT_A_LIST.filter(lambda v: v != ""), st.lists(st.just("bad zone!"), min_size=1)),
    "namespace": NON_EMPTY_TEXT.filter(lambda v: not is_dns_label(v)),
    "adopt": NON_EMPTY_TEXT.filter(lambda v: v not in ("true", "false")),
    "linstor.storageClassName": bad_text(is_dns_subdomain),
    "linstor.manageStorageClass": BAD_FLAG,
    "linstor.replicas": bad_int(1),
    "linstor.storagePool": st.one_of(st.text(alphabet=" \t", max_size=3), NOT_A_STRING),
    "linstor.fsType": bad_choice(("xfs", "ext4")),
    "linstor.layerList": st.one_of(st.just("drbd"), st.just("storage drbd"), st.just("zfs storage"), NOT_A_STRING),
    "linstor.allowRemoteVolumeAccess": BAD_FLAG,
    "linstor.mountOptions": st.one_of(NOT_A_LIST, st.just(["noatime,nodiratime"]), st.just([""]), st.just([3.5])),
    "linstor.reclaimPolicy": bad_choice(("Delete", "Retain")),
    "linstor.allowVolumeExpansion": BAD_FLAG,
    "rookCeph.storageClassName": bad_text(is_dns_subdomain),
    "cache.name": bad_text(is_dns_subdomain),
    "cache.size": bad_quantity(300 * 2**20),
    "cache.volumeMode": bad_choice(("Filesystem", "Block")),
    "cache.mountPath": BAD_PATH,
    "cache.devicePath": BAD_PATH,
    "cache.protect": BAD_FLAG,
    "cache.durableCopy": BAD_FLAG,
    "cache.relocate": BAD_FLAG,
    "cache.prefetch": st.one_of(
        NOT_A_LIST.filter(lambda v: v != ""), st.just(["Qwen"]), st.just(["hf:org/model"]), st.just(["a/b/c"]), st.just([1])
    ),
    "benchmark.enabled": BAD_FLAG,
    "benchmark.profiles": st.one_of(NOT_A_LIST, st.just(["randwrite"]), st.just(["seqread", 4])),
    "benchmark.fioImage": st.one_of(st.just("dmonakhov/alpine-fio"), st.just("dmonakhov/alpine-fio:latest"), NOT_A_STRING),
    "benchmark.size": bad_text(lambda v: bool(re.fullmatch(r"[1-9][0-9]*[KMGT]?", v))),
    "benchmark.shardLoad": BAD_FLAG,
    "benchmark.shardCount": bad_int(1),
    "benchmark.shardSize": bad_text(lambda v: bool(re.fullmatch(r"[1-9][0-9]*[KMGT]?", v))),
    "benchmark.readers": bad_int(1),
    "job.enabled": BAD_FLAG,
    "job.name": bad_text(lambda v: is_dns_label(v)),
    "job.image": st.one_of(st.just("repo/trainer:latest"), st.just("repo/trainer"), st.just("host:5000/trainer"), NOT_A_STRING),
    "job.model": st.one_of(st.just(""), NOT_A_STRING),
    "job.dataset": st.one_of(st.just(""), NOT_A_STRING),
    "job.command": st.one_of(st.just([]), NOT_A_LIST, st.lists(FRACTIONS, min_size=1, max_size=2)),
    "job.args": st.one_of(NOT_A_LIST, st.lists(st.one_of(FRACTIONS, CLI_TIME), min_size=1, max_size=2)),
    "job.gpus": bad_int(1),
    "job.gpuResource": bad_text(lambda v: v.count("/") == 1 and is_dns_subdomain(v.split("/")[0]) and bool(v.split("/")[1])),
    "job.gpuProduct": st.one_of(st.just("A100 80GB"), st.just("x" * 64), st.just("-lead"), NOT_A_STRING),
    "job.cpu": bad_quantity(0),
    "job.memory": st.one_of(bad_quantity(32 * 2**30), st.just("16Gi")),
    "job.shmSize": bad_quantity(0),
    "job.env": st.one_of(
        NOT_A_LIST.filter(lambda v: not isinstance(v, dict)),
        st.just({"1BAD": "x"}),
        st.just({"HF_TOKEN": "hf_plain"}),
        st.just({"NPROC_PER_NODE": "8"}),
        st.just({"MASTER_ADDR": "elsewhere"}),
        st.just({"OK": [1]}),
        st.just({"OK": 1.10}),
        st.just({"OK": None}),
        st.just({"OK": "2026-11-28 00:00:00 +0000 UTC"}),
        st.just({"OK": "nul\x00"}),
    ),
    "job.tolerations": st.one_of(
        st.text(min_size=1), st.just([{"operator": "Sometimes"}]), st.just([{"keys": "x"}]), st.just([{"effect": "Never"}])
    ),
    "job.priorityClassName": bad_text(is_dns_subdomain),
    "job.backoffLimit": bad_int(1),
    "job.waitForCompletion": BAD_FLAG,
    "job.waitTimeout": bad_text(lambda v: False).filter(
        lambda v: not (isinstance(v, str) and v[-1:] in "hms" and v[:1].isdigit())
    ),
    "job.runId": st.one_of(bad_text(lambda v: is_dns_label(v, 63 - len("sft-qwen3vl-fire-4gpu") - 1)), CLI_TIME),
    "job.runAsUser": bad_int(1),
    "job.nodes": st.one_of(bad_int(1), st.integers(min_value=65)),
    "job.engine": bad_choice(("jobs", "jobset")),
    "job.queue": bad_text(lambda v: is_dns_label(v)),
    "job.prewarm": BAD_FLAG,
    "job.prewarmReaders": bad_int(1),
    "job.prewarmMaxBytes": bad_quantity(0),
}
OBJECT_KEYS = {key: NOT_AN_OBJECT for key in FIELDS}


def raw_config(key: str, value) -> dict:
    top, _, field = key.partition(".")
    raw = {top: {field: value} if field else value}
    if top == "adopt":
        raw["namespace"] = "ml"
    return raw


def assert_rejected(key: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw_config(key, value))
    named = err.value.key
    assert named == f"mlcache:{key}" or named.startswith((f"mlcache:{key}.", f"mlcache:{key}[")), (key, value, named)
    # A wrong value is shown as typed; a wrong name (an unknown field, a reserved variable) only named.
    assert str(err.value).startswith((f"invalid config {named} = ", f"invalid config key {named}")), str(err.value)
    assert ": expected " in str(err.value)


def test_every_key_and_field_has_an_invalid_value_generator():
    expected = set(SCALAR_KEYS) | {"zones"} | {f"{key}.{field}" for key, fields in FIELDS.items() for field in fields}
    assert set(BAD_VALUES) == expected
    assert set(STRUCTURED_KEYS) == set(FIELDS) | {"zones"}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_invalid_values_are_rejected_naming_the_key(key, data):
    assert_rejected(key, data.draw(BAD_VALUES[key], label=key))


@pytest.mark.parametrize("key", sorted(OBJECT_KEYS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_a_structured_key_that_is_not_an_object_is_rejected(key, data):
    value = data.draw(OBJECT_KEYS[key], label=key)
    with pytest.raises(ConfigError) as err:
        parse_settings({key: value})
    assert err.value.key == f"mlcache:{key}"


def engine_config(key: str, value) -> dict[str, str]:
    """What the CLI hands the program: strings for scalar keys, JSON for structured ones."""
    config = {}
    for top, item in raw_config(key, value).items():
        config[f"mlcache:{top}"] = item if top in SCALAR_KEYS else json.dumps(item)
    return config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_the_program_registers_nothing_when_a_value_is_invalid(data):
    key = data.draw(st.sampled_from(sorted(BAD_VALUES)), label="key")
    value = data.draw(BAD_VALUES[key], label="value")
    if key in SCALAR_KEYS and not isinstance(value, str):
        value = json.dumps(value)  # the CLI only passes strings for scalar keys
    run = ProgramRun()
    with pytest.raises(ConfigError) as err:
        run_program(engine_config(key, value), [], "dev", run=run)
    assert err.value.key.startswith(f"mlcache:{key}")
    assert run.registrations == []


@pytest.mark.parametrize("zone", ["sdsu ", "SDSU", "no such zone!"])
def test_a_zone_not_in_the_clusters_zones_is_answered_with_them_whatever_its_form(zone):
    """A stray space or a character no label value has gets the list of zones, as a wrong name does."""
    with pytest.raises(ConfigError) as err:
        parse_settings(raw_config("zone", zone))
    assert str(err.value) == (
        f"invalid config mlcache:zone = {json.dumps(zone)}: expected empty (the scheduler chooses) or one of mlcache:zones "
        "(the cluster's zones, a setting): " + ", ".join(RUNBOOK_ZONES)
    )

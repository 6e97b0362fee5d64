"""The stack-file reader follows gopkg.in/yaml.v3 and pulumi's config.object (the parity test
under tests/integration checks the same against the real CLI)."""

from __future__ import annotations

import math

import pytest
import yaml

from mlcache.preview.cli_yaml import CliLoader, as_program_reads, go_float_json, resolve_plain, top_level_text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8", 8),
        ("-8", -8),
        ("+8", 8),
        ("0022", 18),  # yaml.v3 keeps YAML 1.1's octals
        ("0o17", 15),
        ("0x1F", 31),
        ("0b101", 5),
        ("-0b101", -5),
        ("1_000", 1000),
        ("08", 8.0),  # not octal, but a float by yaml.v3's float pattern
        ("1.10", 1.1),
        (".5", 0.5),
        ("1e-4", 0.0001),
        ("4.0", 4.0),
        ("9223372036854775808", 2**63),  # past int64: unsigned
        ("18446744073709551616", float(2**64)),  # past uint64: a float
        ("1e400", "1e400"),  # Go's ParseFloat refuses the overflow: text
        ("true", True),
        ("False", False),
        ("yes", "yes"),
        ("on", "on"),
        ("~", None),
        ("Null", None),
        ("0x", "0x"),
        ("1.2.3", "1.2.3"),
        ("+", "+"),
        ("2026-11-28", "2026-11-28 00:00:00 +0000 UTC"),
        ("2026-1-2 3:04:05.500", "2026-01-02 03:04:05.5 +0000 UTC"),
        ("2026-11-28T10:00:00Z", "2026-11-28 10:00:00 +0000 UTC"),
        ("2026-11-28t10:00:00-00:00", "2026-11-28 10:00:00 +0000 UTC"),
        ("2026-11-28T10:00:00+02:00", "2026-11-28 10:00:00 +0200 +0200"),
        ("2026-02-30", "2026-02-30"),  # no such day: not a time, and not a number either
        ("2026-11-28T10:00:00", "2026-11-28T10:00:00"),  # RFC 3339 needs its zone
        ("20261128", 20261128),
        ("2026-11-28T10:00:00.123456789123Z", "2026-11-28 10:00:00.123456789 +0000 UTC"),  # nanoseconds kept
        ("2026-11-28T10:00:00+05:99", "2026-11-28T10:00:00+05:99"),  # past Go's bounds of an offset: text
    ],
)
def test_plain_scalars_resolve_as_yaml_v3_resolves_them(text, value):
    resolved = resolve_plain(text)
    assert resolved == value and isinstance(resolved, type(value))


def test_special_floats():
    assert math.isnan(resolve_plain(".nan")) and resolve_plain("-.Inf") == -math.inf


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (4.0, "4"),
        (1.1, "1.1"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (1e-10, "1e-10"),
        (-0.0, "-0"),
    ],
)
def test_floats_are_written_as_go_encoding_json_writes_them(number, text):
    assert go_float_json(number) == text


def test_inside_an_object_a_number_past_int64_arrives_as_a_float():
    assert as_program_reads({"gpus": 2**63, "n": 2**63 - 1}) == {"gpus": 9223372036854776000, "n": 2**63 - 1}
    assert top_level_text(2**63) == "9223372036854775808"


def test_quoted_and_block_scalars_stay_text_and_keys_are_written_with_percent_v():
    document = yaml.load("a: '8'\nb: \"1.10\"\nc: |\n  0022\n1: x\ntrue: y\n~: z\n0x10: w\n", Loader=CliLoader)
    assert document == {"a": "8", "b": "1.10", "c": "0022\n", "1": "x", "true": "y", "<nil>": "z", "16": "w"}
    floats = yaml.load("1e6: a\n4.0: b\n1234567.5: c\n0.0001: d\n", Loader=CliLoader)
    assert list(floats) == ["1e+06", "4", "1.2345675e+06", "0.0001"]  # as fmt's %v writes them


def test_explicit_tags_are_checked_like_yaml_v3():
    assert yaml.load("[!!str 8, !!float 3, !!int 0x10]", Loader=CliLoader) == ["8", 3.0, 16]
    with pytest.raises(yaml.constructor.ConstructorError, match="cannot decode 'x' as a !!int"):
        yaml.load("!!int x", Loader=CliLoader)


def test_merge_keys_still_merge():
    assert yaml.load("base: &b {x: 1}\nmine: {<<: *b, y: 2}\n", Loader=CliLoader)["mine"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (18, "18"),
        (True, "true"),
        (None, ""),
        (1.5e-7, "1.5e-7"),
        ("2026-11-28 00:00:00 +0000 UTC", "2026-11-28 00:00:00 +0000 UTC"),
    ],
)
def test_a_top_level_value_is_the_text_pulumi_marshals(value, text):
    assert top_level_text(value) == text

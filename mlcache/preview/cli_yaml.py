"""Stack files read the way the Pulumi CLI reads them, so an offline render sees the text `pulumi up`
hands the program.

The CLI decodes a stack file with Go's gopkg.in/yaml.v3 into `any` (resolve.go), then pulumi's
config.object turns each top-level value into the text the program gets (object.go):

- a plain scalar is YAML 1.2 plus yaml.v3's extras: `8` is the whole number 8, `0022` is octal (18),
  `1_000` is 1000, `0x10` is 16, `1.10` is the number 1.1, `4.0` is 4.0, `yes` stays text,
  `2026-11-28` is a time that pulumi writes as Go's time.String(), "2026-11-28 00:00:00 +0000 UTC";
  a quoted or block scalar is text;
- a top-level number or boolean becomes its JSON text ("18", "true"); an object or list becomes JSON,
  numbers in Go's encoding/json format (4.0 is written 4, so the program reads the whole number 4);
- a map key that is not text is written with Go's %v (`1: a` is the key "1", `~: a` the key "<nil>").

Not emulated: the CLI host's time zone (a timestamp with an offset is shown as Go shows it on a
host in UTC); `!!binary`, local tags (`!foo`) and `!!python/...` tags, which the CLI reads as
plain values and this reader refuses; a `<<` key given twice, or quoted.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import yaml

PLAIN = "tag:mlcache.dev,2026:plain"  # a plain scalar, resolved below as yaml.v3 resolves it
_MERGE = "tag:yaml.org,2002:merge"

_BY_TEXT: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INT_DIGITS = {16: "0123456789abcdefABCDEF", 10: "0123456789", 8: "01234567", 2: "01"}
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1
# yaml.v3's timestamp layouts (Go's time.Parse): RFC 3339 with short date fields, with a space
# and no zone, or a date alone.
_TIMESTAMP = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:(?:(?P<t>[Tt])|(?P<space> ))(?P<h>[0-9]{1,2}):(?P<mi>[0-9]{1,2}):(?P<s>[0-9]{1,2})"
    r"(?:[.,](?P<frac>[0-9]+))?(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


class GoTime(str):
    """A YAML timestamp, already the text pulumi makes of it (Go's time.String())."""


def _go_parse_int(text: str, signed: bool) -> int | None:
    """strconv.ParseInt(text, 0, 64) (signed) or ParseUint(text, 0, 64): None where Go fails."""
    sign, body = (text[0], text[1:]) if text[:1] in "+-" and signed else ("", text)
    base = 10
    if body[:2] in ("0x", "0X", "0o", "0O", "0b", "0B"):
        base, body = {"x": 16, "o": 8, "b": 2}[body[1].lower()], body[2:]
    elif len(body) > 1 and body[0] == "0":
        base, body = 8, body[1:]
    if not body or any(char not in _INT_DIGITS[base] for char in body):
        return None
    value = -int(body, base) if sign == "-" else int(body, base)
    low, high = INT64 if signed else (0, UINT64_MAX)
    return value if low <= value <= high else None


def _timestamp(text: str) -> GoTime | None:
    match = _TIMESTAMP.fullmatch(text)
    if not match or (match["zone"] and not match["t"]) or (match["t"] and not match["zone"]):
        return None  # RFC 3339 needs its zone; the space form has none
    if match["zone"] not in (None, "Z") and (int(match["zone"][1:3]) > 24 or int(match["zone"][4:]) > 60):
        return None  # Go's bounds of a zone offset
    try:
        y, mo, d, h, mi, s = (int(match[name] or 0) for name in ("y", "mo", "d", "h", "mi", "s"))
        datetime(y, mo, d, h, mi, s)  # Go refuses the same days and times (Feb 30, 24:00)
    except ValueError:
        return None
    zone = match["zone"] or "Z"
    numeric = f"{zone[0]}{zone[1:3]}{zone[4:]}"  # Go prints a zone with no name as its offset
    offset = "+0000 UTC" if zone == "Z" or int(zone[1:3] + zone[4:]) == 0 else f"{numeric} {numeric}"
    fraction = (match["frac"] or "")[:9].rstrip("0")  # nanoseconds
    return GoTime(f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}{'.' + fraction if fraction else ''} {offset}")


def resolve_plain(text: str) -> Any:
    """What yaml.v3 makes of a plain scalar decoded into `any` (resolve.go, resolve())."""
    if text in _BY_TEXT:
        return _BY_TEXT[text]
    if text[0] == ".":
        return _go_float(text) if _YAML_FLOAT.fullmatch(text) else text
    if text[0] not in "+-0123456789":
        return text
    stamp = _timestamp(text)
    if stamp is not None:
        return stamp
    plain = text.replace("_", "")
    for signed in (True, False):
        number = _go_parse_int(plain, signed)
        if number is not None:
            return number
    if _YAML_FLOAT.fullmatch(plain):
        return _go_float(plain)
    if plain.startswith(("0b", "0o")):
        number = _go_parse_int("0" + plain[1:], signed=False)  # past int64: read as unsigned
        if number is not None:
            return number
    return text


def _go_float(text: str) -> float | str:
    number = float(text)
    return text if math.isinf(number) else number  # Go's ParseFloat refuses an overflow: text stays


def go_float_json(number: float) -> str:
    """A float as Go's encoding/json writes it: shortest digits, fixed unless < 1e-6 or >= 1e21."""
    return _go_shortest(number, fixed_powers=range(-6, 21), pad_negative_exponent=False)


def _go_shortest(number: float, fixed_powers: range, pad_negative_exponent: bool) -> str:
    """Go's shortest text of a finite float: fixed notation when its decimal exponent is in
    `fixed_powers`, else d.ddde+XX (encoding/json writes 1e-7 where fmt writes 1e-07)."""
    if number == 0:
        return "-0" if math.copysign(1, number) < 0 else "0"
    exact = Decimal(repr(number)).normalize()
    sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)
    power = exponent + len(digits) - 1
    if power in fixed_powers:
        return format(exact, "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    width = "d" if power < 0 and not pad_negative_exponent else "02d"
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):{width}}"


class UnsupportedValue(ValueError):
    """A value Go's encoding/json refuses (NaN, infinity): the CLI stops on it."""


def as_program_reads(value: Any) -> Any:
    """A decoded value as the program reads it back from pulumi's JSON (4.0 becomes 4)."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            shown = "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
            raise UnsupportedValue(f"json: unsupported value: {shown}")
        return json.loads(go_float_json(value))
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        # Pulumi re-reads an object's JSON as int64 or else float64: 2^63 arrives as 9223372036854776000.
        return json.loads(go_float_json(float(value)))
    if isinstance(value, dict):
        return {key: as_program_reads(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_program_reads(item) for item in value]
    return value


def top_level_text(value: Any) -> str:
    """The text the program gets for a top-level value (config.object.MarshalString). A null is
    "": yaml.v3 leaves the config value unset instead of calling its decoder."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        # Pulumi re-reads the JSON text as int64 where it can: 4.0 is "4", -0.0 is "0".
        read = as_program_reads(value)
        return json.dumps(read) if isinstance(read, int) else go_float_json(value)
    if isinstance(value, int):  # a boolean too; the text is not re-read, so it stays exact
        return json.dumps(value)
    return json.dumps(as_program_reads(value), sort_keys=True, ensure_ascii=False)


def go_key(value: Any) -> str:
    """A map key as pulumi writes a non-text key (fmt's %v)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float_v(value)
    return str(value)


def _go_float_v(number: float) -> str:
    """fmt's %v of a float64 (%g, shortest): an exponent below -4 or from 6 up is written 1e+06."""
    if math.isnan(number) or math.isinf(number):
        return "NaN" if math.isnan(number) else "+Inf" if number > 0 else "-Inf"
    return _go_shortest(number, fixed_powers=range(-4, 6), pad_negative_exponent=True)


class CliLoader(yaml.SafeLoader):
    """The YAML reader of a stack file: scalars typed as the CLI types them (see the module's doc).
    Mapping keys as %v writes them; a key given twice (yaml.v3 refuses it too), binary values,
    sets and ordered maps are refused."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return _MERGE if value == "<<" else PLAIN
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(None, None, "a map key must be text", key_node.start_mark)
            if key_node.value in seen and key_node.tag != _MERGE:
                problem = f"the key {key_node.value!r} appears twice"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key_node.value)
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = resolve_plain(key_node.value) if key_node.tag == PLAIN else key_node.value
            mapping[go_key(key) if not isinstance(key, str) else str(key)] = self.construct_object(value_node, deep=deep)
        return mapping

    def refuse(self, node):
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag} is not a config value", node.start_mark)

    def construct_plain(self, node):
        return resolve_plain(node.value)

    def construct_tagged(self, node):
        """An explicit !!int, !!float, !!bool, !!null or !!timestamp: yaml.v3 resolves the text and
        refuses it when it is not of that type (!!float takes a whole number)."""
        wanted = node.tag.rsplit(":", 1)[-1]
        value = _timestamp(node.value) if wanted == "timestamp" else resolve_plain(node.value) if node.value else None
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "null": (type(None),), "timestamp": (GoTime,)}
        if isinstance(value, bool) != (wanted == "bool") or not isinstance(value, kinds[wanted]):
            raise yaml.constructor.ConstructorError(None, None, f"cannot decode {node.value!r} as a !!{wanted}", node.start_mark)
        return float(value) if wanted == "float" else value


CliLoader.add_constructor(PLAIN, CliLoader.construct_plain)


def _construct_map(loader: CliLoader, node: yaml.MappingNode) -> dict:
    return loader.construct_mapping(node, deep=True)


CliLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
for _tag in ("int", "float", "bool", "null", "timestamp"):
    CliLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", CliLoader.construct_tagged)
for _tag in ("binary", "set", "omap", "pairs"):
    CliLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", CliLoader.refuse)

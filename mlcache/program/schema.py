"""How a setting is declared, and Kubernetes' own rules for the values it takes.

A setting is one dataclass field of settings.py carrying `setting(kind, default, description)`:
its name (the field name in camelCase), its type and constraint (the kind), its default and
its description. Parsing, the Pulumi.yaml `config:` block and docs/configuration.md are all
derived from those declarations (see `parse_section`, `pulumi_config_block`, `reference_markdown`).

The kinds are as strict as the API server: regexes match the whole value, names keep to the
limits of the object kind they name, integers to the API's int32 range. Values arrive as the
Pulumi CLI types a stack file (mlcache/preview/cli_yaml.py): a whole number given where text is
expected is its decimal digits; a fraction or a date, which would arrive changed, is refused
with the advice to quote it.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import pulumi

from mlcache.program.names import full_key

INT32_MAX = 2**31 - 1
# The largest whole number that reaches the API server exactly: Pulumi's engine carries every
# number of a resource's inputs as a float64 (2^53 + 1 already arrives as 2^53, and 2^63 - 1 as
# 2^63, which Kubernetes reads as -2^63).
ENGINE_INT_MAX = 2**53

# Kubernetes' validation (k8s.io/apimachinery/pkg/util/validation): always with re.fullmatch.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Decimal | int] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
# The OCI distribution reference grammar (distribution/reference, regexp.go), anchored.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_IMAGE_NAME_MAX = 255
_PATH_PART = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*")


def is_dns_label(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and bool(_DNS_LABEL.fullmatch(value))


def names_fit_after(name: str, longest: int) -> bool:
    """A name other objects are named after (with a suffix): a DNS label starting with a letter, at
    most `longest` characters."""
    return len(name) <= longest and is_dns_label(name) and name[:1].isalpha()


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= DNS_SUBDOMAIN_MAX and bool(_DNS_SUBDOMAIN.fullmatch(value))


def is_label_value(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and bool(_LABEL_VALUE.fullmatch(value))


def is_qualified_name(value: str) -> bool:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of <= 63."""
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return len(name) <= DNS_LABEL_MAX and bool(_QUALIFIED_NAME.fullmatch(name))


def is_extended_resource_name(value: str) -> bool:
    """A resource name such as nvidia.com/gpu: a qualified name with a domain prefix outside
    kubernetes.io (the API server takes names there, or without a domain, as native resources)."""
    prefix, slash, _ = value.partition("/")
    native = prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io") or prefix.startswith("requests.")
    return bool(slash) and not native and "/" not in value[len(prefix) + 1 :] and is_qualified_name(value)


def is_pinned_image(image: str) -> bool:
    """An OCI image reference with a tag other than latest, or a digest (sha256: 64 hex digits)."""
    match = _IMAGE.fullmatch(image)
    if not match or len(match["name"]) > _IMAGE_NAME_MAX:
        return False
    digest = match["digest"]
    if digest:
        algorithm, _, hex_digits = digest.partition(":")
        return algorithm != "sha256" or bool(re.fullmatch(r"[a-f0-9]{64}", hex_digits))
    return match["tag"] not in (None, "latest")


def is_absolute_path(path: str) -> bool:
    """/a/b: no '.', '..' or empty parts, no spaces or control characters."""
    parts = path.split("/")
    return path.startswith("/") and len(parts) > 1 and all(_PATH_PART.fullmatch(p) for p in parts[1:])


def paths_overlap(a: str, b: str) -> bool:
    """One path is the other or lies under it: two mounts there hide one another."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def parse_quantity(text: str) -> Decimal:
    """Value of a Kubernetes quantity ("100Gi" -> bytes, "500m" -> 0.5); ValueError if malformed."""
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise ValueError(text)
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["num"])
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix in _DECIMAL:
            return number * _DECIMAL[suffix]
        if suffix:
            return number * Decimal(10) ** int(suffix[1:])
        return number
    except ArithmeticError as err:  # InvalidOperation, and the Overflow of an exponent such as 1e999999999
        raise ValueError(text) from err


# What an error line says of a `secure:` value a check refused offline (mlcache diff tells it by this).
UNREADABLE_SECRET = "is a `secure:` value, which the offline tools cannot read"


def unreadable_secret_of(line: str) -> str | None:
    """`KEY is a secure: value, which the offline tools cannot read` when an error line says so of
    a key (at its start: a value quoted later in another error cannot pass for it), else None."""
    found = re.match(rf"(?:error: )?(\S+) {re.escape(UNREADABLE_SECRET)}:", line)
    return f"{found.group(1)} {UNREADABLE_SECRET}" if found else None


class ConfigError(pulumi.RunError):
    """A config value that is not allowed. RunError: the CLI prints it without a traceback."""

    def __init__(self, key: str, value: Any, allowed: str, *, secret: bool = False):
        self.key = full_key(key)
        self.value = value
        self.allowed = allowed
        self.about_key = False  # of_key: the line holds no value (and no secret: names and field lists only)
        super().__init__(f"invalid config {self.key} = {'[secret]' if secret else shown(value)}: expected {allowed}")

    @classmethod
    def of_key(cls, key: str, allowed: str, meant: str | None = None) -> ConfigError:
        """A key whose name is what is wrong (unknown, reserved, set without --path): the line names
        the key and the key probably meant, never the value, which is beside the point and may be a
        token under a mistyped name."""
        error = cls(key, None, allowed)
        hint = f" (did you mean {full_key(meant)}?)" if meant else ""
        error.args = (f"invalid config key {error.key}{hint}: expected {allowed}",)
        error.about_key = True
        return error

    @classmethod
    def unreadable_secret(cls, key: str, option: str) -> ConfigError:
        """A `secure:` value the offline tools hold as a placeholder, which is what failed: the
        line names the key and the option that gives its value, not the placeholder's rule."""
        error = cls(key, None, "its value")
        elsewhere = " (mlcache access, verify and heal take it as --config)" if option.startswith("--secret") else ""
        error.args = (f"{error.key} {UNREADABLE_SECRET}: give its value with {option} to render{elsewhere}",)
        error.about_key = True
        return error


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name a mistyped one probably meant, if any is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def shown(value: Any) -> str:
    """The value as typed, on one line (strings quoted, newlines escaped)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# --- Kinds: the type and constraint of a setting -------------------------------------------

# Go's time.String(): what the CLI makes of an unquoted date such as 2026-11-28.
_CLI_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)? [+-][0-9]{4} \S+")


def exact(key: str, value: int, allowed: str) -> int:
    """A whole number from the CLI, refused when it is too long to have arrived as typed."""
    if abs(value) > ENGINE_INT_MAX:  # carried as a float64 on the way: its last digits are already lost
        raise ConfigError(key, value, f"{allowed}; quote it (the Pulumi CLI carries a number this long inexactly)")
    return value


def cli_text(key: str, value: Any, allowed: str, *, booleans: bool = False) -> str:
    """A value given for text, as the program gets it from the CLI: a whole number (`8`, as the CLI
    types it) becomes its digits, and with `booleans` true/false their words. A fraction (`1.10`
    arrives as 1.1) or a date (as a time) is refused, asking for quotes; other non-text too."""
    if isinstance(value, bool) and booleans:
        return "true" if value else "false"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(exact(key, value, allowed))
    if isinstance(value, float):
        raise ConfigError(key, value, f"{allowed}; quote it (the Pulumi CLI reads an unquoted 1.10 as the number 1.1)")
    if isinstance(value, str) and _CLI_TIME.fullmatch(value):
        raise ConfigError(key, value, f'{allowed}; quote a date ("2026-11-28": unquoted, the Pulumi CLI turns it into a time)')
    if not isinstance(value, str):
        raise ConfigError(key, value, allowed)
    if "\x00" in value:  # no process environment or argument list can carry one
        raise ConfigError(key, value, f"{allowed} with no NUL character")
    return value


class Kind(abc.ABC):
    """Type and constraint of a setting: `parse` returns the typed value or raises ConfigError."""

    type_name = "string"  # as the reference shows it
    pulumi_type: str | None = "string"  # Pulumi.yaml's `type` for a top-level key (None: untyped)
    allowed = ""

    @abc.abstractmethod
    def parse(self, key: str, value: Any) -> Any:
        """The typed value of `value`, given for `key`."""

    def refuse(self, key: str, value: Any) -> ConfigError:
        return ConfigError(key, value, self.allowed)


class Text(Kind):
    def __init__(self, allowed: str, check: Callable[[str], bool] | None = None):
        self.allowed = allowed
        self.check = check

    def parse(self, key: str, value: Any) -> str:
        text = cli_text(key, value, self.allowed)
        if not text or (self.check is not None and not self.check(text)):
            raise self.refuse(key, value)
        return text


def dns_label(example: str, limit: int = DNS_LABEL_MAX) -> Text:
    return Text(
        f"a DNS label (lowercase letters, digits and '-', at most {limit} characters) such as {example}",
        lambda v: len(v) <= limit and is_dns_label(v),
    )


def dns_subdomain(example: str, what: str = "name") -> Text:
    return Text(
        f"a {what}: a DNS subdomain name (lowercase letters, digits, '-' and '.', at most {DNS_SUBDOMAIN_MAX} "
        f"characters) such as {example}",
        is_dns_subdomain,
    )


def pattern(regex: str, allowed: str) -> Text:
    compiled = re.compile(regex)
    return Text(allowed, lambda v: bool(compiled.fullmatch(v)))


# Go's time.Duration, which the engine parses a custom timeout into: at most 2^63-1 nanoseconds.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|μs|ns|m|s)")
_NANOSECONDS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "μs": 10**3, "ns": 1}
GO_DURATION_MAX = "2562047h47m16.854775807s"  # time.Duration(1<<63 - 1).String()


def is_go_duration(text: str) -> bool:
    """A positive duration as Go's time.ParseDuration reads it (h, m, s, ms, us, ns parts), within its range."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return False
    return sum(Decimal(number) * _NANOSECONDS[unit] for number, unit in parts) <= 2**63 - 1


def go_duration(example: str) -> Text:
    return Text(f"a duration such as {example}, at most {GO_DURATION_MAX} (Go's longest)", is_go_duration)


class AnyText(Kind):
    """Any text, such as an argument of the training command (`--epochs: 3` and `true` as typed)."""

    allowed = "a string"

    def parse(self, key: str, value: Any) -> str:
        return cli_text(key, value, self.allowed, booleans=True)


class Choice(Kind):
    """One of `choices`; `aliases` are older spellings still accepted (a YAML boolean as its text)."""

    def __init__(self, *choices: str, aliases: dict[str, str] | None = None):
        self.choices = choices
        self.aliases = aliases or {}
        self.allowed = "one of " + ", ".join([*choices, *(f"{old} (= {new})" for old, new in self.aliases.items())])

    def parse(self, key: str, value: Any) -> str:
        text = ("true" if value else "false") if isinstance(value, bool) and self.aliases else value
        if isinstance(text, str) and text in self.aliases:
            return self.aliases[text]
        if not isinstance(text, str) or text not in self.choices:
            raise self.refuse(key, value)
        return text


class Flag(Kind):
    type_name = pulumi_type = "boolean"
    allowed = "true or false"

    def parse(self, key: str, value: Any) -> bool:
        # `pulumi config set` without --type stores booleans as the strings "true"/"false".
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise self.refuse(key, value)


class Integer(Kind):
    type_name = pulumi_type = "integer"

    def __init__(self, minimum: int, maximum: int = INT32_MAX, why: str = ""):
        assert maximum <= ENGINE_INT_MAX, "the engine would not carry the maximum exactly"
        self.minimum, self.maximum = minimum, maximum
        self.allowed = f"a whole number from {minimum} to {maximum}" + (f" ({why})" if why else "")

    def parse(self, key: str, value: Any) -> int:
        # Text must be decimal digits (`pulumi config set` without --path stores text: 0x10, 1e3,
        # 010 and 4.0 are refused); in a stack file the CLI has already read 0x10 as 16.
        if isinstance(value, str) and re.fullmatch(r"0|[1-9][0-9]*", value):
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise self.refuse(key, value)
        if not self.minimum <= number <= self.maximum:
            raise self.refuse(key, value)
        return number


class Quantity(Kind):
    type_name = "quantity"

    def __init__(self, example: str = "100Gi or 500m"):
        self.allowed = f"a Kubernetes quantity greater than 0 such as {example}"

    def parse(self, key: str, value: Any) -> str:
        # A bare number from a YAML or JSON document (cpu: 0.5) is the quantity it reads as.
        if isinstance(value, int) and not isinstance(value, bool):
            value = repr(exact(key, value, self.allowed))
        elif isinstance(value, float):
            value = repr(value)
        if not isinstance(value, str):
            raise self.refuse(key, value)
        try:
            amount = parse_quantity(value)
        except ValueError:
            raise self.refuse(key, value) from None
        if amount <= 0:
            raise self.refuse(key, value)
        return value


def absolute_path() -> Text:
    return Text(
        "an absolute path such as /cache (letters, digits, '._@+-'; no '.', '..' or empty parts; not '/')", is_absolute_path
    )


def pinned_image() -> Text:
    return Text(
        "an image reference pinned by a tag other than latest or by a digest, such as registry.example/org/img:1.0",
        is_pinned_image,
    )


@dataclasses.dataclass(frozen=True)
class ItemCount:
    """A list too long to quote in one line, as its length: shown as `[1001 items]`."""

    count: int

    def __repr__(self) -> str:
        return f"[{self.count} items]"


class ListOf(Kind):
    pulumi_type = "array"

    def __init__(self, item: Kind, what: str, non_empty: bool = False, max_items: int | None = None):
        self.item = item
        self.non_empty = non_empty
        self.max_items = max_items
        self.type_name = "list of strings"
        most = f" (at most {max_items})" if max_items is not None else ""
        self.what = f"a {'non-empty ' if non_empty else ''}list of {what}{most}"
        self.allowed = self.what if isinstance(item, (Choice, AnyText)) else f"{self.what} ({item.allowed})"

    def parse(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or (self.non_empty and not value):
            raise self.refuse(key, value)
        if self.max_items is not None and len(value) > self.max_items:
            raise ConfigError(key, ItemCount(len(value)), self.allowed)
        items = []
        for index, item in enumerate(value):
            try:
                items.append(self.item.parse(f"{key}[{index}]", item))
            except ConfigError as err:
                raise ConfigError(f"{key}[{index}]", item, f"an item of {self.what}: {err.allowed}") from None
        return tuple(items)


class Section(Kind):
    """A structured key: an object whose fields are the settings of a dataclass."""

    type_name = "object"
    pulumi_type = None  # Pulumi's project schema cannot type objects

    def __init__(self, cls: type):
        self.cls = cls
        self.allowed = "an object with the fields " + ", ".join(setting_names(cls))

    def parse(self, key: str, value: Any) -> Any:
        return parse_section(key, value, self.cls, prefix=f"{key}.")


# --- Declarations ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Declaration:
    kind: Kind
    default: Any  # as written in Pulumi.yaml; None = unset
    description: str


def setting(kind: Kind, default: Any, description: str) -> Any:
    """Declare a dataclass field as a setting (its config name is the field name in camelCase)."""
    return dataclasses.field(metadata={"setting": Declaration(kind, default, description)})


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def declarations(cls: type) -> dict[str, tuple[str, Declaration]]:
    """Config name -> (attribute, declaration) of every setting of a dataclass, in order."""
    return {camel(f.name): (f.name, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata}


def setting_names(cls: type) -> list[str]:
    return list(declarations(cls))


def default_of(declaration: Declaration) -> Any:
    if isinstance(declaration.kind, Section):
        return section_defaults(declaration.kind.cls)
    return declaration.default


def section_defaults(cls: type) -> dict[str, Any]:
    """The section's defaults as Pulumi.yaml writes them (unset fields left out)."""
    return {name: default_of(d) for name, (_, d) in declarations(cls).items() if default_of(d) is not None}


def _unknown_field(key: str, name: Any, fields: Iterable[str], prefix: str) -> ConfigError:
    meant = closest(name, fields) if isinstance(name, str) else None
    return ConfigError.of_key(
        f"{prefix}{name}", f"a known field of {key}: {', '.join(fields)}", f"{prefix}{meant}" if meant else None
    )


def check_field_path(key: str, kind: Kind, path: Sequence[str | int]) -> None:
    """Refuse a path below the setting `key` that names no field (`cache.sise`), as parse_section
    refuses a value holding that field. For an unset, which never reaches the program's parsing."""
    for part in path:
        if isinstance(part, int):
            item_cls = getattr(kind, "item_cls", None)
            if item_cls is None:  # a list of single values: nothing below an item to name
                return
            kind, key = Section(item_cls), f"{key}[{part}]"
            continue
        if not isinstance(kind, Section):  # a map of free names (job.env) or a single value
            return
        fields = declarations(kind.cls)
        if part not in fields:
            raise _unknown_field(key, part, fields, f"{key}.")
        kind, key = fields[part][1].kind, f"{key}.{part}"


def parse_section(key: str, raw: Any, cls: type, prefix: str = "") -> Any:
    """Parse an object of config values into `cls`; an unknown field (a typo, usually) is refused."""
    fields = declarations(cls)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "an object with the fields " + ", ".join(fields))
    unknown = [name for name in raw if name not in fields]
    if unknown:
        raise _unknown_field(key, unknown[0], fields, prefix)
    values: dict[str, Any] = {}
    for name, (attribute, declaration) in fields.items():
        value = raw.get(name)
        if value is None:
            value = declaration.default
        if value is None and not isinstance(declaration.kind, Section):
            values[attribute] = None
        else:
            values[attribute] = declaration.kind.parse(f"{prefix}{name}", value)
    return cls(**values)


# --- What is derived from the declarations --------------------------------------------------


def pulumi_config_block(cls: type, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block for the top-level settings of `cls` (plus `extra` keys)."""
    block: dict[str, dict[str, Any]] = {}
    for name, (_, declaration) in declarations(cls).items():
        entry: dict[str, Any] = {}
        if declaration.kind.pulumi_type:
            entry["type"] = declaration.kind.pulumi_type
            if declaration.kind.pulumi_type == "array":
                entry["items"] = {"type": "string"}
        entry["description"] = declaration.description
        if isinstance(declaration.kind, Section):
            entry["description"] += " Fields: " + ", ".join(setting_names(declaration.kind.cls)) + "."
        default = default_of(declaration)
        entry["default"] = "" if default is None else default
        block[name] = entry
    block.update(extra)
    return block


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default_cell(default: Any) -> str:
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, (list, dict)):
        return f"`{json.dumps(default)}`"
    return f"`{default}`" if default != "" else '`""`'


def reference_rows(cls: type, prefix: str = "") -> list[str]:
    """One Markdown table row per setting of `cls` (sections expand into their fields)."""
    rows = []
    for name, (_, declaration) in declarations(cls).items():
        key = f"{prefix}{name}"
        kind = declaration.kind
        if isinstance(kind, Section):
            rows.append(f"| **`{key}`** | object | | | {_cell(declaration.description)} |")
            rows += reference_rows(kind.cls, f"{key}.")
            continue
        rows.append(
            f"| `{key}` | {kind.type_name} | {_default_cell(declaration.default)} | {_cell(kind.allowed)} "
            f"| {_cell(declaration.description)} |"
        )
        item_cls = getattr(kind, "item_cls", None)
        if item_cls is not None:  # a list of objects: one row per field of an item
            rows += reference_rows(item_cls, f"{key}[].")
    return rows

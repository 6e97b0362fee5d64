"""Stack configuration as the Pulumi CLI would hand it to the program, read without the CLI.

Layering follows the CLI: the `config:` defaults of Pulumi.yaml, then Pulumi.<stack>.yaml,
where a stack value for an object key replaces the project default whole. Overrides use
`pulumi config set --path` keys and apply to the stack layer, as the CLI would write them; one
extension: a value in [...] or {...} is read as YAML (the CLI would store that text).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlcache import CHECKOUT
from mlcache.preview.cli_yaml import (
    INT64,
    UINT64_MAX,
    CliLoader,
    UnsupportedValue,
    as_program_reads,
    resolve_plain,
    top_level_text,
)
from mlcache.program.names import PROJECT, full_key
from mlcache.program.settings import SECRET_TOP_KEYS, SECURE_PLACEHOLDER, check_unset

_PATH_PART = re.compile(r'\.?([^.\[\]]+)|\[(\d+)\]|\["([^"]+)"\]')


class StackConfigError(ValueError):
    """A stack file, override or key that cannot be read: the message names it (never a secret value)."""


# Pulumi's stack names: letters, digits, '-', '_' and '.' (what also keeps a name inside this directory).
_STACK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# Bounds that no real setting comes near; they keep hostile input (deep nesting, alias
# bombs that expand when the value is passed to the program as JSON) from exhausting memory.
MAX_DEPTH = 32
MAX_NODES = 100_000


def _check_shape(value: Any, what: str) -> None:
    pending, nodes = [(value, 0)], 0
    while pending:
        item, depth = pending.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise StackConfigError(f"{what}: nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise StackConfigError(f"{what}: more than {MAX_NODES} values (aliases expanded)")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children)


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> Any:
    # The same stack files are read for every render of a session (tests, diff): parsed once.
    return yaml.load(text, Loader=CliLoader)  # a SafeLoader: no Python objects


def read_yaml(text: str, what: str) -> Any:
    """Parse config YAML; StackConfigError naming `what` and the place if it is not valid."""
    try:
        value = copy.deepcopy(_parsed(text))  # a copy: callers may change what they get
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise StackConfigError(f"{what}: not valid YAML: {err.problem or err.context}{where}") from None
    except (yaml.YAMLError, RecursionError) as err:
        problem = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
        raise StackConfigError(f"{what}: not valid YAML: {problem}") from None
    _check_shape(value, what)
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StackConfigError(f"{path.name}: not a text file (UTF-8 YAML expected)") from None
    except OSError as err:
        raise StackConfigError(f"cannot read {path.name}: {err.strerror}") from None


def _mapping_in(text: str, file_name: str, section: str) -> dict[str, Any]:
    """The `section` mapping of a YAML file's text (empty if absent), refusing what is not one."""
    document = read_yaml(text, file_name)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise StackConfigError(f"{file_name}: expected a mapping with a `{section}:` key, got {type(document).__name__}")
    value = document.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StackConfigError(f"{file_name}: `{section}:` must be a mapping of keys to values, got {type(value).__name__}")
    return value


def _read_mapping_file(path: Path, section: str) -> dict[str, Any]:
    return _mapping_in(_read_text(path), path.name, section)


def _node_at(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for name, value in node.value if isinstance(name, yaml.ScalarNode) and name.value == key), None)


@functools.lru_cache(maxsize=64)
def retyped_text(text: str, file_name: str, secret: bool = False) -> tuple[str, ...]:
    """Warnings for job.env values and job.args items that the stack file writes as plain whole
    numbers whose text the Pulumi CLI does not keep: `UMASK: 0022` is the number 18 to it, so the
    variable is "18" on both paths, silently. Only a reader of the file can see the text.
    `secret`: mlcache:job holds a secret, which makes every value under it secret to the engine:
    the warning names the key, never the value."""
    try:
        job = _node_at(_node_at(yaml.compose(text, Loader=CliLoader), "config"), f"{PROJECT}:job")
    except yaml.YAMLError:
        return ()  # read_yaml says what is wrong
    items: list[tuple[str, yaml.Node]] = []
    if isinstance(env := _node_at(job, "env"), yaml.MappingNode):
        items += [(f"{PROJECT}:job.env.{name.value}", value) for name, value in env.value]
    if isinstance(args := _node_at(job, "args"), yaml.SequenceNode):
        items += [(f"{PROJECT}:job.args[{index}]", item) for index, item in enumerate(args.value)]
    warnings = []
    for key, node in items:
        if not isinstance(node, yaml.ScalarNode) or node.style is not None:
            continue
        value = resolve_plain(node.value)
        if not isinstance(value, int) or isinstance(value, bool) or str(value) == node.value:
            continue
        where = f"{file_name} line {node.start_mark.line + 1}: {key}"
        if secret:
            warnings.append(
                f"{where} is written as a number the Pulumi CLI reads otherwise (a leading zero, a base prefix or "
                "'_'): its text is not kept; quote it to keep the text"
            )
        else:
            warnings.append(
                f"{where} is written {node.value}, which the Pulumi CLI reads as the number {value}: the value is "
                f"\"{value}\"; quote it ('{node.value}') to keep the text"
            )
    return tuple(warnings)


@dataclass
class StackConfig:
    values: dict[str, Any]
    secret_keys: set[str]
    # What the stack file says that the CLI reads otherwise than it reads (retyped_text).
    warnings: list[str] = field(default_factory=list)

    def engine_config(self) -> dict[str, str]:
        """Values as the CLI passes them to a program: strings, JSON for anything structured."""
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in self.values.items()}

    def moves_by_copy(self) -> bool:
        """The stack asks for moves by copy (cache.relocate copy)."""
        cache = self.values.get("mlcache:cache")
        return isinstance(cache, dict) and cache.get("relocate") == "copy"


def stack_names(project_dir: Path = CHECKOUT) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))


# The settings only a secret may hold: offline, --secret gives them (the stack file's `secure:`).
SECRET_FULL_KEYS = frozenset(full_key(key) for key in SECRET_TOP_KEYS)


def split_key(key: str) -> tuple[str, list[str | int]]:
    """`[namespace:]name.path[0]["x.y"]` -> ("namespace:name", ["path", 0, "x.y"]), as `pulumi config set --path` reads it."""
    namespace, _, path = full_key(key).partition(":")
    if not namespace or not path:
        raise StackConfigError(f"invalid config key {key!r}: expected [NAMESPACE:]NAME, such as cache.size or mlcache:zone")
    parts: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_PART.match(path, position)
        if not match or match.end() == position:
            raise StackConfigError(f"invalid config key {key!r}: cannot parse the path at {path[position:]!r}")
        name, index, quoted = match.groups()
        parts.append(int(index) if index is not None else (quoted or name))
        position = match.end()
    if isinstance(parts[0], int):
        raise StackConfigError(f"invalid config key {key!r}: a path starts with a key name, not an index")
    return f"{namespace}:{parts[0]}", parts[1:]


def _describe(value: Any) -> str:
    descriptions: dict[type, str] = {dict: "an object", list: "a list"}
    return descriptions.get(type(value), "a single value")


def _child(node: Any, part: str | int, key: str, create: Any) -> Any:
    """node[part], created as `create` when absent (None: do not create); refuses a path through the wrong type."""
    if isinstance(node, dict) and isinstance(part, str):
        if part not in node and create is not None:
            node[part] = create
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int):
        if part < len(node):
            return node[part]
        if part == len(node) and create is not None:
            node.append(create)
            return create
        if create is None:
            return None
        end = len(node)
        raise StackConfigError(f"invalid config key {key!r}: index {part} is past the end of a list of {end} (use {end} to add)")
    step = f"[{part}]" if isinstance(part, int) else f".{part}"
    raise StackConfigError(f"invalid config key {key!r}: cannot take {step} of {_describe(node)}")


def _set_path(layer: dict[str, Any], key: str, value: Any) -> None:
    top, rest = split_key(key)
    if not rest:
        layer[top] = value
        return
    parent: Any = None  # the dict or list that holds the path's last part
    node = layer.setdefault(top, {} if isinstance(rest[0], str) else [])
    for part, following in zip(rest, [*rest[1:], None], strict=True):
        parent, node = node, _child(node, part, key, {} if isinstance(following, str) else [])
    parent[rest[-1]] = value


def _unset_path(layer: dict[str, Any], key: str) -> None:
    top, rest = split_key(key)
    if not rest:
        layer.pop(top, None)
        return
    node = layer.get(top)
    for part in rest[:-1]:
        if not isinstance(node, (dict, list)):
            return
        node = _child(node, part, key, None)
    if isinstance(node, dict) and isinstance(rest[-1], str):
        node.pop(rest[-1], None)
    elif isinstance(node, list) and isinstance(rest[-1], int) and rest[-1] < len(node):
        del node[rest[-1]]


def _strip_secure(value: Any) -> tuple[Any, bool]:
    """Replace `{secure: ...}` leaves with a placeholder; report whether there was one."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return SECURE_PLACEHOLDER, True
        found = False
        result = {}
        for k, v in value.items():
            result[k], inner = _strip_secure(v)
            found = found or inner
        return result, found
    if isinstance(value, list):
        pairs = [_strip_secure(v) for v in value]
        return [v for v, _ in pairs], any(s for _, s in pairs)
    return value, False


def _check_encodable(key: str, value: Any, *, secret: bool) -> None:
    """Refuse text that is not Unicode the API server can take: a lone surrogate, from a YAML
    escape such as "\\ud800" or from command-line bytes that are not UTF-8."""
    texts = [key]
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(k for k in item if isinstance(k, str))
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = "the value is not shown" if secret else f"{text.encode('utf-8', 'backslashreplace').decode()!r}"
            raise StackConfigError(f"invalid config {key}: not valid Unicode text ({shown})") from None


def _coerce(text: str) -> Any:
    """What `pulumi config set --path` stores below the top level (config.coerce): true and false,
    and decimal digits without a leading zero, become typed; anything else stays text."""
    if text in ("true", "false"):
        return text == "true"
    # Go's ParseInt(text, 10, 64), then ParseUint: a sign is allowed (`-05` is -5), a leading 0 is not.
    if not (len(text) > 1 and text[0] == "0") and re.fullmatch(r"[+-]?[0-9]+", text):
        number = int(text)
        if INT64[0] <= number <= UINT64_MAX and not (number > INT64[1] and text[0] in "+-"):
            return number
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """KEY=VALUE as `pulumi config set --path KEY VALUE` stores it: a top-level VALUE as typed, a
    nested one coerced (`true`, `8`; `0022` and `1.10` stay text). A VALUE in [...] or {...} is
    read as a stack file would read it. An empty VALUE means "unset" (None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise StackConfigError(f"expected KEY=VALUE, got {text!r}")
    key = key.strip()
    if raw == "":
        return key, None
    if raw.startswith(("[", "{")):
        return key, read_yaml(raw, f"the value of {key}")
    return key, _coerce(raw) if split_key(key)[1] else raw


def _check_stack_name(stack: str) -> None:
    if not _STACK_NAME.fullmatch(stack) or stack.strip(".") == "":
        raise StackConfigError(f"invalid stack name {stack!r}: letters, digits, '-', '_' and '.' only")


def stack_file(stack: str, project_dir: Path = CHECKOUT) -> Path:
    """Pulumi.<stack>.yaml, after checking the name (FileNotFoundError when there is none)."""
    _check_stack_name(stack)
    path = project_dir / f"Pulumi.{stack}.yaml"
    if path.exists() and not path.is_file():
        # A symlink to /dev/zero or a FIFO would block or never end: refused by what it is.
        raise StackConfigError(f"{path.name}: not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"no stack file {path.name}; stacks here: {', '.join(stack_names(project_dir))}")
    return path


def secure_values(stack: str, project_dir: Path = CHECKOUT) -> dict[str, str]:
    """Every `secure:` value of the stack file, by its path (`mlcache:job.env.TOKEN`), as ciphertext:
    offline they cannot be read, only compared ({} when the revision has no such stack file)."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return {}
    found: dict[str, str] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict) and set(value) == {"secure"}:
            found[where] = str(value["secure"])
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    for key, value in _read_mapping_file(path, "config").items():
        walk(value, str(key))
    return found


def _as_program_gets(value: Any) -> Any:
    """A top-level value as the program gets it: text, or what it decodes from an object's JSON."""
    return as_program_reads(value) if isinstance(value, (dict, list)) else top_level_text(value)


def _declared_type(declaration: dict[str, Any]) -> str:
    """Pulumi.yaml's type as the CLI names it (InferFullTypeName): string, array<string>, ..."""
    items = declaration.get("items")
    if isinstance(items, dict) and "type" in items:
        return f"{declaration['type']}<{_declared_type(items)}>"
    return declaration["type"]


def _fits(declaration: dict[str, Any], value: Any) -> bool:
    """The CLI's check of a stack value against the project's declared type (ValidateConfigValue),
    on the value as the program would get it: text, or decoded JSON for an object or list."""
    kind = declaration["type"]
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        if isinstance(value, str):
            return bool(re.fullmatch(r"[+-]?[0-9]+", value)) and INT64[0] <= int(value) <= INT64[1]
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value)
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if kind == "object":
        return isinstance(value, dict)
    items = declaration.get("items")
    return isinstance(value, list) and isinstance(items, dict) and all(_fits(items, item) for item in value)


def load_stack_config(
    stack: str, overrides: Sequence[str] = (), secrets: Sequence[str] = (), project_dir: Path = CHECKOUT
) -> StackConfig:
    path = stack_file(stack, project_dir)
    declared = _read_mapping_file(project_dir / "Pulumi.yaml", "config")
    defaults = {
        full_key(key): _as_program_gets(declaration["default"])
        for key, declaration in declared.items()
        if isinstance(declaration, dict) and "default" in declaration
    }
    file_text = _read_text(path)
    stack_layer = dict(_mapping_in(file_text, path.name, "config"))
    for key in stack_layer:
        if not key.partition(":")[0] or not key.partition(":")[2]:
            raise StackConfigError(f"{path.name}: config key {key!r} is not NAMESPACE:NAME (such as {PROJECT}:zone)")
    secret_keys: set[str] = set()
    for key, value in list(stack_layer.items()):
        stack_layer[key], secure = _strip_secure(value)
        if secure:
            secret_keys.add(key)
    for text in overrides:
        # Before the value is read: an error about it (bad YAML) would quote it.
        key_text, _, value_text = text.partition("=")
        if value_text and key_text.strip() and split_key(key_text.strip())[0] in SECRET_FULL_KEYS:
            raise StackConfigError(
                f"--config {key_text.strip()}: a secret setting; give it with --secret (mlcache render, validate) or "
                "as a `secure:` value in the stack file (the value is not shown)"
            )
        key, value = parse_assignment(text)
        if value is None:
            check_unset(*split_key(key))
            _unset_path(stack_layer, key)
        else:
            _set_path(stack_layer, key, value)
    for text in secrets:
        # Taken verbatim, not as YAML: a token such as 0123 must not become the number 123.
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise StackConfigError("expected KEY=VALUE for --secret (the value is not shown)")
        _set_path(stack_layer, key.strip(), value)
        secret_keys.add(split_key(key.strip())[0])
    for key, value in stack_layer.items():
        _check_encodable(key, value, secret=key in secret_keys)
        try:
            stack_layer[key] = _as_program_gets(value)
        except UnsupportedValue as err:
            raise StackConfigError(f"{path.name}: {key}: {err}") from None
    # The CLI's check of the declared types, in its order (the declared keys sorted) and its own
    # words (pkg/workspace/config.go), before the program starts.
    for name, declaration in sorted(declared.items()):
        value = stack_layer.get(full_key(name))
        if isinstance(declaration, dict) and "type" in declaration and value is not None and not _fits(declaration, value):
            wanted = _declared_type(declaration)
            raise StackConfigError(
                f"validating stack config: Stack '{stack}' with configuration key '{name}' must be of type '{wanted}'"
            )
    # Keys the project does not declare (or a mistyped prefix) are refused by the program itself.
    warnings = list(retyped_text(file_text, path.name, f"{PROJECT}:job" in secret_keys))  # cached per text, as _parsed is
    return StackConfig(values={**defaults, **stack_layer}, secret_keys=secret_keys, warnings=warnings)

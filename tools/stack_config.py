"""Stack configuration as the Pulumi CLI would hand it to the program, read without the CLI.

Layering follows the CLI: the `config:` defaults of Pulumi.yaml, then Pulumi.<stack>.yaml,
where a stack value for an object key replaces the project default whole. Overrides use
`pulumi config set --path` keys and apply to the stack layer, as the CLI would write them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from names import PROJECT
from tools.mock_engine import PROJECT_DIR

# `secure:` values need the stack's secrets provider to decrypt: offline they become this.
SECURE_PLACEHOLDER = "offline-placeholder-for-a-secure-value"
_PATH_PART = re.compile(r'\.?([^.\[\]]+)|\[(\d+)\]|\["([^"]+)"\]')


class AsTypedLoader(yaml.SafeLoader):
    """YAML as the user typed it: plain scalars stay strings, except YAML 1.2's true/false and null.

    PyYAML's YAML 1.1 resolvers would turn `0022` into 18, `1.10` into 1.1, `0x10` into 16,
    `2026-11-28` into a date and `yes` into true; each setting's kind decides instead what
    its text means (settings.py).
    """


AsTypedLoader.yaml_implicit_resolvers = {}
AsTypedLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
AsTypedLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=AsTypedLoader)


@dataclass
class StackConfig:
    values: dict[str, Any]
    secret_keys: set[str]

    def engine_config(self) -> dict[str, str]:
        """Values as the CLI passes them to a program: strings, JSON for anything structured."""
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in self.values.items()}


def stack_names(project_dir: Path = PROJECT_DIR) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))


def full_key(key: str) -> str:
    return key if ":" in key else f"{PROJECT}:{key}"


def split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_PART.match(path, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot parse config path {path!r}")
        name, index, quoted = match.groups()
        parts.append(int(index) if index is not None else (quoted or name))
        position = match.end()
    return parts


def _set_path(layer: dict[str, Any], key: str, value: Any) -> None:
    namespace, _, path = full_key(key).partition(":")
    head, *rest = split_path(path)
    top = f"{namespace}:{head}"
    if not rest:
        layer[top] = value
        return
    node = layer.setdefault(top, {} if isinstance(rest[0], str) else [])
    for part, following in zip(rest, [*rest[1:], None], strict=True):
        if following is None:
            if isinstance(node, list) and isinstance(part, int) and part == len(node):
                node.append(value)
            else:
                node[part] = value
            return
        child = {} if isinstance(following, str) else []
        if isinstance(node, dict):
            node = node.setdefault(part, child)
        elif part == len(node):
            node.append(child)
            node = child
        else:
            node = node[part]


def _unset_path(layer: dict[str, Any], key: str) -> None:
    namespace, _, path = full_key(key).partition(":")
    head, *rest = split_path(path)
    top = f"{namespace}:{head}"
    if not rest:
        layer.pop(top, None)
        return
    node = layer.get(top)
    for part in rest[:-1]:
        if not isinstance(node, (dict, list)):
            return
        node = node.get(part) if isinstance(node, dict) else (node[part] if part < len(node) else None)
    if isinstance(node, dict):
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


def parse_assignment(text: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE read as YAML, as typed; an empty VALUE means "unset" (None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), (load_yaml(raw) if raw != "" else None)


def load_stack_config(
    stack: str, overrides: list[str] = (), secrets: list[str] = (), project_dir: Path = PROJECT_DIR
) -> StackConfig:
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        raise FileNotFoundError(f"no stack file {stack_file.name}; stacks here: {', '.join(stack_names(project_dir))}")
    project = load_yaml((project_dir / "Pulumi.yaml").read_text()) or {}
    declared = project.get("config") or {}
    defaults = {full_key(key): decl["default"] for key, decl in declared.items() if isinstance(decl, dict) and "default" in decl}
    stack_layer = dict((load_yaml(stack_file.read_text()) or {}).get("config") or {})
    secret_keys: set[str] = set()
    for key, value in list(stack_layer.items()):
        stack_layer[key], secure = _strip_secure(value)
        if secure:
            secret_keys.add(key)
    for text in overrides:
        key, value = parse_assignment(text)
        if value is None:
            _unset_path(stack_layer, key)
        else:
            _set_path(stack_layer, key, value)
    for text in secrets:
        # Taken verbatim, not as YAML: a token such as 0123 must not become the number 123.
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError("expected KEY=VALUE for --secret (the value is not shown)")
        _set_path(stack_layer, key, value)
        secret_keys.add(full_key(key).split(".")[0].split("[")[0])
    # Keys the project does not declare (or a mistyped prefix) are refused by the program itself.
    return StackConfig(values={**defaults, **stack_layer}, secret_keys=secret_keys)

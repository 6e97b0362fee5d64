"""The policy pack (policy/policies.py) run offline over a rendered plan, as `pulumi preview
--policy-pack policy` runs it over the engine's resources: every policy's validate function on the
same objects. What a PR preview shows of the pack's verdict before anything is deployed.

The PolicyPack constructor starts a gRPC server for the engine, so the pack's validate functions are
called directly; a secret value arrives as `mlcache render --json` digests it (a policy that reads
it sees the digest, as it would see `[secret]`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from mlcache import CHECKOUT

POLICIES_FILE = CHECKOUT / "policy" / "policies.py"
# pulumi_policy's EnforcementLevel values: a mandatory violation fails the deploy, an advisory one is shown.
MANDATORY, ADVISORY = "mandatory", "advisory"


@dataclass(frozen=True)
class PolicyFinding:
    policy: str
    level: str  # the policy's enforcement level: mandatory | advisory | disabled
    message: str
    resource: str | None  # the object's URN name, or None for a stack-wide finding


@cache
def _pack(path: Path = POLICIES_FILE) -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlcache_policy_pack", path)
    assert spec is not None and spec.loader is not None, f"no policy pack at {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resource_type(urn: str) -> str:
    """`urn:pulumi:stack::project::parent$kubernetes:core/v1:PersistentVolumeClaim::name` -> its type."""
    return urn.split("::")[2].rpartition("$")[2]


def policy_findings(objects: list[dict[str, Any]], pack: Path = POLICIES_FILE) -> list[PolicyFinding]:
    """Every violation the pack (a file declaring POLICIES) reports for the rendered objects
    (`mlcache render --json`'s `objects`)."""
    from pulumi_policy import (  # noqa: PLC0415
        EnforcementLevel,
        PolicyCustomTimeouts,
        PolicyResource,
        PolicyResourceOptions,
        ResourceValidationArgs,
        ResourceValidationPolicy,
        StackValidationArgs,
    )
    from pulumi_policy.policy import _NotApplicableError  # noqa: PLC0415  (what not_applicable() raises)
    from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy  # noqa: PLC0415

    resources = []
    for obj in objects:
        options = PolicyResourceOptions(
            protect=bool(obj.get("protect")),
            ignore_changes=list(obj.get("ignoreChanges") or []),
            delete_before_replace=None,
            aliases=[],
            custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
            additional_secret_outputs=[],
            parent=None,
        )
        # The engine hands policies read-only proxies (Mapping/Sequence, not dict/list): so does this.
        props = unknown_checking_proxy(obj["manifest"])
        name = obj["urn"].rpartition("::")[2]
        resources.append(PolicyResource(resource_type(obj["urn"]), props, obj["urn"], name, options, None, None, [], {}))
    findings: list[PolicyFinding] = []
    for policy in _pack(pack).POLICIES:
        # As the engine's analyzer: the pack's default (advisory: policy/__main__.py sets none) for a
        # policy without a level, disabled ones skipped, remediate reported as mandatory.
        level = (policy.enforcement_level or EnforcementLevel.ADVISORY).value
        if level == EnforcementLevel.DISABLED.value:
            continue
        if level == EnforcementLevel.REMEDIATE.value:
            level = EnforcementLevel.MANDATORY.value

        def report(message: str, urn: str | None = None, name: str = policy.name, level: str = level) -> None:
            findings.append(PolicyFinding(name, level, message, urn.rpartition("::")[2] if urn else None))

        calls: list[tuple[Any, Any, Any]] = []
        if isinstance(policy, ResourceValidationPolicy):
            validates = policy.validate if isinstance(policy.validate, list) else [policy.validate]
            for resource in resources:
                args = ResourceValidationArgs(
                    resource.resource_type, resource.props, resource.urn, resource.name, resource.opts, None
                )

                def report_on(message: str, urn: str | None = None, subject: str = resource.urn) -> None:
                    report(message, urn or subject)

                calls += [(validate, args, report_on) for validate in validates if validate is not None]
        elif policy.validate is not None:
            calls.append((policy.validate, StackValidationArgs(resources), report))
        for validate, args, on_violation in calls:
            try:
                result = validate(args, on_violation)
                if inspect.isawaitable(result):
                    asyncio.run(_awaited(result))
            except (UnknownValueError, _NotApplicableError):
                continue  # as the engine: an unknown value or a policy that does not apply judges nothing
            except Exception as err:  # a policy that breaks says so instead of stopping the preview
                report(f"could not be judged offline ({type(err).__name__}: {err})")
    return findings


async def _awaited(result: Any) -> Any:
    return await result

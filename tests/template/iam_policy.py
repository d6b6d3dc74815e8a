"""Evaluates resource policies the way IAM documents it, for the template's tests.

moto stores queue, bus, secret and key policies but enforces none of them, so what a policy
lets through is decided here, from AWS's documented evaluation logic (not from our template):

* a statement applies when its Action, Resource, Principal and every Condition match;
* an explicit Deny that applies wins over any Allow;
* within one condition operator every key must match; a key with several values matches if one
  does; a negated operator (``...Not...``) matches when the key is absent from the request,
  a positive one does not (``ForAllValues:`` matches an absent key);
* a service principal's request carries ``aws:SourceArn`` / ``aws:SourceAccount`` and no
  ``aws:PrincipalArn``; an IAM principal's carries ``aws:PrincipalArn`` (a role's ARN for its
  sessions) and no ``aws:SourceArn``.

Only the operators the template uses are known; any other one fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

__all__ = ["Request", "decide"]


@dataclass(frozen=True)
class Request:
    """One API call as a resource policy sees it."""

    action: str
    resource: str
    principal_arn: str | None = None  # an IAM role or user
    service: str | None = None  # a service principal, e.g. events.amazonaws.com
    context: dict[str, str] = field(default_factory=dict)  # aws:SourceArn, events:source, ...

    def keys(self) -> dict[str, str]:
        keys = {name.lower(): value for name, value in self.context.items()}
        if self.principal_arn is not None:
            keys["aws:principalarn"] = self.principal_arn
            keys["aws:principalaccount"] = self.principal_arn.split(":")[4]
        return keys


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches_any(patterns: Any, value: str) -> bool:
    return any(fnmatchcase(value, str(pattern)) for pattern in _as_list(patterns))


def _principal_matches(principal: Any, request: Request) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        raise ValueError(f"unsupported Principal {principal!r}")
    if request.service is not None:
        return request.service in _as_list(principal.get("Service", []))
    if request.principal_arn is None:
        return False
    account = request.principal_arn.split(":")[4]
    # An account (its id or root ARN) stands for every principal of that account.
    matching = {"*", request.principal_arn, account, f"arn:aws:iam::{account}:root"}
    return any(str(named) in matching for named in _as_list(principal.get("AWS", [])))


_POSITIVE = {
    "ArnEquals": fnmatchcase,
    "ArnLike": fnmatchcase,
    "StringEquals": lambda value, pattern: value == pattern,
    "Bool": lambda value, pattern: value.lower() == str(pattern).lower(),
}
_NEGATED = {"ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike", "StringNotEquals": "StringEquals"}


def _condition_matches(condition: dict[str, Any], request: Request) -> bool:
    keys = request.keys()
    for operator, tests in condition.items():
        for key, expected in tests.items():
            value = keys.get(key.lower())
            if operator.startswith("ForAllValues:"):
                positive = _POSITIVE[operator.removeprefix("ForAllValues:")]
                ok = value is None or any(positive(value, str(e)) for e in _as_list(expected))
            elif operator in _NEGATED:
                positive = _POSITIVE[_NEGATED[operator]]
                ok = value is None or not any(positive(value, str(e)) for e in _as_list(expected))
            elif operator in _POSITIVE:
                ok = value is not None and any(_POSITIVE[operator](value, str(e)) for e in _as_list(expected))
            else:
                raise ValueError(f"condition operator {operator} is not known to this evaluator")
            if not ok:
                return False
    return True


def _applies(statement: dict[str, Any], request: Request) -> bool:
    return (
        _matches_any(statement["Action"], request.action)
        and _matches_any(statement.get("Resource", "*"), request.resource)
        and _principal_matches(statement.get("Principal", "*"), request)
        and _condition_matches(statement.get("Condition", {}), request)
    )


def decide(statements: list[dict[str, Any]], request: Request) -> str:
    """``"Deny"`` (an explicit deny applies), ``"Allow"`` (an allow applies, no deny) or
    ``"Neither"`` (the policy says nothing: the caller's own IAM policies decide)."""
    applying = [s["Effect"] for s in statements if _applies(s, request)]
    if "Deny" in applying:
        return "Deny"
    return "Allow" if "Allow" in applying else "Neither"

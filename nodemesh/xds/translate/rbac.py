"""CiliumNetworkPolicy `rules.http` as Envoy's RBAC HTTP filter.

Cilium's semantics, per redirected service port:
- A request from one of a policy's client pods (matched by source IP, the
  `direct_remote_ip` of the connection) is allowed when it matches any of that
  policy's rules. Policies add up: any policy allowing it is enough.
- A rule's fields all have to match: `method` and `path` are anchored regexes
  (Envoy's safe_regex is RE2 and matches the whole value, which is the
  anchoring Cilium gives them) against `:method` and `:path`, `host` against
  `:authority`, `headers` "Name" means present and "Name: value" means equal.
  An empty rule (`http: [{}]`) allows everything.
- On a CEC's listener (the CEC routes whoever reaches it), a client no policy
  names is not restricted by any policy, so it is allowed.
- Anything else gets Envoy's RBAC answer: 403.

When one listener serves several redirects, each permission is also tied to
its redirect's destination where Envoy can tell them apart (redirects.py), so
one service port's rules never open another.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from nodemesh.model.objects import (
    HTTPPolicy,
    HTTPRule,
    L7Redirect,
    ObjectError,
    ObjectWarning,
    RedirectOrigin,
)
from nodemesh.model.regex import re2_problem
from nodemesh.xds.translate.constraints import check_constraints
from nodemesh.xds.translate.envoy_rules import check_envoy_rules
from nodemesh.xds.translate.registry import pack

RBAC_FILTER = "envoy.filters.http.rbac"
# What building a filter found to tell: warnings, and errors for rules it could not use.
Notes = list[ObjectWarning | ObjectError]
_NOTHING = rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))


def _cidr(ip: str) -> address_pb2.CidrRange:
    # The model holds pod IPs Kubernetes validated: a colon means IPv6.
    length = 128 if ":" in ip else 32
    return address_pb2.CidrRange(address_prefix=ip, prefix_len={"value": length})


def _from_ips(ips: Sequence[str]) -> rbac_pb2.Principal:
    ids = [rbac_pb2.Principal(direct_remote_ip=_cidr(ip)) for ip in sorted(set(ips))]
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _regex(header: str, regex: str) -> rbac_pb2.Permission:
    matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))
    return rbac_pb2.Permission(
        header=route_components_pb2.HeaderMatcher(name=header, string_match=matcher)
    )


def _header(name: str, value: str | None) -> rbac_pb2.Permission:
    if value is None:
        matcher = route_components_pb2.HeaderMatcher(name=name, present_match=True)
    else:
        exact = string_pb2.StringMatcher(exact=value)
        matcher = route_components_pb2.HeaderMatcher(name=name, string_match=exact)
    return rbac_pb2.Permission(header=matcher)


def _split_header(header: str) -> tuple[str, str | None]:
    # Cilium's form: "Name" (present) or "Name: value" / "Name value" (equal).
    name, _, value = header.strip().partition(" ")
    return name.rstrip(":"), (value.strip() or None)


def _rule_permission(
    rule: HTTPRule, policy: HTTPPolicy, where: str, notes: Notes
) -> rbac_pb2.Permission:
    conditions: list[rbac_pb2.Permission] = []
    for key, header, regex in (
        ("method", ":method", rule.method),
        ("path", ":path", rule.path),
        ("host", ":authority", rule.host),
    ):
        if not regex:
            continue
        reason = re2_problem(regex)
        if reason is not None:
            # Envoy would reject the whole listener; this rule alone allows nothing.
            notes.append(ObjectError(policy.owner, f"{where}.{key}", f"{reason}; rule ignored"))
            return _NOTHING
        conditions.append(_regex(header, regex))
    conditions.extend(_header(*_split_header(h)) for h in rule.headers)
    for index, match in enumerate(rule.header_matches):
        if match.mismatch:
            # Cilium performs the action instead of denying; RBAC cannot edit headers.
            notes.append(
                ObjectWarning(
                    policy.owner,
                    f"{where}.headerMatches[{index}].mismatch",
                    f"mismatch action {match.mismatch} is not enforced by nodemesh; "
                    f"header {match.name!r} is not required",
                )
            )
            continue
        conditions.append(_header(match.name, match.value))
    if not conditions:
        return rbac_pb2.Permission(any=True)
    permission = (
        conditions[0]
        if len(conditions) == 1
        else rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=conditions))
    )
    # The same checks as a CEC's resources: a header name Envoy refuses
    # (empty, NUL, CR, LF) would NACK the whole listener.
    broken = list(check_constraints(permission)) or list(check_envoy_rules(permission))
    if broken:
        reason = "; ".join(reason for _, reason in broken)
        notes.append(
            ObjectError(policy.owner, where, f"Envoy would reject it: {reason}; rule ignored")
        )
        return _NOTHING
    return permission


def _scoped(
    permission: rbac_pb2.Permission, destination: rbac_pb2.Permission | None
) -> rbac_pb2.Permission:
    if destination is None:
        return permission
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=[destination, permission]))


def _restricts(redirect: L7Redirect) -> bool:
    """Whether any policy rule of the redirect can deny: `http: [{}]` only redirects."""
    return any(not rule.allows_everything for p in redirect.policies for rule in p.rules)


def _redirect_policies(
    redirect: L7Redirect,
    destination: rbac_pb2.Permission | None,
    shared: bool,
    notes: Notes,
) -> dict[str, rbac_pb2.Policy]:
    # Policy names need the service port only where one listener serves several.
    where = f"{redirect.service}:{redirect.port} " if shared else ""
    policies: dict[str, rbac_pb2.Policy] = {}
    covered: list[str] = []
    restricted = _restricts(redirect)
    for index, policy in enumerate(redirect.policies if restricted else ()):
        covered.extend(policy.client_ips)
        if not policy.client_ips:
            continue  # no client pod has an IP yet: the policy allows no one
        permissions = [
            _scoped(_rule_permission(rule, policy, f"rules.http[{r}]", notes), destination)
            for r, rule in enumerate(policy.rules)
        ]
        policies[f"{where}{policy.owner} #{index}"] = rbac_pb2.Policy(
            principals=[_from_ips(policy.client_ips)], permissions=permissions
        )
    if redirect.origin is not RedirectOrigin.NETWORK_POLICY or not restricted:
        # A CEC routes whoever reaches its listener: clients no policy names
        # are not restricted by one. Or every client, when no rule can deny
        # (this redirect may share a listener whose other redirects do deny).
        others = (
            rbac_pb2.Principal(not_id=_from_ips(covered))
            if covered
            else rbac_pb2.Principal(any=True)
        )
        policies[f"{where}clients without a policy"] = rbac_pb2.Policy(
            principals=[others], permissions=[_scoped(rbac_pb2.Permission(any=True), destination)]
        )
    return policies


def rbac_filter(
    redirects: Sequence[tuple[L7Redirect, rbac_pb2.Permission | None]],
    notes: Notes,
) -> hcm_pb2.HttpFilter | None:
    """The RBAC HTTP filter enforcing the redirects' policies, or None when no
    redirect carries one. Each redirect comes with the destination condition
    that tells its connections apart on a shared listener (None: not shared)."""
    if not any(_restricts(redirect) for redirect, _ in redirects):
        return None
    policies: dict[str, rbac_pb2.Policy] = {}
    for redirect, destination in redirects:
        shared = len(redirects) > 1
        policies.update(_redirect_policies(redirect, destination, shared, notes))
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=policies)
    config = rbac_filter_pb2.RBAC(rules=rules)
    return hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=pack(config))

"""Issue 10 item 2: objects nodemesh admitted and the real Envoy NACKed.

Each case is a pair: a resource Envoy rejects and the nearest one it accepts.
Admission must refuse the first (naming the field, in Envoy's words) and
admit the second, and a real Envoy (`--mode validate`) must agree on both,
so the checks are neither too weak nor too strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodemesh.model.objects import HeaderMatch, HTTPRule
from nodemesh.xds.translate import CLUSTER, ROUTE, translate, validate_envoy_config
from tests.xds.translate import translate_models as m
from tests.xds.translate.envoy_static import (
    envoy_validate,
    envoy_verdict,
    resource_bootstrap,
    static_bootstrap,
    write_bootstrap,
)


def _route(route: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"match": {"prefix": "/"}, "route": route or {"cluster": "default/a"}}
    entry.update(extra)
    return {"name": "r", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [entry]}]}


def _hosts(*domains: list[str]) -> dict[str, Any]:
    hosts = [
        {
            "name": f"vh{i}",
            "domains": d,
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "default/a"}}],
        }
        for i, d in enumerate(domains)
    ]
    return {"name": "r", "virtual_hosts": hosts}


def _split(*weights: Any) -> dict[str, Any]:
    clusters = [
        {"name": n, "weight": w} for n, w in zip(("default/a", "default/b"), weights, strict=True)
    ]
    return _route({"weighted_clusters": {"clusters": clusters}})


def _regex(regex: str) -> dict[str, Any]:
    body = _route()
    body["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": regex}}
    return body


def _header_match(name: str) -> dict[str, Any]:
    body = _route()
    body["virtual_hosts"][0]["routes"][0]["match"]["headers"] = [
        {"name": name, "present_match": True}
    ]
    return body


def _rewrite(regex: str) -> dict[str, Any]:
    return _route(
        {"cluster": "default/a", "regex_rewrite": {"pattern": {"regex": regex}, "substitution": ""}}
    )


def _add_header(key: str) -> dict[str, Any]:
    return _route(request_headers_to_add=[{"header": {"key": key, "value": "x"}}])


def _body(size: int) -> dict[str, Any]:
    body = _route()
    entry = body["virtual_hosts"][0]["routes"][0]
    del entry["route"]
    entry["direct_response"] = {"status": 200, "body": {"inline_string": "x" * size}}
    return body


def _cluster(timeout: str) -> dict[str, Any]:
    return {"name": "c", "type": "STATIC", "connect_timeout": timeout}


# name -> (type, rejected body, accepted body, words the error must contain)
PAIRS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "weights sum to 2^32": (ROUTE, _split(2**32 - 1, 1), _split(2**32 - 2, 1), "exceeds"),
    "weight null": (ROUTE, _split(None, 1), _split(1, 1), "'weight' is missing"),
    "duplicate domains": (ROUTE, _hosts(["a", "A"]), _hosts(["a", "b"]), "unique"),
    "duplicate across hosts": (ROUTE, _hosts(["a"], ["a"]), _hosts(["a"], ["b"]), "unique"),
    "two wildcards": (ROUTE, _hosts(["*", "*"]), _hosts(["*"]), "single wildcard"),
    "CR LF in a domain": (ROUTE, _hosts(["a\r\nb"]), _hosts(["ab"]), "pattern"),
    "regex \\Z": (ROUTE, _regex("/a\\Z"), _regex("/a\\z"), "not an RE2 regular expression"),
    "regex (?#": (ROUTE, _regex("/a(?#c)"), _regex("/a"), "not an RE2 regular expression"),
    "regex a++": (ROUTE, _regex("/a++"), _regex("/a+"), "not an RE2 regular expression"),
    "regex (?>": (ROUTE, _regex("(?>/a)"), _regex("(?:/a)"), "not an RE2 regular expression"),
    "regex (?x": (ROUTE, _regex("(?x)/a"), _regex("(?i)/a"), "not an RE2 regular expression"),
    "regex {1001}": (ROUTE, _regex("a{1001}"), _regex("a{90}"), "not an RE2 regular expression"),
    "regex program size": (ROUTE, _regex("a{100}"), _regex("a{95}"), "RE2 program of size"),
    "regex_rewrite a++": (ROUTE, _rewrite("a++"), _rewrite("a+"), "not an RE2 regular expression"),
    "negative duration": (CLUSTER, _cluster("-2s"), _cluster("2s"), "more than"),
    "negative route timeout": (
        ROUTE,
        _route({"cluster": "default/a", "timeout": "-1s"}),
        _route({"cluster": "default/a", "timeout": "1s"}),
        "positive",
    ),
    "duration out of range": (
        ROUTE,
        _route({"cluster": "default/a", "timeout": "9223372036s"}),
        _route({"cluster": "default/a", "timeout": "9223372035s"}),
        "out of range",
    ),
    "add host header": (ROUTE, _add_header("host"), _add_header("x-host"), "host headers"),
    "add :path header": (ROUTE, _add_header(":path"), _add_header("x-path"), "host headers"),
    "header key with LF": (ROUTE, _add_header("x\nb"), _add_header("xb"), "pattern"),
    "direct response over 4096": (ROUTE, _body(4097), _body(4096), "maximum is 4096"),
    "header match name CR LF": (ROUTE, _header_match("a\r\nb"), _header_match("ab"), "pattern"),
    "header match name empty": (ROUTE, _header_match(""), _header_match("x"), "at least 1"),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_admission_refuses_what_envoy_refuses(case: str) -> None:
    type_url, bad, good, words = PAIRS[case]
    errors = validate_envoy_config(m.envoy_config(m.CEC_REF, [(type_url, bad)]))
    assert errors, f"{case}: admitted"
    assert all(e.field.startswith("spec.resources[0]") for e in errors)
    assert any(words in e.reason for e in errors), [e.reason for e in errors]
    assert validate_envoy_config(m.envoy_config(m.CEC_REF, [(type_url, good)])) == []


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(PAIRS))
def test_real_envoy_agrees(case: str, tmp_path: Path) -> None:
    type_url, bad, good, _ = PAIRS[case]
    accepted, said = envoy_verdict(resource_bootstrap(type_url, bad), tmp_path / "bad.json")
    assert not accepted, f"{case}: Envoy accepted it"
    accepted, said = envoy_verdict(resource_bootstrap(type_url, good), tmp_path / "good.json")
    assert accepted, said


BAD_RULES = {
    "empty header name": HTTPRule(headers=("",)),
    "NUL in header name": HTTPRule(headers=("x\x00y",)),
    "CR LF in header name": HTTPRule(header_matches=(HeaderMatch("x\r\ny", "1"),)),
    "non-RE2 path": HTTPRule(path="/a\\Z"),
    "possessive method": HTTPRule(method="GET++"),
    "path over program size": HTTPRule(path="/" + "[a-z]" * 120),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_a_cnp_rule_envoy_refuses_is_dropped_with_an_error(case: str, tmp_path: Path) -> None:
    rules = (m.READONLY_RULES[0], BAD_RULES[case])
    translation = translate(m.policy_model(rules))
    (error,) = translation.errors
    assert error.ref == m.POLICY_REF and error.field.startswith("rules.http[1]")
    assert "rule ignored" in error.reason
    if case != "path over program size":  # one Envoy run stands for the rest
        return
    path = write_bootstrap(static_bootstrap(translation), tmp_path / "rbac.json")
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr

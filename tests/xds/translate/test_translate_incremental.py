"""A long-lived Translator, fed a sequence of models, gives exactly what a fresh
translation of each model gives: reuse never leaks stale resources."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import MappingProxyType

from prometheus_client import REGISTRY

from nodemesh.model.objects import HTTPRule
from nodemesh.model.snapshot import MeshModel
from nodemesh.xds.translate import TranslateOptions, Translation, Translator, encode, translate
from tests.xds.translate import translate_models as m


def _bytes(translation: Translation) -> dict[str, dict[str, bytes]]:
    return {
        url: {name: encode(message) for name, message in named.items()}
        for url, named in translation.resources.items()
    }


def _sequence() -> list[MeshModel]:
    canary = m.canary_model()
    policy = m.policy_model()
    both = replace(
        canary,
        services=MappingProxyType({**canary.services, **policy.services}),
        backends=MappingProxyType({**canary.backends, **policy.backends}),
        redirects=(*canary.redirects, *policy.redirects),
    )
    moved = replace(
        both,
        backends=MappingProxyType(
            {**both.backends, m.V1: MappingProxyType({80: (m.backend("127.0.0.1", 18091),)})}
        ),
    )
    route = copy.deepcopy(m.ARTICLE_ROUTE)
    route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"][0][
        "weight"
    ] = 50
    route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["total_weight"] = 60
    reweighted = replace(moved, envoy_configs=(m.canary_config(route),))
    stricter = replace(
        reweighted,
        redirects=(
            reweighted.redirects[0],
            m.policy_redirect((HTTPRule(method="DELETE"),), ("10.0.0.5",)),
        ),
    )
    no_policy = replace(stricter, redirects=stricter.redirects[:1])
    fewer_services = replace(
        no_policy,
        services=MappingProxyType({k: v for k, v in no_policy.services.items() if k != m.API}),
    )
    return [canary, both, moved, moved, reweighted, stricter, no_policy, fewer_services, canary]


def test_incremental_equals_fresh_for_every_model() -> None:
    translator = Translator()
    for index, model in enumerate(_sequence()):
        incremental = translator.translate(model)
        fresh = translate(model)
        assert _bytes(incremental) == _bytes(fresh), f"model #{index}"
        assert incremental.errors == fresh.errors, f"model #{index}"
        assert incremental.warnings == fresh.warnings, f"model #{index}"


def test_equal_but_rebuilt_model_reuses_every_message() -> None:
    translator = Translator()
    first = translator.translate(m.policy_model())
    second = translator.translate(m.policy_model())  # equal objects, none shared
    for url, named in second.resources.items():
        for name, message in named.items():
            assert message is first.resources[url][name], (url, name)


def _stage(stage: str, mode: str) -> float:
    value = REGISTRY.get_sample_value(
        "nodemesh_xds_translate_stages_total", {"stage": stage, "mode": mode}
    )
    return value or 0.0


def test_metrics_show_what_each_round_reused() -> None:
    # Node Envoy resources only: no proxyless targets (one Listener per port).
    translator = Translator(TranslateOptions(proxyless_domain=None))
    v1 = m.canary_model()
    translator.translate(v1)
    reused, patched = _stage("redirects", "reused"), _stage("endpoints", "patched")
    moved = MappingProxyType({80: (m.backend("127.0.0.1", 18091),)})
    v2 = replace(v1, version="v2", backends=MappingProxyType({**v1.backends, m.V1: moved}))
    translator.translate(v2)
    assert _stage("redirects", "reused") == reused + 1
    assert _stage("endpoints", "patched") == patched + 1
    rebuilt = _stage("redirects", "rebuilt")
    translator.translate(replace(v2, redirects=()))
    assert _stage("redirects", "rebuilt") == rebuilt + 1
    assert REGISTRY.get_sample_value("nodemesh_xds_translate_resources", {"type": "Listener"}) == 0


def test_vip_change_reaches_a_shared_listener_with_original_destinations() -> None:
    options = TranslateOptions(use_original_dst=True)
    translator = Translator(options)
    v1 = m.shared_listener_model()
    translator.translate(v1)
    web = replace(v1.services[m.WEB], cluster_ips=("10.96.0.99",))
    v2 = replace(v1, services=MappingProxyType({**v1.services, m.WEB: web}))
    assert _bytes(translator.translate(v2)) == _bytes(translate(v2, options))


def test_app_protocol_change_rebuilds_the_cluster() -> None:
    translator = Translator()
    v1 = m.policy_model()
    translator.translate(v1)
    api = v1.services[m.API]
    grpc = replace(api, ports=(replace(api.ports[0], app_protocol="kubernetes.io/h2c"),))
    v2 = replace(v1, services=MappingProxyType({m.API: grpc}))
    assert _bytes(translator.translate(v2)) == _bytes(translate(v2))
    assert _bytes(translate(v2)) != _bytes(translate(v1))

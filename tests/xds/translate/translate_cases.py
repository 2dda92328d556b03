"""The translations the golden files hold, and helpers to look at translations.

`CASES` maps a golden file's name to a function producing its Translation;
the golden test compares `render(...)` with the file, and the Envoy test feeds
the same translations to a real Envoy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from nodemesh.model.objects import Kind, ObjectRef
from nodemesh.xds.translate import ROUTE, TranslateOptions, Translation, Translator, translate
from tests.xds.translate import translate_models as m


def render(translation: Translation) -> dict[str, Any]:
    """A translation as sorted JSON-ready data: resources, errors, warnings."""
    resources = {
        url.rpartition(".")[2]: {
            name: json_format.MessageToDict(message, preserving_proto_field_name=True)
            for name, message in sorted(named.items())
        }
        for url, named in translation.resources.items()
    }
    return {
        "model_version": translation.model_version,
        "resources": resources,
        "errors": sorted(str(e) for e in translation.errors),
        "warnings": sorted(str(w) for w in translation.warnings),
        "named_only": {
            url.rpartition(".")[2]: sorted(names)
            for url, names in sorted(translation.named_only.items())
        },
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


BROKEN_REF = ObjectRef(Kind.ENVOY_CONFIG, m.DEFAULT, "broken")
NEW_REF = ObjectRef(Kind.ENVOY_CONFIG, m.DEFAULT, "new")


def bad_config_keeps_previous() -> Translation:
    """v1: the canary, and a CEC "broken" with one good route. v2: the canary's
    route now also sends to default/httpbin-v3, which does not exist, and
    "broken" gains a resource of an unknown @type. Both keep their v1
    resources, and their errors say so; a third CEC, new in v2 and bad from
    the start, contributes nothing."""
    good_route = {"name": "ok-route", "virtual_hosts": [_vhost("default/httpbin-v1")]}
    typo = ("type.googleapis.com/envoy.config.listener.v3.Listenr", {"name": "typo"})
    translator = Translator()
    translator.translate(
        m.model(
            m.CANARY_SERVICES,
            m.CANARY_BACKENDS,
            configs=[m.canary_config(), m.envoy_config(BROKEN_REF, [(ROUTE, good_route)])],
            redirects=[m.canary_redirect()],
        )
    )
    route = json.loads(json.dumps(m.ARTICLE_ROUTE))
    weighted = route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
    weighted["clusters"].append({"name": "default/httpbin-v3", "weight": 0})
    changed_route = good_route | {"virtual_hosts": [_vhost("default/httpbin-v2")]}
    v2 = m.model(
        m.CANARY_SERVICES,
        m.CANARY_BACKENDS,
        configs=[
            m.canary_config(route),
            m.envoy_config(BROKEN_REF, [(ROUTE, changed_route), typo]),
            m.envoy_config(NEW_REF, [(ROUTE, {"name": "never", "virtual_hosts": []}), typo]),
        ],
        redirects=[m.canary_redirect()],
        version="v2",
    )
    return translator.translate(v2)


def _vhost(cluster: str) -> dict[str, Any]:
    return {
        "name": "vh",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
    }


CASES: dict[str, Callable[[], Translation]] = {
    "canary": lambda: translate(m.canary_model()),
    "policy_rules": lambda: translate(m.policy_model()),
    "own_listener": lambda: translate(m.own_listener_model()),
    "bad_config_keeps_previous": bad_config_keeps_previous,
    "cilium_backend_cluster": lambda: translate(m.backend_cluster_model()),
    "shared_listener_original_dst": lambda: translate(
        m.shared_listener_model(), TranslateOptions(use_original_dst=True)
    ),
}

"""kubernetes-asyncio's client core, imported without its generated API surface.

Importing anything under `kubernetes_asyncio` runs the package `__init__`,
which imports every generated `*Api` class and every model class: about
35 MiB of the agent's RSS for code nodemesh never calls (it reads raw JSON
and issues five kinds of request). Auth, configuration and the HTTP layer
must still be kubernetes-asyncio's own (in-cluster tokens that rotate,
kubeconfig with exec plugins, TLS), so this module registers the
`kubernetes_asyncio`, `kubernetes_asyncio.client` and
`kubernetes_asyncio.client.models` packages unexecuted, and the submodules
nodemesh needs (`client.configuration`, `client.api_client`, `client.rest`,
`client.exceptions`, the `config` package) then import alone.

Nothing else in the process loses anything: the first time any other name
is looked up on one of those packages (`client.CoreV1Api`, a model class
the client deserializes into), the real package `__init__` runs in place.
If kubernetes-asyncio was already imported when this module loads, it is
left as it is (there is nothing left to save).

Why not import the submodules directly: Python runs every parent package's
`__init__` before a submodule, and the submodules themselves import through
the package (`api_client` does `import kubernetes_asyncio.client.models`,
`config.kube_config` does `from kubernetes_asyncio.client import ApiClient`),
so any import of the core runs the 800-import `client/__init__`. Only
registering the parents unexecuted avoids that (checked on 36.1.0).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from nodemesh.k8s_watch.errors import K8sWatchError

# Names the config package imports from `kubernetes_asyncio.client`, served
# from their own submodule so that import does not load the whole package.
_CLIENT_SHORTCUTS = {
    "ApiClient": "api_client",
    "Configuration": "configuration",
    "ApiException": "exceptions",
    "ApiValueError": "exceptions",
}


class LeanImportError(K8sWatchError):
    """kubernetes-asyncio's package layout is not what this module expects."""


def _deferred_package(name: str, shortcuts: Mapping[str, str]) -> ModuleType:
    """Register package `name` without running its `__init__`, which runs on
    the first lookup of a name that is neither a shortcut nor a submodule."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise LeanImportError(f"{name} is not an importable package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def load_attr(attr: str) -> Any:
        if attr in shortcuts:
            value = getattr(importlib.import_module(f"{name}.{shortcuts[attr]}"), attr)
        elif not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}"):
            # `from package import submodule` probes the attribute first.
            value = importlib.import_module(f"{name}.{attr}")
        else:
            del module.__dict__["__getattr__"]  # the real module answers from now on
            loader.exec_module(module)
            return getattr(module, attr)
        setattr(module, attr, value)
        return value

    module.__dict__["__getattr__"] = load_attr
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _install() -> None:
    if "kubernetes_asyncio" in sys.modules:
        return
    _deferred_package("kubernetes_asyncio", {})
    _deferred_package("kubernetes_asyncio.client", _CLIENT_SHORTCUTS)
    # api_client imports the models package to deserialize into model
    # classes; nodemesh asks for raw responses, so they never load here.
    _deferred_package("kubernetes_asyncio.client.models", {})


_install()

# Imported after _install on purpose: these are the only parts nodemesh runs.
from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.client.exceptions import ApiException  # noqa: E402
from kubernetes_asyncio.config import (  # noqa: E402
    ConfigException,
    load_incluster_config,
    load_kube_config,
)

__all__ = [
    "ApiClient",
    "ApiException",
    "ConfigException",
    "Configuration",
    "LeanImportError",
    "load_incluster_config",
    "load_kube_config",
]

"""The mesh model translated into Envoy resources (CDS, EDS, LDS, RDS).

Public contract:
- `translate(model, options, previous=None) -> Translation`, or a long-lived
  `Translator(options).translate(model)` that also reuses unchanged messages;
- `validate_envoy_config(config) -> list[ObjectError]`, the admission check
  the model store runs on each CiliumEnvoyConfig;
- the type URLs `CLUSTER`, `ENDPOINT`, `LISTENER`, `ROUTE` keying
  `Translation.resources`, and `encode` (deterministic wire bytes).
"""

from nodemesh.xds.translate.envoy_config import validate_envoy_config
from nodemesh.xds.translate.errors import ResourceError, TranslateError, UnknownTypeError
from nodemesh.xds.translate.registry import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE,
    encode,
)
from nodemesh.xds.translate.result import TranslateOptions, Translation
from nodemesh.xds.translate.translator import Translator, translate

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "RESOURCE_TYPES",
    "ROUTE",
    "ResourceError",
    "TranslateError",
    "TranslateOptions",
    "Translation",
    "Translator",
    "UnknownTypeError",
    "encode",
    "translate",
    "validate_envoy_config",
]

"""Flows: what the node decided about traffic, as `nodemesh observe` shows it.

Layer 1 (imports only the model): the Envoy access-log (ALS) receiver, the
bounded flow ring with its followers, enrichment from the model, filters,
the Observer gRPC service and the golden metrics. The agent wires it
(`nodemesh.wiring.agent`); `nodemesh observe` reads it.
"""

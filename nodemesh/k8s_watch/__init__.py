"""The Kubernetes source: list/watch the API server into the mesh model, and
report back on the objects themselves.

Wiring (the agent or `nodemesh serve` owns the MeshStore and the TaskGroup):

    api_client = await make_api_client()            # in-cluster, else kubeconfig
    k8s = KubernetesSource(KubeApi(api_client, WatchSettings()), store,
                           node=node_name,
                           nacks=XdsNacks(ads_server.clients),     # nodemesh.wiring.nacks
                           translation_errors=lambda: translation.errors,
                           resources=default_resources(node_name))
    tg.create_task(k8s.run(), name="k8s")

- Publish nothing before `await k8s.watch.wait_synced()`: until every
  informer has listed, the store holds a partial cluster, and publishing it
  would withdraw Envoy config and kernel redirects on every agent restart.
  After that, relists replace a resource's set in one step (no window).
- `k8s.health.reasons()` fits the admin port's `not_ready_reasons()`: empty
  when every informer is synced and connected, else one line per resource
  ("serving last known state; failing since ...").
- `nodemesh.wiring.nacks.XdsNacks` implements `conditions.NackSource` over the
  xDS server's status view: one `NackReport(node, type_url, resource_names,
  message)` per type a node's Envoy currently NACKs. Call
  `k8s.nacks_changed()` when that set changes, so Programmed conditions
  follow without waiting for the retry interval.
- `translation_errors` gives what the translator rejected beyond the model's
  own errors, so Accepted reflects it. integration/test_k8s_nack.py wires
  all of this around a ControlPlane and a real Envoy.
- Only one process per cluster needs `report_status=True` for Accepted
  conditions (every agent computes the same); each agent reports its own
  node's NACKs, and never clears another node's.

Modules: `client` (HTTP calls, error mapping, auth), `kube_core`
(kubernetes-asyncio's client core without its generated API classes and
models), `watching` (list/watch generators), `informer` (stream ->
ObjectSink), `source` (all informers), `conditions` and `reporter` (status
and Events), `runner` (KubernetesSource), `cli` (`nodemesh k8s-watch`).
Nothing is imported here: even without the generated classes, the client
and aiohttp cost RSS and import time the other `nodemesh` subcommands
should not pay.
"""

"""The mesh model: what the user declared, parsed, admitted and versioned.

- `objects`, `snapshot`: the frozen value types and `MeshModel` (shared contract);
- `parse` (+ `parse_cilium`, `fields`): the one parser every source shares;
- `store`: `MeshStore`, where sources put raw objects and models come out;
- `admission`: which CiliumEnvoyConfigs are in effect (Cilium's semantics);
- `redirects`, `ports`: the L7 redirects and their stable proxy ports;
- `backends`: Service backends from EndpointSlices.
"""

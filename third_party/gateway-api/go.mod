// Pins the Gateway API release whose standard-channel CRDs and GAMMA mesh
// conformance manifests nodemesh follows (docs/gateway-api.md). Nothing here
// is built: `go mod download` (scripts/gateway_api.sh) fetches both modules
// into the module cache, checked against go.sum.
//
// v1.6.3: the newest stable release whose conformance module this machine's
// Go (1.26) can fetch; v1.7.0's conformance/go.mod requires go 1.27.
module nodemesh.io/third_party/gateway-api

go 1.26.0

require (
	sigs.k8s.io/gateway-api v1.6.3
	sigs.k8s.io/gateway-api/conformance v1.6.3
)

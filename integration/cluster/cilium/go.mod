module nodemesh.local/cluster/cilium

go 1.26.0

// Only for its CRDs (pkg/k8s/apis/cilium.io/client/crds/v2/): test_cluster_cilium_crds.py
// runs nodemesh against Cilium's own CRDs. Never built; hence no tidy, and a go.sum
// holding just this module's own checksums.
require github.com/cilium/cilium v1.20.2

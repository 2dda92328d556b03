#!/usr/bin/env bash
# The article's steps 1-4 on a kind cluster, asserted: install nodemesh, apply
# examples/canary, run the curl loop from a `curl` pod, check the 90/10 split.
#
#   integration/kind/run.sh            # creates the cluster unless it exists
#   REQUESTS=400 KEEP=1 integration/kind/run.sh
#
# Needs docker, kind and kubectl. The split is read from the node Envoy's own
# counters (the article's httpbin answers alike for v1 and v2).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${CLUSTER:-nodemesh}
IMAGE=${IMAGE:-ghcr.io/nodemesh/nodemesh:kind}
REQUESTS=${REQUESTS:-400}
V2_SHARE=${V2_SHARE:-0.10}

log() { printf '[kind] %s\n' "$*" >&2; }

cleanup() {
    if [ -z "${KEEP:-}" ]; then
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
}

ensure_cluster() {
    if ! kind get clusters | grep -qx "$CLUSTER"; then
        log "creating cluster $CLUSTER"
        kind create cluster --name "$CLUSTER" --config "$ROOT/integration/kind/kind-config.yaml" --wait 120s
    fi
    # The agent runs without CAP_SYS_ADMIN, so it cannot mount bpffs itself.
    for node in $(kind get nodes --name "$CLUSTER"); do
        docker exec "$node" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf'
    done
}

install_nodemesh() {
    log "building and loading $IMAGE"
    docker build -t "$IMAGE" "$ROOT"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
    kubectl kustomize --load-restrictor=LoadRestrictionsNone "$ROOT/deploy" \
        | sed "s#ghcr.io/nodemesh/nodemesh:latest#$IMAGE#" \
        | kubectl apply -f -
    kubectl -n nodemesh-system rollout status ds/nodemesh-agent --timeout=300s
    kubectl -n nodemesh-system rollout status ds/nodemesh-envoy --timeout=300s
}

apply_canary() {
    log "applying examples/canary"
    kubectl apply -f "$ROOT/examples/canary/httpbin-deployment.yaml"
    kubectl apply -f "$ROOT/integration/kind/version-services.yaml"
    kubectl wait --for=condition=Available deploy/httpbin-v1 deploy/httpbin-v2 --timeout=300s
    kubectl apply -f "$ROOT/examples/canary/traffic-split.yaml"
    kubectl wait cec/httpbin-traffic-split --timeout=120s \
        --for=jsonpath='{.status.conditions[?(@.type=="Programmed")].status}'=True
}

# The node Envoy's upstream_rq_2xx counter of cluster $2 (a Service: namespace/name),
# read from that Envoy pod's own admin socket (deploy/envoy-daemonset.yaml).
served() {
    local uid
    uid=$(kubectl -n nodemesh-system get pod -l app.kubernetes.io/name=nodemesh-envoy \
        --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.uid}')
    docker exec "$1" curl -s --unix-socket "/var/run/nodemesh/envoy/$uid/admin.sock" \
        "http://envoy/stats?filter=upstream_rq_2xx" \
        | awk -v want="cluster.$2.upstream_rq_2xx:" '$1 == want { n += $2 } END { print n + 0 }'
}

main() {
    trap cleanup EXIT
    ensure_cluster
    install_nodemesh
    apply_canary
    kubectl run curl --image=curlimages/curl:8.10.1 -l app=curl --restart=Never -- sleep 3600
    kubectl wait --for=condition=Ready pod/curl --timeout=120s
    node=$(kubectl get pod curl -o jsonpath='{.spec.nodeName}')
    v1_before=$(served "$node" default/httpbin-v1)
    v2_before=$(served "$node" default/httpbin-v2)
    log "curl loop: $REQUESTS requests to http://httpbin/headers from pod curl on $node"
    ok=$(kubectl exec curl -- sh -c "for i in \$(seq 1 $REQUESTS); do curl -s -o /dev/null -w '%{http_code}\n' http://httpbin/headers; done" | grep -c '^200$' || true)
    v1=$(( $(served "$node" default/httpbin-v1) - v1_before ))
    v2=$(( $(served "$node" default/httpbin-v2) - v2_before ))
    log "200 OK: $ok/$REQUESTS; through Envoy: v1=$v1 v2=$v2"
    # Binomial tolerance: the v2 share within 4 standard deviations of V2_SHARE.
    awk -v ok="$ok" -v n="$REQUESTS" -v v1="$v1" -v v2="$v2" -v p="$V2_SHARE" 'BEGIN {
        total = v1 + v2
        if (ok != n) { print "FAIL: " n - ok " requests did not get 200"; exit 1 }
        if (total < n) { print "FAIL: only " total " of " n " requests went through the node Envoy"; exit 1 }
        share = v2 / total; tol = 4 * sqrt(p * (1 - p) / total)
        printf "v2 share %.3f, configured %.2f +- %.3f\n", share, p, tol
        if (share < p - tol || share > p + tol) { print "FAIL: split outside tolerance"; exit 1 }
        print "PASS"
    }'
}

main "$@"

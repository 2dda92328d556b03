#!/bin/sh
# The curl client of docker-compose.yml: finds the node Envoy's listener for
# the canary, sends the article's requests (Host: httpbin) and checks the v2
# share against Envoy's per-cluster counters. POSIX sh: curlimages has no bash.
set -eu

REQUESTS=${REQUESTS:-400}
V2_SHARE=${V2_SHARE:-0.10}
ADMIN=${ADMIN:-http://127.0.0.1:9901}

served() {
    curl -s "$ADMIN/stats?filter=upstream_rq_2xx" \
        | awk -v want="cluster.$1.upstream_rq_2xx:" '$1 == want { n += $2 } END { print n + 0 }'
}

# Wait for the control plane to program the canary's listener into Envoy.
listener=""
tries=0
while [ -z "$listener" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then
        echo "FAIL: Envoy never got the httpbin listener" >&2
        exit 1
    fi
    listener=$(curl -s "$ADMIN/listeners" 2>/dev/null | grep httpbin | sed -n 's/.*::\(.*\)$/\1/p' | head -n 1 || true)
    [ -n "$listener" ] || sleep 1
done
echo "httpbin listener at $listener"

v1_before=$(served default/httpbin-v1)
v2_before=$(served default/httpbin-v2)
ok=0
i=0
while [ "$i" -lt "$REQUESTS" ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: httpbin' "http://$listener/headers" || true)
    [ "$code" = 200 ] && ok=$((ok + 1))
    i=$((i + 1))
done
v1=$(( $(served default/httpbin-v1) - v1_before ))
v2=$(( $(served default/httpbin-v2) - v2_before ))
echo "200 OK: $ok/$REQUESTS; v1=$v1 v2=$v2"
awk -v ok="$ok" -v n="$REQUESTS" -v v1="$v1" -v v2="$v2" -v p="$V2_SHARE" 'BEGIN {
    total = v1 + v2
    if (ok != n || total == 0) { print "FAIL: " n - ok " failed requests"; exit 1 }
    share = v2 / total; tol = 4 * sqrt(p * (1 - p) / total)
    printf "v2 share %.3f, configured %.2f +- %.3f\n", share, p, tol
    if (share < p - tol || share > p + tol) { print "FAIL: split outside tolerance"; exit 1 }
    print "PASS"
}'

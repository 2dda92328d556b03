"""Sidecar Envoy configs for bench/datapath.py, their mTLS certificates, and
a one-line summary of what any Envoy listener runs.

The sidecars are configured as Istio's are on the data path, minus what
would make them do more work than the node Envoy: each listener has the
original_dst listener filter (Istio's 15001/15006 listeners do; so does the
listener nodemesh gives the node Envoy) and an HTTP connection manager with
the router alone, no access log. The node Envoy's config is not written
here: it comes over ADS from `nodemesh agent`, and the benchmark prints its
summary from Envoy's config_dump next to these.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


@dataclass(frozen=True)
class Certs:
    """PEM files: a mesh CA and one workload certificate per side."""

    ca: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class Hop:
    """One sidecar listener and the upstream it forwards to. `tls`: "" plain,
    "originate" (client side: mTLS to the upstream), "terminate" (server side:
    mTLS from the downstream, client certificate required)."""

    name: str
    port: int
    upstream_ip: str
    upstream_port: int
    tls: str = ""


def _common_tls(certs: Certs, side: str) -> dict[str, Any]:
    cert, key = (
        (certs.client_cert, certs.client_key)
        if side == "client"
        else (certs.server_cert, certs.server_key)
    )
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {"trusted_ca": {"filename": str(certs.ca)}},
    }


def _hcm(name: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name}}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def _listener(hop: Hop, certs: Certs | None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [_hcm(hop.name)]}
    if hop.tls == "terminate" and certs is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS + "DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": _common_tls(certs, "server"),
            },
        }
    return {
        "name": hop.name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": hop.port}},
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}
        ],
        "filter_chains": [chain],
    }


def _cluster(hop: Hop, certs: Certs | None) -> dict[str, Any]:
    address = {"socket_address": {"address": hop.upstream_ip, "port_value": hop.upstream_port}}
    cluster: dict[str, Any] = {
        "name": hop.name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": hop.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if hop.tls == "originate" and certs is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS + "UpstreamTlsContext",
                "common_tls_context": _common_tls(certs, "client"),
            },
        }
    return cluster


def sidecar_config(
    hops: list[Hop], certs: Certs | None = None, admin_port: int | None = None
) -> dict[str, Any]:
    """One listener per hop, each with its own cluster."""
    config: dict[str, Any] = {
        "static_resources": {
            "listeners": [_listener(h, certs) for h in hops],
            "clusters": [_cluster(h, certs) for h in hops],
        }
    }
    if admin_port is not None:
        config["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        }
    return config


def make_certs(directory: Path) -> Certs:
    """A self-signed mesh CA and two workload certificates (RSA 2048 with
    SPIFFE URI SANs, as Istio's CA issues by default), made at bench time."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: str, key: rsa.RSAPrivateKey, ca: tuple[x509.Name, rsa.RSAPrivateKey] | None
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject)])
        issuer, signer = ca if ca is not None else (name, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        )
        if ca is not None:
            uri = x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/bench/sa/{subject}")
            builder = builder.add_extension(x509.SubjectAlternativeName([uri]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
        crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return crt, pem

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = issue("mesh-ca", ca_key, None)
    ca_path, _ = write("ca", ca_cert, ca_key)
    paths: list[Path] = []
    for side in ("client", "server"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        paths += write(side, issue(side, key, (ca_cert.subject, ca_key)), key)
    return Certs(ca_path, *paths)


def _names(items: list[dict[str, Any]]) -> list[str]:
    return [str(i.get("name", "?")).removeprefix("envoy.filters.") for i in items]


def summarize_listener(listener: dict[str, Any]) -> str:
    """Listener filters, network filters, HTTP filters, TLS and access logs of
    one listener, from a config or a config_dump (both have this shape)."""
    parts = [f"listener filters {_names(listener.get('listener_filters', []))}"]
    for chain in listener.get("filter_chains", []):
        filters = chain.get("filters", [])
        parts.append(f"network {_names(filters)}")
        for f in filters:
            hcm = f.get("typed_config", {})
            if "http_filters" in hcm:
                parts.append(f"http {_names(hcm['http_filters'])}")
                parts.append(f"access logs {len(hcm.get('access_log', []))}")
        if "transport_socket" in chain:
            parts.append("TLS terminated")
    return "; ".join(parts)

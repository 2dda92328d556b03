"""TLS for the ADS/CSDS port: certificate and key checks at startup, and
which TLS stack serves the port.

grpcio has two server modes only: `require_client_auth=True` (a client
certificate is required and verified) and False, in which gRPC core does
not even ask for one (GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE), so
`--tls-client-ca` without `--require-client-cert` verified nothing. "Verify
a certificate if one is presented" is OpenSSL's SSL_VERIFY_PEER without
FAIL_IF_NO_PEER_CERT, which Python's `ssl` offers as CERT_OPTIONAL: in that
mode the port is served by `nodemesh.xds.server.tls_front` (Python's TLS,
then the bytes to gRPC over a private Unix socket), and a certificate that
does not chain to the client CA fails the handshake.
"""

from __future__ import annotations

import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from nodemesh.xds.server.errors import ServerConfigError

log = structlog.get_logger("nodemesh.xds.server.tls")

# Longest chain a client may present (leaf + intermediates) that is walked.
_MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server certificate and key (PEM); with `client_ca`, a client
    certificate that is presented must chain to it (the TLS handshake fails
    otherwise), and `require_client_cert` makes one mandatory (mTLS). A key file readable
    by group or others is logged; `strict_key_perms` refuses it."""

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False
    strict_key_perms: bool = False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ServerConfigError(f"TLS {what} {str(path)!r}: cannot read: {exc.strerror}") from exc


def _check_key_perms(tls: TlsSettings) -> None:
    mode = stat.S_IMODE(tls.private_key.stat().st_mode)
    if not mode & 0o077:
        return
    reason = f"TLS key {str(tls.private_key)!r}: mode {mode:04o} lets group or others read it"
    if tls.strict_key_perms:
        raise ServerConfigError(f"{reason} (--strict-key-perms; fix: chmod 600)")
    log.warning("tls_key_readable", path=str(tls.private_key), mode=f"{mode:04o}")


def _load_chain(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        hint = " (it holds a private key: are --tls-cert and --tls-key swapped?)"
        extra = hint if b"PRIVATE KEY-----" in data else ""
        raise ServerConfigError(f"TLS {what} {str(path)!r}: not a PEM certificate{extra}") from exc
    return certs


def _load_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        hint = " (it holds a certificate: are --tls-cert and --tls-key swapped?)"
        extra = hint if b"BEGIN CERTIFICATE" in data else ""
        raise ServerConfigError(
            f"TLS key {str(path)!r}: not an unencrypted PEM private key{extra}"
        ) from exc


def _same_public_key(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    pem = serialization.Encoding.PEM
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        key.public_key().public_bytes(pem, spki) == cert.public_key().public_bytes(pem, spki)
    )


def optional_client_cert(tls: TlsSettings) -> bool:
    """A client certificate is verified when presented, not required: the
    mode gRPC cannot serve itself (see the module docstring)."""
    return tls.client_ca is not None and not tls.require_client_cert


def front_context(tls: TlsSettings) -> ssl.SSLContext:
    """Python TLS for `optional_client_cert` (call `server_credentials`
    first: it checks the files and names what is wrong)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_chain, tls.private_key)
    context.load_verify_locations(cafile=tls.client_ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2"])  # gRPC clients insist on it
    return context


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """gRPC server credentials, after checking every file. Raises
    ServerConfigError naming the file and what is wrong with it."""
    if tls.require_client_cert and tls.client_ca is None:
        raise ServerConfigError(
            "TLS: require_client_cert needs client_ca (--require-client-cert needs --tls-client-ca)"
        )
    key_pem = _read(tls.private_key, "key")
    chain_pem = _read(tls.cert_chain, "certificate")
    ca_pem = _read(tls.client_ca, "client CA") if tls.client_ca is not None else None
    _check_key_perms(tls)
    chain = _load_chain(chain_pem, tls.cert_chain, "certificate")
    key = _load_key(key_pem, tls.private_key)
    if not _same_public_key(key, chain[0]):
        raise ServerConfigError(
            f"TLS key {str(tls.private_key)!r} does not belong to the certificate "
            f"{str(tls.cert_chain)!r} (public keys differ)"
        )
    if tls.client_ca is not None and ca_pem is not None:
        _load_chain(ca_pem, tls.client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [(key_pem, chain_pem)],
        root_certificates=ca_pem,
        require_client_auth=tls.require_client_cert,
    )

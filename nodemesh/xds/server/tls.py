"""TLS for the ADS/CSDS port: certificate and key checks at startup, and
verification of client certificates that gRPC itself does not verify.

grpcio's `ssl_server_credentials(root_certificates=ca,
require_client_auth=False)` asks for a client certificate and accepts any
(gRPC core's REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY; Python exposes no
"verify if presented" mode). So with `client_ca` set and certificates not
required, every RPC checks the peer's certificate itself
(`ClientCertVerifier`): no certificate is tolerated, a certificate that
does not chain to `client_ca` ends the RPC with UNAUTHENTICATED. The TLS
handshake itself still succeeds for such a client; nothing is served to it.
"""

from __future__ import annotations

import datetime
import inspect
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from nodemesh.xds.server.errors import ServerConfigError

log = structlog.get_logger("nodemesh.xds.server.tls")

# Longest chain a client may present (leaf + intermediates) that is walked.
_MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server certificate and key (PEM); with `client_ca`, a client
    certificate that is presented must chain to it, and
    `require_client_cert` makes one mandatory (mTLS). A key file readable
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


def server_credentials(tls: TlsSettings) -> tuple[grpc.ServerCredentials, list[x509.Certificate]]:
    """gRPC server credentials, and the client CA certificates that
    `ClientCertVerifier` checks against (empty without `client_ca`). Raises
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
    cas = _load_chain(ca_pem, tls.client_ca, "client CA") if tls.client_ca and ca_pem else []
    credentials = grpc.ssl_server_credentials(
        [(key_pem, chain_pem)],
        root_certificates=ca_pem,
        require_client_auth=tls.require_client_cert,
    )
    return credentials, cas


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain(
    presented: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    now: datetime.datetime | None = None,
) -> str | None:
    """None if `presented[0]` chains to one of `cas` (through the presented
    intermediates, each a CA, all within their validity); else why not."""
    now = now or datetime.datetime.now(datetime.UTC)
    if not presented:
        return "no certificate"
    cert = presented[0]
    pool = list(presented[1:_MAX_CHAIN])
    for _ in range(_MAX_CHAIN):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"certificate {cert.subject.rfc4514_string()!r} is outside its validity period"
        if any(_issued_by(cert, ca) for ca in cas):
            return None
        parent = next((c for c in pool if _is_ca(c) and _issued_by(cert, c)), None)
        if parent is None:
            break
        pool.remove(parent)
        cert = parent
    return f"certificate {presented[0].subject.rfc4514_string()!r} is not issued by the client CA"


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


class ClientCertVerifier(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends every RPC whose peer presented a client certificate that does
    not chain to the client CA (UNAUTHENTICATED); peers without one pass."""

    def __init__(self, cas: Sequence[x509.Certificate]) -> None:
        self._cas = list(cas)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._checked(behavior)})
        return handler

    def _checked(self, behavior: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def checked_gen(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await self._check(context)
                async for response in behavior(request, context):
                    yield response

            return checked_gen

        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._check(context)
            return await behavior(request, context)

        return checked

    async def _check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        reason = self.rejects(context.auth_context())
        if reason is not None:
            log.warning("xds_client_cert_rejected", peer=context.peer(), reason=reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {reason}")

    def rejects(self, auth: Mapping[str, Sequence[bytes]]) -> str | None:
        """Why the peer's certificate is refused, or None (also when it
        presented none)."""
        pem = b"".join(auth.get("x509_pem_cert", []))
        if not pem:
            return None
        chain_pem = b"".join(auth.get("x509_pem_cert_chain", [])) or pem
        try:
            presented = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            return f"cannot be parsed: {exc}"
        leaf = x509.load_pem_x509_certificate(pem)
        if presented[0] != leaf:
            presented.insert(0, leaf)
        return verify_chain(presented, self._cas)

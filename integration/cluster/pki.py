"""The test cluster's PKI, generated at start with `cryptography`.

One CA signs the API server's serving certificate and the client
certificates of the admin and the control-plane components (the identities
kubeadm would give them: RBAC then authorizes each as in a real cluster). A
separate RSA key signs ServiceAccount tokens. ECDSA P-256 everywhere else:
generating it takes milliseconds, where RSA-2048 takes tenths of a second.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _pem_key(key: PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class Pki:
    """Writes every file into `directory`; paths are attributes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._now = datetime.datetime.now(datetime.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = self._sign(
            _name("nodemesh-test-ca"), self._ca_key.public_key(), ca=True, issuer=None
        )
        self.ca = self._write("ca", self._ca_cert, self._ca_key)
        self.apiserver = self.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ips=["127.0.0.1", "10.96.0.1"],
        )
        self.admin = self.issue("admin", "kubernetes-admin", org="system:masters")
        self.controller_manager = self.issue("kcm", "system:kube-controller-manager")
        self.scheduler = self.issue("scheduler", "system:kube-scheduler")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = self.dir / "sa.key"
        self.sa_key.write_bytes(_pem_key(sa_key))
        self.sa_pub = self.dir / "sa.pub"
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        ca: bool = False,
        issuer: x509.Name | None,
        server: bool = False,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(minutes=5))
            .not_valid_after(self._now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._ca_key, hashes.SHA256())

    def issue(
        self,
        stem: str,
        cn: str,
        *,
        org: str | None = None,
        server: bool = False,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(
            _name(cn, org),
            key.public_key(),
            issuer=self._ca_cert.subject,
            server=server,
            dns=dns,
            ips=ips,
        )
        return self._write(stem, cert, key)

    def _write(self, stem: str, cert: x509.Certificate, key: PrivateKey) -> CertFiles:
        files = CertFiles(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(_pem_key(key))
        files.key.chmod(0o600)
        return files

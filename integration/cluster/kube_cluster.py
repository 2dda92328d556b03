"""A real Kubernetes control plane on loopback, from the binaries cluster_build.py made.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as
processes in their own sessions, on free loopback ports, with a PKI generated
at start (pki.py), RBAC authorization and an audit log. There are no kubelets:
kubelet_role.py registers Nodes and reports pod status as a kubelet would, so
the real scheduler binds pods and the real EndpointSlice controller writes
EndpointSlices. `stop()` ends every process and removes the temp dir.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from integration.cluster.pki import Pki
from integration.cluster.rest import ApiError, Rest

# Every request by a ServiceAccount of the namespace nodemesh is deployed to,
# at Metadata level (no bodies): enough to find each 403 and who got it,
# without logging the control plane's own chatter.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts:nodemesh-system"]},
        {"level": "None"},
    ],
}

SERVICE_CIDR = "10.96.0.0/16"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig(server: str, ca: Path, *, user: str, cert: Any = None, token: str = "") -> str:
    creds: dict[str, str] = {}
    if cert is not None:
        creds["client-certificate"] = str(cert.cert)
        creds["client-key"] = str(cert.key)
    if token:
        creds["token"] = token
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
    )


class Proc:
    """One component: its argv, its log file, its process group."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.popen = None

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


class KubeCluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="nodemesh-k8s-"))
        self.pki = Pki(self.dir / "pki")
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.audit_log = self.dir / "audit.log"
        self.admin_kubeconfig = self._write_kubeconfig("admin", self.pki.admin)
        self.procs: dict[str, Proc] = {}
        self.admin = Rest(self.server, self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key)
        self.kubelet: Any = None  # the KubeletRole the fixture attaches
        # (begin, ready) of every API server start: until /readyz says ok, a
        # starting kube-apiserver may refuse requests its RBAC would allow.
        self.starting: list[tuple[datetime.datetime, datetime.datetime]] = []

    def _write_kubeconfig(
        self, user: str, cert: Any = None, token: str = "", server: str = ""
    ) -> Path:
        path = self.dir / f"{user}.kubeconfig"
        path.write_text(
            kubeconfig(server or self.server, self.pki.ca.cert, user=user, cert=cert, token=token)
        )
        return path

    # -- lifecycle -------------------------------------------------------

    def start(self, controllers: bool = True) -> None:
        try:
            self._start_etcd()
            self.start_apiserver()
            if controllers:
                self._start_controllers()
        except BaseException:
            self.stop()
            raise

    def _add(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.dir / f"{name}.log")
        self.procs[name] = proc
        proc.start()
        return proc

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer}"
        self._add(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=test",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                # A throwaway test store: skip fsync so a shared 2-core CI box
                # spends its time on the API, not the disk.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: self.etcd("/health", None).get("health") == "true")

    def apiserver_argv(self, port: int) -> list[str]:
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        pki = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # The loopback advertise address is not a valid Endpoints address;
            # nothing in the tests reaches the API server through its Service.
            "--endpoint-reconciler-type=none",
            # Compaction is the tests' to trigger (compact_etcd), not a timer's.
            "--etcd-compaction-interval=0",
            "--profiling=false",
        ]

    def start_apiserver(self, port: int | None = None) -> None:
        port = port or self.apiserver_port
        name = "kube-apiserver" if port == self.apiserver_port else f"kube-apiserver-{port}"
        started = datetime.datetime.now(datetime.UTC)
        self._add(name, self.apiserver_argv(port))
        rest = Rest(
            f"https://127.0.0.1:{port}", self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key
        )
        self._wait(name, lambda: rest.request("GET", "/readyz", timeout=5) == "ok", timeout=120)
        self.starting.append((started, datetime.datetime.now(datetime.UTC)))

    def stop_apiserver(self, port: int | None = None) -> None:
        port = port or self.apiserver_port
        name = "kube-apiserver" if port == self.apiserver_port else f"kube-apiserver-{port}"
        self.procs.pop(name).stop()

    def _start_controllers(self) -> None:
        kcm = self._write_kubeconfig("kcm", self.pki.controller_manager)
        sched = self._write_kubeconfig("scheduler", self.pki.scheduler)
        self._add(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No kubelets post heartbeats: the node lifecycle controller
                # would taint every Node unreachable and evict its pods.
                "--controllers=*,-node-lifecycle-controller",
            ],
        )
        self._add(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )
        # The default ServiceAccount appears once the controllers run; pods
        # cannot be created in a namespace before it exists.
        self._wait(
            "kube-controller-manager",
            lambda: (
                self.admin.get("/api/v1/namespaces/default/serviceaccounts/default") is not None
            ),
            timeout=120,
        )

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs.pop(name).stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _wait(self, name: str, ready: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.procs[name].alive():
                raise RuntimeError(f"{name} exited at start:\n{self.procs[name].tail()}")
            try:
                if ready():
                    return
            except (OSError, ApiError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"{name} not ready after {timeout:g} s ({last}):\n{self.procs[name].tail()}"
        )

    # -- what tests use ----------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [
                str(self.bin / "kubectl"),
                f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def service_account_kubeconfig(self, namespace: str, name: str, server: str = "") -> Path:
        """A kubeconfig holding a token for namespace/name, issued by the
        TokenRequest API (what `kubectl create token` calls)."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, "--duration=2h"
        ).stdout.strip()
        return self._write_kubeconfig(f"sa-{namespace}-{name}", token=token, server=server)

    def etcd(self, path: str, body: Any) -> Any:
        """etcd's v3 JSON gateway (the etcdctl API over HTTP)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.etcd_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return json.loads(resp.read())

    def compact_etcd(self) -> int:
        """Compacts etcd to its current revision, as the API server's own
        compactor would (physical: waits until it is done). Returns it."""
        revision = int(
            self.etcd("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"][
                "revision"
            ]
        )
        self.etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def audit_mark(self) -> int:
        """The audit log's length now: pass it to audit_events as `since`."""
        return len(self._audit_lines())

    def _audit_lines(self) -> list[str]:
        if not self.audit_log.exists():
            return []
        return [line for line in self.audit_log.read_text().splitlines() if line.strip()]

    def audit_events(self, user: str = "", since: int = 0) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self._audit_lines()[since:]]
        return [e for e in events if not user or e.get("user", {}).get("username") == user]


REPO = Path(__file__).resolve().parents[2]


def apply_deploy(kube: KubeCluster) -> None:
    """`kubectl kustomize --load-restrictor=LoadRestrictionsNone deploy |
    kubectl apply -f -`, word for word deploy/README.md's install line, then
    wait for the CRDs to be served."""
    rendered = kube.kubectl(
        "kustomize", "--load-restrictor=LoadRestrictionsNone", str(REPO / "deploy")
    ).stdout
    kube.kubectl("apply", "-f", "-", stdin=rendered)
    wait_established(kube)


def wait_established(kube: KubeCluster, timeout: float = 60.0) -> None:
    """Every CRD Established. Not `kubectl wait --for=condition=Established`:
    it fails at once ("accessor error: <nil>") on a CRD created so recently
    that the server has not written its status yet, instead of waiting."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        crds = json.loads(kube.kubectl("get", "crd", "-o", "json").stdout)["items"]
        pending = [
            c["metadata"]["name"]
            for c in crds
            if not any(
                (k.get("type"), k.get("status")) == ("Established", "True")
                for k in (c.get("status") or {}).get("conditions") or []
            )
        ]
        if not pending:
            return
        time.sleep(0.2)
    raise AssertionError(f"CRDs not Established after {timeout:g} s: {pending}")

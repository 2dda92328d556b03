"""Loads the BPF objects, pins their maps and attaches their programs.

Everything the datapath needs survives the agent: maps are pinned under
`<pin_dir>/maps/` and every attachment is a BPF link pinned under
`<pin_dir>/links/`. A restarted agent reuses the pinned maps (libbpf checks
their layout) and swaps new program code into the existing links with
BPF_LINK_UPDATE, which is atomic, so connections never see a gap.

`nm_getsockopt` is the exception to "attached to the mesh cgroup": it is
linked to the proxy's cgroup only (link `nm_getsockopt_proxy`), because a
cgroup getsockopt program makes every getsockopt() below it take the
kernel's slower cgroup path. The program is pinned too (`<pin_dir>/progs/`),
so the agent can link it to a restarted Envoy's new cgroup (`attach_proxy`)
without loading anything. A fixed `--proxy-cgroup` has one link,
`nm_getsockopt_proxy`; followed Envoy pods have one each,
`nm_getsockopt_pod_<pod uid>`, because during a surge rollout two of them
run at once and both ask SO_ORIGINAL_DST.
"""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from nodemesh.ebpf import libbpf, pinned, preflight
from nodemesh.ebpf.build import build_objects
from nodemesh.ebpf.errors import LoadError, PrerequisiteMissing
from nodemesh.ebpf.mirrors import U8, U32, U64, Config

log = structlog.get_logger("nodemesh.ebpf.loader")

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/nodemesh")


def cgroup2_mount() -> Path:
    """Where cgroup2 is mounted: /sys/fs/cgroup on unified hosts, .../unified on hybrid."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


DEFAULT_CGROUP = cgroup2_mount() / "nodemesh"
EPERM = 1
ENOLINK = 67  # a cgroup link whose cgroup was released (auto-detached)
# Linked to the proxy's cgroup, not the mesh's (see the module docstring).
PROXY_PROGRAM = "nm_getsockopt"
PROXY_LINK = "nm_getsockopt_proxy"
# + the Envoy pod's uid: one link per followed pod (bpffs refuses dots in names)
POD_LINK_PREFIX = "nm_getsockopt_pod_"
# Where agents before the proxy link pinned nm_getsockopt's mesh-cgroup link.
LEGACY_MESH_LINK = "nm_getsockopt"
# Programs an older agent attached to the mesh cgroup that no object has
# any more; their links go once every current program is attached.
# nm_sock_release6: nm_sock_release serves both families now.
RETIRED_LINKS = ("nm_sock_release6",)
PORT_PROXY = 2  # NM_PORT_PROXY (bpf/lib/maps.h), as applier.PORT_PROXY
BPF_CGROUP_GETSOCKOPT = 21  # enum bpf_attach_type (linux/bpf.h)


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    """Where the datapath lives.

    `cgroup` is the mesh cgroup: every program but `nm_getsockopt` attaches
    there, and every process under it gets Service translation.
    `proxy_cgroup` is Envoy's (normally under `cgroup`, so its upstream
    connections are translated too): nothing below it is ever steered, and
    `nm_getsockopt` (SO_ORIGINAL_DST) is linked there. None leaves the proxy
    identity to the node agent, which follows the Envoy pod
    (`set_proxy_cgroup`, `attach_proxy`). `pod_cgroups` is where pod
    cgroups sit, one or two levels down (the kubelet's kubepods cgroup, or
    the test layout's directory); None means `cgroup`.
    """

    pin_dir: Path = DEFAULT_PIN_DIR
    cgroup: Path = DEFAULT_CGROUP
    proxy_cgroup: Path | None = None
    pod_cgroups: Path | None = None

    @property
    def maps_dir(self) -> Path:
        return self.pin_dir / "maps"

    @property
    def links_dir(self) -> Path:
        return self.pin_dir / "links"

    @property
    def progs_dir(self) -> Path:
        return self.pin_dir / "progs"


class _LinkInfo(ctypes.Structure):
    """struct bpf_link_info, cgroup variant (linux/bpf.h)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("tail", ctypes.c_uint8 * 36),
    )


def cgroup_id(path: Path) -> int:
    """A cgroup2 directory's inode number is the id bpf_get_current_cgroup_id() returns."""
    return os.stat(path).st_ino


@dataclass
class LoadReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def _privilege_hint(exc: LoadError, what: str) -> LoadError:
    return LoadError(
        f"{what} was refused ({exc}); the agent needs CAP_BPF and CAP_NET_ADMIN "
        "and write access to the pin directory"
    )


def _link_target(link_fd: int) -> int:
    info = _LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = libbpf.lib().bpf_obj_get_info_by_fd(link_fd, ctypes.byref(info), ctypes.byref(size))
    libbpf.check(ret, "read pinned link info")
    return int(info.cgroup_id)


def linked_cgroup(pin: Path) -> int | None:
    """The cgroup id a pinned cgroup link is attached to; None if no such pin."""
    lib = libbpf.lib()
    if not pin.exists():
        return None
    link_fd = libbpf.check(lib.bpf_obj_get(str(pin).encode()), f"open pinned link {pin}")
    try:
        return _link_target(link_fd)
    finally:
        os.close(link_fd)


def _attach(prog: int, name: str, target: Path, links_dir: Path, report: LoadReport) -> None:
    lib = libbpf.lib()
    prog_fd = lib.bpf_program__fd(prog)
    pin = links_dir / name
    if pin.exists():
        link_fd = libbpf.check(lib.bpf_obj_get(str(pin).encode()), f"open pinned link {pin}")
        try:
            if _link_target(link_fd) == cgroup_id(target):
                libbpf.check(lib.bpf_link_update(link_fd, prog_fd, None), f"update link {name}")
                report.updated.append(name)
                return
            # Attached elsewhere (the cgroup flag changed): drop it, attach anew.
            pin.unlink()
        finally:
            os.close(link_fd)
    cg_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attach_type = lib.bpf_program__expected_attach_type(prog)
        link_fd = libbpf.check(
            lib.bpf_link_create(prog_fd, cg_fd, attach_type, None), f"attach {name} to {target}"
        )
    finally:
        os.close(cg_fd)
    try:
        libbpf.check(lib.bpf_obj_pin(link_fd, str(pin).encode()), f"pin link {pin}")
    finally:
        os.close(link_fd)
    report.created.append(name)


def _maps_of(obj: int) -> list[tuple[int, str]]:
    lib = libbpf.lib()
    out: list[tuple[int, str]] = []
    m = lib.bpf_object__next_map(obj, None)
    while m:
        out.append((m, lib.bpf_map__name(m).decode()))
        m = lib.bpf_object__next_map(obj, m)
    return out


def _programs_of(obj: int) -> list[tuple[int, str]]:
    lib = libbpf.lib()
    out: list[tuple[int, str]] = []
    p = lib.bpf_object__next_program(obj, None)
    while p:
        out.append((p, lib.bpf_program__name(p).decode()))
        p = lib.bpf_object__next_program(obj, p)
    return out


def _load_object(path: Path, config: DatapathConfig, report: LoadReport) -> None:
    lib = libbpf.lib()
    with libbpf.captured_log() as lines:
        obj = lib.bpf_object__open_file(str(path).encode(), None)
    if not obj or lib.libbpf_get_error(obj):
        raise LoadError(f"libbpf could not open {path}: {' | '.join(lines[-3:])}")
    try:
        for m, name in _maps_of(obj):
            if not name.startswith("."):
                lib.bpf_map__set_pin_path(m, str(config.maps_dir / name).encode())
        with libbpf.captured_log() as lines:
            ret = lib.bpf_object__load(obj)
        if ret < 0:
            detail = "\n".join("\n".join(lines).splitlines()[-12:])
            raise LoadError(f"the kernel refused {path.name} (errno {-ret}):\n{detail}", -ret)
        for prog, name in _programs_of(obj):
            if name == PROXY_PROGRAM:
                _refresh_proxy(prog, config, report)
            else:
                _attach(prog, name, config.cgroup, config.links_dir, report)
    finally:
        lib.bpf_object__close(obj)


def _refresh_proxy(prog: int, config: DatapathConfig, report: LoadReport) -> None:
    """Pin the (new) getsockopt program; swap it into the pinned proxy link
    (re-adopted: no gap), and link it to a fixed `proxy_cgroup`. A followed
    proxy gets its link from `attach_proxy` once its cgroup is known."""
    lib = libbpf.lib()
    prog_fd = lib.bpf_program__fd(prog)
    pin = config.progs_dir / PROXY_PROGRAM
    if pin.exists():
        pin.unlink()  # only attach_proxy reads it, and after load()
    libbpf.check(lib.bpf_obj_pin(prog_fd, str(pin).encode()), f"pin program {pin}")
    for link in proxy_links(config):
        link_fd = libbpf.check(lib.bpf_obj_get(str(link).encode()), f"open pinned link {link}")
        try:
            libbpf.check(lib.bpf_link_update(link_fd, prog_fd, None), f"update link {link.name}")
            report.updated.append(link.name)
        except LoadError as exc:
            if exc.errno != ENOLINK:
                raise
            # The Envoy pod's cgroup went while no agent ran: nothing is
            # attached any more; the next proxy gets a link of its own.
            link.unlink()
            log.info("proxy_link_to_a_removed_cgroup_dropped", pin=str(link))
        finally:
            os.close(link_fd)
    if config.proxy_cgroup is not None and attach_proxy(config, config.proxy_cgroup):
        report.created.append(PROXY_LINK)


def proxy_links(config: DatapathConfig) -> list[Path]:
    """The pinned getsockopt links: the fixed proxy's and each followed pod's."""
    if not config.links_dir.is_dir():
        return []
    return sorted(
        p
        for p in config.links_dir.iterdir()
        if p.name == PROXY_LINK or p.name.startswith(POD_LINK_PREFIX)
    )


def attach_proxy(config: DatapathConfig, target: Path, name: str = PROXY_LINK) -> bool:
    """Link the pinned getsockopt program to the proxy's cgroup `target`,
    pinned as `links/<name>`.

    True if a link was made. The new link is pinned beside the old one and
    renamed over it, so an old link of that name (elsewhere) is detached
    only once the new one is live: there is no moment where the proxy is not
    answered SO_ORIGINAL_DST.
    """
    lib = libbpf.lib()
    pin = config.links_dir / name
    try:
        want = cgroup_id(target)
        if linked_cgroup(pin) == want:
            _drop_legacy(config)
            return False
        cg_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise LoadError(f"proxy cgroup {target}: {exc.strerror}", exc.errno or 0) from exc
    prog_pin = config.progs_dir / PROXY_PROGRAM
    try:
        prog_fd = libbpf.check(
            lib.bpf_obj_get(str(prog_pin).encode()), f"open pinned program {prog_pin}"
        )
        try:
            link_fd = libbpf.check(
                lib.bpf_link_create(prog_fd, cg_fd, BPF_CGROUP_GETSOCKOPT, None),
                f"attach {PROXY_PROGRAM} to {target}",
            )
        finally:
            os.close(prog_fd)
    finally:
        os.close(cg_fd)
    staged = config.links_dir / f"{name}_new"
    try:
        if staged.exists():
            staged.unlink()  # left by an agent that died here
        libbpf.check(lib.bpf_obj_pin(link_fd, str(staged).encode()), f"pin link {staged}")
    finally:
        os.close(link_fd)
    # The old link's pin was its last reference: replacing it detaches it.
    os.replace(staged, pin)
    _drop_legacy(config)
    log.info("getsockopt_linked_to_a_proxy_cgroup", cgroup=str(target), cgroup_id=want, pin=name)
    return True


def detach_proxy(config: DatapathConfig, name: str) -> bool:
    """Drop the pinned getsockopt link `name` (its last reference: detached)."""
    pin = config.links_dir / name
    if not pin.exists():
        return False
    pin.unlink()
    log.info("getsockopt_link_dropped", pin=name)
    return True


def _drop_legacy(config: DatapathConfig) -> None:
    """An older agent's nm_getsockopt link on the mesh cgroup, dropped only
    once the proxy link exists (so an upgrade leaves no gap either)."""
    legacy = config.links_dir / LEGACY_MESH_LINK
    if legacy.exists():
        legacy.unlink()
        log.info("getsockopt_link_on_the_mesh_cgroup_dropped", pin=str(legacy))


def load(config: DatapathConfig) -> LoadReport:
    """Make the datapath live (or refresh its programs), reusing what is pinned."""
    preflight.check_all(config.pin_dir, config.cgroup, config.proxy_cgroup)
    if config.pod_cgroups is not None:
        preflight.check_cgroup2(config.pod_cgroups, "pods")
    objects = build_objects()
    try:
        config.maps_dir.mkdir(parents=True, exist_ok=True)
        config.links_dir.mkdir(parents=True, exist_ok=True)
        config.progs_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise PrerequisiteMissing(
            f"cannot create {config.pin_dir} ({exc.strerror})",
            "run the agent as the owner of the bpffs mount, or as root",
        ) from exc
    _mark_proxy_ports(config)
    report = LoadReport()
    for path in objects.values():
        try:
            _load_object(path, config, report)
        except LoadError as exc:
            if exc.errno == EPERM:
                raise _privilege_hint(exc, f"loading {path.name}") from exc
            raise
    write_config(config)
    _drop_retired(config)
    log.info("datapath_loaded", created=report.created, updated=report.updated)
    return report


def _mark_proxy_ports(config: DatapathConfig) -> None:
    """Before new programs attach to maps an older agent pinned: mark the
    proxy ports of its L7 redirects as such (NM_PORT_PROXY), which sockops
    requires before it files a steered connection's original destination.
    The applier marks them too, but only at the next plan."""
    ports_pin, redir_pin = (
        config.maps_dir / pinned.PEER_PORTS.name,
        config.maps_dir / pinned.L7REDIR.name,
    )
    if not (ports_pin.exists() and redir_pin.exists()):
        return
    with pinned.open_map(config.maps_dir, pinned.L7REDIR) as redirs:
        proxy_ports = {socket.ntohs(v.as_tuple()[1]) for _, v in redirs.items().values()}
    with pinned.open_map(config.maps_dir, pinned.PEER_PORTS) as ports:
        for port in sorted(proxy_ports):
            found = ports.lookup(U32(port))
            have = found.as_tuple()[0] if found is not None else 0
            if not have & PORT_PROXY:
                ports.update(U32(port), U8(have | PORT_PROXY))


def _drop_retired(config: DatapathConfig) -> None:
    for name in RETIRED_LINKS:
        pin = config.links_dir / name
        if pin.exists():
            pin.unlink()  # its last reference: detached
            log.info("retired_program_detached", pin=str(pin))


def cleanup(config: DatapathConfig) -> list[str]:
    """Remove every link (which detaches its program) and map pin we made.

    Returns the paths removed. Programs and maps are freed by the kernel once
    their last pin and fd are gone.
    """
    removed: list[str] = []
    if not config.pin_dir.exists():
        return removed
    preflight.check_bpffs(config.pin_dir)
    for sub in (config.links_dir, config.progs_dir, config.maps_dir):
        if sub.is_dir():
            for pin in sorted(sub.iterdir()):
                pin.unlink()
                removed.append(str(pin))
    for directory in (config.links_dir, config.progs_dir, config.maps_dir, config.pin_dir):
        if directory.is_dir():
            # rmdir, not rmtree: anything we did not make stays, and says so.
            directory.rmdir()
            removed.append(str(directory))
    log.info("datapath_removed", removed=len(removed))
    return removed


def write_config(config: DatapathConfig) -> None:
    """Tell the programs where pods live and which cgroup is the proxy's.

    Without a fixed `proxy_cgroup` the pinned proxy id stays as it is: the
    agent that wrote it follows the Envoy pod, and zeroing it across an
    agent restart would let Envoy's own connects be steered back to it.
    """
    pods = cgroup_id(config.pod_cgroups or config.cgroup)
    with pinned.open_map(config.maps_dir, pinned.CONFIG) as cfg_map:
        current = cfg_map.lookup(U32(0))
        assert current is None or isinstance(current, Config)
        proxy = current.proxy_cgroup_id if current is not None else 0
        if config.proxy_cgroup is not None:
            proxy = cgroup_id(config.proxy_cgroup)
        cfg_map.update(U32(0), Config(proxy_cgroup_id=proxy, pods_cgroup_id=pods))


def proxy_set(maps_dir: Path) -> set[int]:
    """The cgroup ids in `nm_proxies_v1` (followed Envoy pods)."""
    with pinned.open_map(maps_dir, pinned.PROXIES) as m:
        return {int(k.as_tuple()[0]) for k in m.iter_keys()}


def add_proxy(maps_dir: Path, cgroup: int, flags: int = 0) -> bool:
    """Put a cgroup in the proxy set; True if it was not there."""
    with pinned.open_map(maps_dir, pinned.PROXIES) as m:
        if m.lookup(U64(cgroup)) is not None:
            return False
        m.update(U64(cgroup), U32(flags))
    return True


def remove_proxy(maps_dir: Path, cgroup: int) -> bool:
    with pinned.open_map(maps_dir, pinned.PROXIES) as m:
        return m.delete(U64(cgroup))


def set_proxy_cgroup(maps_dir: Path, proxy_cgroup_id: int) -> bool:
    """Point the programs at the proxy's (new) cgroup; True if it changed.

    Takes effect at the next connect(): the connect-side programs stay on
    the mesh cgroup. (The getsockopt link moves with `attach_proxy`.)"""
    with pinned.open_map(maps_dir, pinned.CONFIG) as cfg_map:
        current = cfg_map.lookup(U32(0))
        assert current is None or isinstance(current, Config)
        if current is not None and current.proxy_cgroup_id == proxy_cgroup_id:
            return False
        pods = current.pods_cgroup_id if current is not None else 0
        cfg_map.update(U32(0), Config(proxy_cgroup_id=proxy_cgroup_id, pods_cgroup_id=pods))
    return True

"""`nodemesh agent dump`: the plan and what is pinned, side by side."""

from __future__ import annotations

from pathlib import Path

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader, pinned
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.mirrors import ip6_str, ip_str, port_host

PROTO_NAMES = {6: "TCP", 17: "UDP"}


def _fe_label(fe: applier.Frontend, v6: bool = False) -> str:
    host = f"[{ip6_str(fe[0])}]" if v6 else ip_str(fe[0])
    return f"{host}:{port_host(fe[1])}/{PROTO_NAMES.get(fe[2], fe[2])}"


def _addrs(addrs: list[applier.Addr] | None, v6: bool = False) -> str:
    if addrs is None:
        return "-"
    fmt = (lambda a: f"[{ip6_str(a)}]") if v6 else ip_str
    return ",".join(f"{fmt(a)}:{port_host(p)}" for a, p in addrs) or "(no backends)"


def _pinned_backends(slots: dict[int, applier.SlotValue]) -> list[applier.Addr]:
    count = int(slots[0].count) if 0 in slots else 0
    return [applier.slot_addr(slots[i]) if i in slots else (0, 0) for i in range(1, count + 1)]


def _frontend_rows(
    desired: dict[applier.Frontend, list[applier.Addr]] | None,
    services: dict[applier.Frontend, dict[int, applier.SlotValue]],
    v6: bool,
) -> list[tuple[str, str, str, str]]:
    rows = []
    for fe in sorted(set(desired or {}) | set(services)):
        want = desired.get(fe) if desired is not None else None
        have = _pinned_backends(services[fe]) if fe in services else None
        rows.append((_fe_label(fe, v6), _addrs(want, v6), _addrs(have, v6), _state(want, have)))
    return rows


def _state(plan: list[applier.Addr] | None, have: list[applier.Addr] | None) -> str:
    if plan is None:
        return "STALE (not in plan)"
    if have is None:
        return "MISSING"
    return "in sync" if sorted(plan) == sorted(have) else "DIFFERS"


def render(
    plan: pb.DatapathPlan | None, maps_dir: Path, proxy_address: str | None, pods: PodCgroups
) -> str:
    empty = pb.DatapathPlan()
    desired = applier.compile_plan(plan or empty, proxy_address, pods)
    with pinned.open_map(maps_dir, pinned.SERVICES) as m:
        services = applier.read_services(m)
    with pinned.open_map(maps_dir, pinned.SERVICES6) as m:
        services6 = applier.read_services(m)
    with pinned.open_map(maps_dir, pinned.L7REDIR) as m:
        redirects = applier.read_redirects(m)
    version = plan.model_version if plan is not None else "(no plan given)"
    rows = [("FRONTEND", "PLAN", "PINNED", "STATE")]
    rows += _frontend_rows(desired.frontends if plan is not None else None, services, False)
    rows += _frontend_rows(desired.frontends6 if plan is not None else None, services6, True)
    rows.append(("L7 REDIRECT (cgroup)", "PLAN", "PINNED", "STATE"))
    for key in sorted(set(desired.redirects) | set(redirects)):
        want_r = desired.redirects.get(key) if plan is not None else None
        have_r = redirects.get(key)
        label = f"{_fe_label(key[1:])} cg={key[0] or 'any'}"
        rows.append(
            (
                label,
                _addrs([want_r] if want_r else None),
                _addrs([have_r] if have_r else None),
                _state([want_r] if want_r else None, [have_r] if have_r else None),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"plan model version: {version}"]
    if desired.unresolved_clients:
        lines.append(f"client pods not on this node: {', '.join(desired.unresolved_clients)}")
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        )
    lines += _proxy_lines(maps_dir)
    lines.append("map usage: " + ", ".join(_usage(maps_dir)))
    return "\n".join(lines)


def _proxy_lines(maps_dir: Path) -> list[str]:
    """The proxy set (`nm_proxies_v1`) beside the getsockopt link pins: each
    member should hold one link, and no link should outlive its member."""
    members = loader.proxy_set(maps_dir)
    links_dir = maps_dir.parent / "links"
    pins: dict[int, list[str]] = {}
    if links_dir.is_dir():
        for pin in sorted(links_dir.iterdir()):
            if pin.name == loader.PROXY_LINK or pin.name.startswith(loader.POD_LINK_PREFIX):
                pins.setdefault(loader.linked_cgroup(pin) or 0, []).append(pin.name)
    rows = [("PROXY SET (cgroup id)", "POD UID", "LINK PIN", "STATE")]
    for cgroup in sorted(members | set(pins)):
        names = pins.get(cgroup, [])
        uids = [n.removeprefix(loader.POD_LINK_PREFIX) for n in names]
        if cgroup not in members:
            state = "LINK ONLY (not in set)"
        else:
            state = "linked" if names else "NOT LINKED"
        rows.append((str(cgroup), ",".join(uids) or "-", ",".join(names) or "-", state))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    ]


def _usage(maps_dir: Path) -> list[str]:
    """Entries per pinned map against its capacity (LRU maps evict when full)."""
    out: list[str] = []
    # Arrays are always full.
    skip = (
        pinned.CONFIG,
        pinned.POLICY_CONFIG,
        pinned.POLICY_STATS,
        pinned.EVENTS_LOST,
        pinned.PEER_PORTS,
    )
    for spec in pinned.ALL_MAPS:
        if spec in skip:
            continue
        with pinned.open_map(maps_dir, spec) as m:
            used = sum(1 for _ in m.iter_keys())
        out.append(f"{spec.name} {used}/{spec.capacity}")
    return out

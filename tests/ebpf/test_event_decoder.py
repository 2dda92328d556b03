"""The fast event decoder (struct.unpack) agrees with the ctypes mirror,
which the BTF check holds to struct nm_event, field for field: IPv4 and
IPv6, every type, and the cache key ignores only time, cookie and sport."""

from __future__ import annotations

import socket

from nodemesh.ebpf.events import Decoder, Event, decode
from nodemesh.ebpf.mirrors import ip_be, port_be


def _v4(event: Event, field: str, address: str) -> None:
    getattr(event, field)[0] = ip_be(address)


def _v6(event: Event, field: str, address: str) -> None:
    packed = socket.inet_pton(socket.AF_INET6, address)
    for i in range(4):
        getattr(event, field)[i] = int.from_bytes(packed[4 * i : 4 * i + 4], "little")


def _event(family: int, **fields: int) -> Event:
    ev = Event(
        timestamp_ns=123456789,
        cgroup_id=77,
        cookie=99,
        sport_be=port_be(40000),
        dport_be=port_be(8080),
        orig_dport_be=port_be(80),
        family=family,
        proto=17,
        direction=2,
        verdict=2,
        src_identity=1234,
        dst_identity=5678,
        policy_id=3,
        reason=1,
        **fields,
    )
    put = _v6 if family == socket.AF_INET6 else _v4
    addrs = (
        ("fd00::5", "fd00::2:1", "fd00:96::a")
        if family == socket.AF_INET6
        else ("10.0.1.5", "10.0.2.1", "10.96.0.10")
    )
    for field, address in zip(("saddr_be", "daddr_be", "orig_daddr_be"), addrs, strict=True):
        put(ev, field, address)
    return ev


def test_the_decoder_agrees_with_the_mirror() -> None:
    decoder = Decoder()
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind in (1, 2, 3, 4):
            ev = _event(family, type=kind)
            assert decoder(bytes(ev)) == decode(ev)
    v4 = decoder(bytes(_event(socket.AF_INET, type=2)))
    assert (v4.saddr, v4.daddr, v4.orig_daddr) == ("10.0.1.5", "10.0.2.1", "10.96.0.10")
    assert (v4.sport, v4.dport, v4.orig_dport) == (40000, 8080, 80)


def test_the_key_ignores_time_cookie_and_source_port_only() -> None:
    decoder = Decoder()
    base = _event(socket.AF_INET, type=2)
    other = _event(socket.AF_INET, type=2)
    other.timestamp_ns, other.cookie, other.sport_be = 1, 2, port_be(3)
    assert decoder(bytes(base)).key == decoder(bytes(other)).key
    # The second is copied from the first but for those three fields.
    assert decoder(bytes(other)) == decode(other)
    assert decoder(bytes(other)).timestamp_ns == 1 and decoder(bytes(other)).sport == 3
    other.dport_be = port_be(8081)
    assert decoder(bytes(base)).key != decoder(bytes(other)).key


def test_addresses_of_the_two_families_never_mix() -> None:
    decoder = Decoder(max_addresses=2)
    four = decoder(bytes(_event(socket.AF_INET, type=2)))
    six = decoder(bytes(_event(socket.AF_INET6, type=2)))
    again = decoder(bytes(_event(socket.AF_INET, type=2)))
    assert four.saddr == again.saddr == "10.0.1.5" and six.saddr == "fd00::5"

"""The agent says when a closing Envoy's queued connections would be reset."""

from __future__ import annotations

from pathlib import Path

from nodemesh.node.proxy_follow import warn_without_migrate_req


def test_migrate_req_read_from_the_sysctl(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("1\n")
    assert warn_without_migrate_req(sysctl)
    sysctl.write_text("0\n")
    assert not warn_without_migrate_req(sysctl)
    # A kernel before 5.14 has no such sysctl: the same warning.
    assert not warn_without_migrate_req(tmp_path / "missing")

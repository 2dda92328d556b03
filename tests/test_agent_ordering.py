"""The node agent's make-before-break staging across Envoy and the kernel."""

from __future__ import annotations

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.agent import held_back


def redirect(name: str, port: int, listener: str = "l") -> pb.L7Redirect:
    return pb.L7Redirect(name=name, proxy_port=port, listener=listener, vip="10.96.0.10", port=80)


def plan(version: str, *redirects: pb.L7Redirect) -> pb.DatapathPlan:
    frontend = pb.ServiceFrontend(name="fe", vip="10.96.0.10", port=80, protocol=pb.TCP)
    return pb.DatapathPlan(model_version=version, frontends=[frontend], redirects=redirects)


def test_first_plan_holds_back_every_redirect_but_not_the_frontends() -> None:
    staged = held_back(plan("v1", redirect("a", 10001)), None)
    assert list(staged.redirects) == []
    assert [f.name for f in staged.frontends] == ["fe"]
    assert staged.model_version == "v1"


def test_unchanged_redirects_pass_and_removed_ones_go_at_once() -> None:
    applied = plan("v1", redirect("a", 10001), redirect("b", 10002))
    staged = held_back(plan("v2", redirect("a", 10001)), applied)
    assert [r.name for r in staged.redirects] == ["a"]


def test_a_redirect_moving_to_a_new_listener_keeps_its_old_entry_meanwhile() -> None:
    applied = plan("v1", redirect("a", 10001, "old"))
    staged = held_back(plan("v2", redirect("a", 10005, "new"), redirect("c", 10003)), applied)
    assert [(r.name, r.proxy_port, r.listener) for r in staged.redirects] == [("a", 10001, "old")]

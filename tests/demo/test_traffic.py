from nodemesh.cmd.demo.backends import BackendFleet, BackendSpec
from nodemesh.cmd.demo.traffic import judge_split, request_loop


def test_correct_split_is_accepted_and_a_wrong_one_is_not() -> None:
    configured = {"default/httpbin-v1": 90, "default/httpbin-v2": 10}
    good = judge_split(configured, {"default/httpbin-v1": 362, "default/httpbin-v2": 38})
    assert all(v.within for v in good)
    # 50/50 observed against a configured 90/10 is far outside any tolerance.
    bad = judge_split(configured, {"default/httpbin-v1": 200, "default/httpbin-v2": 200})
    assert not any(v.within for v in bad)


def test_a_cluster_never_configured_but_observed_is_flagged() -> None:
    verdicts = judge_split({"a": 100}, {"a": 95, "b": 5})
    assert {v.cluster: v.within for v in verdicts} == {"a": False, "b": False}


async def test_request_loop_counts_backends_and_failures() -> None:
    fleet = BackendFleet(
        [
            BackendSpec("default/httpbin-v1", "httpbin-v1-0", "v1", "127.0.0.1", 0),
            BackendSpec("default/httpbin-v2", "httpbin-v2-0", "v2", "127.0.0.1", 0),
        ]
    )
    async with fleet:
        port = fleet.bound[0]
        result = await request_loop(f"http://127.0.0.1:{port}/headers", "httpbin", 20)
        assert result.by_workload == {"v1": 20}
        assert not result.failures
        missing = await request_loop(f"http://127.0.0.1:{port}/nope", "httpbin", 3)
        assert len(missing.failures) == 3
    refused = await request_loop(f"http://127.0.0.1:{port}/headers", "httpbin", 2)
    assert len(refused.failures) == 2

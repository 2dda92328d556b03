"""`nodemesh demo --example canary-httproute`: the article's 90/10 canary as a
Gateway API HTTPRoute, through the real control plane and a real Envoy, judged
exactly as the CEC's split is (binomial tolerance on the configured weights),
then changed live to 50/50 without a failed request."""

from __future__ import annotations

import pytest

from nodemesh.cmd.demo.run import DemoOptions, example_dir, run_demo

pytestmark = pytest.mark.envoy


async def test_httproute_canary_splits_like_the_cec() -> None:
    lines: list[str] = []
    options = DemoOptions(source_dir=example_dir("canary-httproute"), weights=(50, 50))
    assert await run_demo(options, lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    # The route, not a CEC, is what Envoy serves: the GAMMA listener.
    assert "listener nodemesh/gamma/default/httpbin/80" in text
    configured = text.split("configured split:")[1].split("\n\n")[0]
    assert "default/httpbin-v1            90.0%" in configured
    assert "default/httpbin-v2            10.0%" in configured
    assert "live change to weights 50,50" in text and ", 0 failed" in text
    after = text.split("after the live change:")[1].split("\n\n")[0]
    assert "default/httpbin-v1            50.0%" in after
    assert text.rstrip().endswith("result: split within tolerance")

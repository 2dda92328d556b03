"""The datapath benchmark's statistics: paired per-round ratios, the added-
latency ratio and hey's report parsing (bench/datapath_measure.py)."""

from __future__ import annotations

from bench.datapath_measure import Cells, hook_delta, parse_hey

HEY_REPORT = """
Summary:
  Total:\t5.0041 secs
  Requests/sec:\t998.7

Latency distribution:
  10% in 0.0012 secs
  50% in 0.0025 secs
  99% in 0.0093 secs

Status code distribution:
  [200]\t4990 responses

Error distribution:
  [3]\tGet "http://10.96.0.10/": dial tcp 10.96.0.10:80: connect: connection refused
  [2]\tGet "http://10.96.0.10/": EOF
"""


def test_paired_ratios_are_taken_within_each_round() -> None:
    cells = Cells()
    for kernel, direct in ((10.0, 10.0), (6.0, 4.0), (9.0, 10.0)):
        cells.add("kernel", kernel)
        cells.add("direct", direct)
    # Per round: 1.0, 1.5, 0.9; the ratio of medians (9/10) would hide round 2.
    assert cells.paired("kernel", "direct", 1.05) == "1.00x [0.90-1.50], <= 1.05x in 2/3 rounds"
    assert cells.spread("kernel") == "9.00 [6.00-10.00]"


def test_added_latency_skips_rounds_where_the_reference_adds_nothing() -> None:
    cells = Cells()
    for node, sidecars, direct in ((3.0, 5.0, 1.0), (2.0, 1.0, 1.0), (4.0, 7.0, 1.0)):
        cells.add("node", node)
        cells.add("sidecars", sidecars)
        cells.add("direct", direct)
    assert cells.overhead("node", "sidecars", "direct") == "0.50x [0.50-0.50] over 2 rounds"
    flat = Cells()
    for name in ("node", "sidecars", "direct"):
        flat.add(name, 1.0)
    assert flat.overhead("node", "sidecars", "direct").startswith("n/a")


def test_hey_report_parsing_counts_every_error() -> None:
    got = parse_hey(HEY_REPORT)
    assert got["rps"] == 998.7
    assert round(got["p50"], 3) == 2.5 and round(got["p99"], 3) == 9.3
    assert got["ok"] == 4990
    assert got["errors"] == 5


def test_hook_delta_is_per_run_between_readings() -> None:
    before = {"nm_connect4": (100, 50_000), "nm_sockops": (10, 1_000)}
    after = {"nm_connect4": (300, 350_000), "nm_sockops": (10, 1_000), "nm_new": (4, 400)}
    delta = hook_delta(before, after)
    assert delta["nm_connect4"] == (200, 1500.0)
    assert delta["nm_sockops"] == (0, 0.0)
    assert delta["nm_new"] == (4, 100.0)

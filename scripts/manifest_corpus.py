"""The manifest corpus (issue 10): seeded mutations of examples/canary and the
test fixtures through the real file source, store, admission and translator;
every translation with a change admitted is judged by the real Envoy
(`--mode validate` on a static bootstrap, one run per distinct bootstrap).

    .venv/bin/python scripts/manifest_corpus.py [--cases 600] [--seed 1]

Prints: cases run, Envoy NACKs (admitted but rejected by Envoy), objects
silently dropped (gone from the model with no word in status), serving-config
outages (the canary's listener gone after a refused change), rejections not
naming object/field/reason. Exit status 1 when any of those is not zero.
To count against another tree: PYTHONPATH=<tree> .venv/bin/python ...
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

# Appended, not prepended: PYTHONPATH=<another tree> must win for `nodemesh`.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from nodemesh.xds.translate import encode
from tests.fuzz.manifest_fuzz import base_files, envoy_accepts, mutate, run_case


def _digest(outcome_translation: object) -> str:
    resources = getattr(outcome_translation, "resources", {})
    hasher = hashlib.sha256()
    for url in sorted(resources):
        for name, message in sorted(resources[url].items()):
            hasher.update(url.encode() + name.encode() + encode(message))
    return hasher.hexdigest()


def main() -> int:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=8, help="examples listed per finding")
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    judged: dict[str, tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="manifest-corpus-") as tmp:
        for case in range(args.cases):
            rng = random.Random(args.seed * 1_000_003 + case)
            files = copy.deepcopy(base_files())
            what = "; ".join(mutate(files, rng)[1] for _ in range(1 + (rng.random() < 0.3)))
            counts["cases"] += 1
            try:
                outcome = run_case(files, what)
            except Exception as exc:  # a crash is a finding, not the end of the run
                counts["crashes"] += 1
                examples.setdefault("crashes", []).append(f"{what} -> {exc!r}")
                continue
            for finding, items in (("dropped", outcome.dropped), ("unnamed", outcome.unnamed)):
                counts[finding] += len(items)
                examples.setdefault(finding, []).extend(f"{what} -> {i}" for i in items)
            if outcome.outage:
                counts["outages"] += 1
                examples.setdefault("outages", []).append(what)
            key = _digest(outcome.translation)
            if key not in judged:
                try:
                    judged[key] = envoy_accepts(outcome.translation, Path(tmp) / "b.json")
                except Exception as exc:
                    judged[key] = (False, f"could not build a bootstrap: {exc!r}")
                counts["envoy runs"] += 1
            accepted, said = judged[key]
            if not accepted:
                counts["nacks"] += 1
                examples.setdefault("nacks", []).append(f"{what} -> {said}")
    print(f"manifest corpus: seed {args.seed}")
    for label, key in (
        ("cases run", "cases"),
        ("distinct translations judged by Envoy", "envoy runs"),
        ("Envoy NACKs (admitted, rejected by Envoy)", "nacks"),
        ("objects silently dropped", "dropped"),
        ("serving-config outages", "outages"),
        ("rejections without object/field/reason", "unnamed"),
        ("crashes", "crashes"),
    ):
        print(f"  {label:45} {counts[key]}")
    for finding in ("nacks", "dropped", "outages", "unnamed", "crashes"):
        for line in examples.get(finding, [])[: args.show]:
            print(f"  [{finding}] {line}"[:400])
    bad = sum(counts[k] for k in ("nacks", "dropped", "outages", "unnamed", "crashes"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

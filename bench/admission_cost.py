"""What admitting one CEC costs: the static checks (PGV rules, Envoy's C++
rules) against running the real Envoy's `--mode validate` on the same
translation, side by side (issue 10: why Envoy itself is not run at admission).

    .venv/bin/python -m bench.admission_cost [--runs 8]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import Translator, validate_envoy_config
from tests.xds.translate.envoy_static import envoy_validate, static_bootstrap, write_bootstrap

CANARY = Path(__file__).resolve().parents[1] / "examples" / "canary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    directory = Path(tempfile.mkdtemp(prefix="admission-cost-"))
    try:
        for path in CANARY.glob("*.yaml"):
            shutil.copy(path, directory / path.name)
        store = MeshStore(validators=[validate_envoy_config])
        FileSource(directory, store).load()
        model = store.build()
        path = write_bootstrap(
            static_bootstrap(Translator().translate(model)), directory / "b.json"
        )
        envoy = []
        for _ in range(args.runs):
            started = time.perf_counter()
            if envoy_validate(path).returncode != 0:
                raise SystemExit("Envoy rejected the canary")
            envoy.append(time.perf_counter() - started)
        static = []
        for _ in range(args.runs * 25):
            started = time.perf_counter()
            validate_envoy_config(model.envoy_configs[0])
            static.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(directory)
    print(f"{'admission check of the canary CEC':40} {'median':>10} {'min':>10}")
    for label, times in (("static checks (today)", static), ("envoy --mode validate", envoy)):
        print(f"{label:40} {statistics.median(times) * 1000:8.2f}ms {min(times) * 1000:8.2f}ms")


if __name__ == "__main__":
    main()

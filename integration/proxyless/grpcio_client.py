"""grpcio's xDS client, driven by nodemesh's proxyless tests (a script, run
as its own process: the xDS bootstrap is read once per process).

    GRPC_XDS_BOOTSTRAP=bootstrap.json python grpcio_client.py xds:///svc.ns.svc.cluster.local:80

Reads one number per line on stdin, makes that many calls on one channel,
and prints one JSON line per batch: replies counted by backend name, error
messages counted by status (the same protocol as grpcgo's client).
"""

from __future__ import annotations

import json
import sys
import time

import grpc

METHOD = "/nodemesh.test.Echo/Who"


def main() -> int:
    target, timeout = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    if not target.startswith("xds:///"):
        # Anything else would go to DNS, which the tests must never reach.
        print(f"grpcio_client: {target!r} is not an xds:/// target", file=sys.stderr)
        return 2
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        for line in sys.stdin:
            counts: dict[str, int] = {}
            errors: dict[str, int] = {}
            started = time.monotonic()
            for _ in range(int(line)):
                try:
                    reply = call(b"hi", timeout=timeout)
                except grpc.RpcError as exc:
                    key = f"{exc.code().name}: {exc.details()}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
                name = reply.decode()
                counts[name] = counts.get(name, 0) + 1
            seconds = time.monotonic() - started
            print(json.dumps({"counts": counts, "errors": errors, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

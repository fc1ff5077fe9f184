"""Benchmark: specs generated per second, beside the cost of only serialising them.

Run: ``python -m tests.benchmarks.bench_generate [--seconds S]``. The mix is every request in
``examples/`` (process-isolated, Hyper-V, LCOW, credential spec with secrets and configs,
devices, shared network), round-robin. The floor is ``encode_spec`` alone over the specs the
same requests produce: generation + serialisation against serialisation alone. Not a
pass/fail test; it prints its figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from controller.generate import encode_spec, generate
from controller.models import Request, decode_request

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load() -> list[Request]:
    return [decode_request(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))]


def _rate(fn: object, items: list[object], seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over ``items`` round-robin, for about ``seconds``."""
    call = fn  # the callable under test
    assert callable(call)
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for item in items:
            call(item)
        n += len(items)
    elapsed = time.perf_counter() - start
    return n / elapsed, n


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    requests = _load()
    specs = [generate(r).spec for r in requests]
    size = sum(len(encode_spec(s)) for s in specs) / len(specs)

    def full(r: object) -> None:
        assert isinstance(r, Request)
        encode_spec(generate(r).spec)

    def floor(s: object) -> None:
        encode_spec(s)  # type: ignore[arg-type]

    def with_decode(raw: object) -> None:
        assert isinstance(raw, bytes)
        encode_spec(generate(decode_request(raw)).spec)

    raws: list[object] = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.json"))]
    # Warm up both paths once so neither pays first-call costs in the measurement.
    _rate(full, list(requests), 0.2)
    _rate(floor, list(specs), 0.2)
    full_rate, full_n = _rate(full, list(requests), args.seconds)
    floor_rate, floor_n = _rate(floor, list(specs), args.seconds)
    decode_rate, decode_n = _rate(with_decode, raws, args.seconds)

    print(f"requests in the mix: {len(requests)} (mean config.json {size:.0f} bytes)")
    print(f"generate + serialise:          {full_rate:12,.0f} specs/s  ({full_n} specs)")
    print(f"serialise only (floor):        {floor_rate:12,.0f} specs/s  ({floor_n} specs)")
    print(f"decode + generate + serialise: {decode_rate:12,.0f} specs/s  ({decode_n} specs)")
    print(f"ratio generate+serialise / serialise-only time: {floor_rate / full_rate:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: specs generated per second, beside the cost of only serialising them.

Run: ``python -m tests.benchmarks.bench_generate [--seconds S] [--repeat N]``. The mix is every
request in ``examples/`` (process-isolated, Hyper-V, LCOW, credential spec with secrets and
configs, devices, shared network), round-robin. The floor is ``encode_spec`` alone over the
specs the same requests produce: generation + serialisation against serialisation alone.

Each figure is the best of ``--repeat`` measurements (the least disturbed by other work on the
machine), with the garbage collector enabled as in production. After the mix, every request
kind is measured on its own, for a shorter time, to show where the cost is. Not a pass/fail
test; it prints its figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from controller.generate import encode_spec, generate
from controller.models import Request, decode_request

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T = TypeVar("T")


def _load() -> list[tuple[str, bytes, Request]]:
    """Every example request: its name, its raw bytes and its decoded form."""
    out = []
    for p in sorted(EXAMPLES.glob("*.json")):
        raw = p.read_bytes()
        out.append((p.stem, raw, decode_request(raw)))
    return out


def _rate(call: Callable[[T], object], items: Sequence[T], seconds: float) -> float:
    """Calls per second of ``call`` over ``items`` round-robin, for about ``seconds``."""
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for item in items:
            call(item)
        n += len(items)
    return n / (time.perf_counter() - start)


def _best_rate(
    call: Callable[[T], object], items: Sequence[T], seconds: float, repeat: int
) -> float:
    """The best of ``repeat`` measurements by :func:`_rate`, after a short warm-up."""
    _rate(call, items, min(0.2, seconds))  # first-call costs stay out of the figures
    return max(_rate(call, items, seconds) for _ in range(repeat))


def _full(request: Request) -> None:
    encode_spec(generate(request).spec)


def _with_decode(raw: bytes) -> None:
    encode_spec(generate(decode_request(raw)).spec)


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements, best one kept")
    args = parser.parse_args()
    seconds, repeat = args.seconds, args.repeat

    examples = _load()
    names = [name for name, _, _ in examples]
    raws = [raw for _, raw, _ in examples]
    requests = [request for _, _, request in examples]
    specs = [generate(r).spec for r in requests]
    size = sum(len(encode_spec(s)) for s in specs) / len(specs)

    full_rate = _best_rate(_full, requests, seconds, repeat)
    floor_rate = _best_rate(encode_spec, specs, seconds, repeat)
    decode_rate = _best_rate(_with_decode, raws, seconds, repeat)

    print(f"requests in the mix: {len(requests)} (mean config.json {size:.0f} bytes)")
    print(f"best of {repeat} measurements of {seconds:g} s each")
    for label, rate in (
        ("generate + serialise:", full_rate),
        ("serialise only (floor):", floor_rate),
        ("decode + generate + serialise:", decode_rate),
    ):
        print(f"{label:30s} {rate:12,.0f} specs/s  ({1e6 / rate:6.2f} µs each)")
    print(f"ratio generate+serialise / serialise-only time: {floor_rate / full_rate:.2f}x")

    # Per request kind: a quarter of the time each, so the whole run stays short.
    kind_seconds = max(seconds / 4, 0.1)
    print()
    print(f"per request kind (best of {repeat} x {kind_seconds:g} s):")
    print(f"{'':20s} {'generate+serialise':>18s} {'serialise only':>15s} {'ratio':>7s}")
    for name, request, spec in zip(names, requests, specs, strict=True):
        kind_full = _best_rate(_full, [request], kind_seconds, repeat)
        kind_floor = _best_rate(encode_spec, [spec], kind_seconds, repeat)
        print(
            f"{name:20s} {1e6 / kind_full:15.2f} µs {1e6 / kind_floor:12.2f} µs "
            f"{kind_floor / kind_full:6.1f}x"
        )


if __name__ == "__main__":
    main()

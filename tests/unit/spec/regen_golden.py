"""Rewrite the expected files of golden cases from the generator's current output.

Usage: ``python -m tests.unit.spec.regen_golden [case name …]`` (all cases when none given).
Every rewritten file must then be read against controller/RULES.md before it is committed: a golden
file that only records today's output proves nothing.
"""

from __future__ import annotations

import sys

from tests.unit.spec.golden import OUTPUT_FILES, actual_outputs, load_cases


def main(names: list[str]) -> int:
    """Regenerate the named cases (or all); print each file that changed."""
    cases = [c for c in load_cases() if not names or c.name in names]
    for case in cases:
        outputs = actual_outputs(case)
        for name in OUTPUT_FILES:
            path = case.path / name
            old = path.read_bytes() if path.is_file() else None
            new = outputs.get(name)
            if new is None:
                if old is not None:
                    path.unlink()
                    print(f"removed {case.name}/{name}")
            elif new != old:
                path.write_bytes(new)
                print(f"wrote   {case.name}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

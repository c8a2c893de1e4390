"""Re-record the hashes tests/test_golden.py pins (tests/golden_cases.py says which scenarios). Run only when
a change of results is deliberate, and say why in the commit."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.golden_cases import CASES, RECORD, run_case  # noqa: E402


def main() -> int:
    record = {}
    for name in CASES:
        t0 = time.perf_counter()
        record[name] = run_case(name)
        print(f"{name}: {record[name]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(RECORD)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One line per fault, collected for the end of the run.

Every fault test calls :func:`report_fault` with its figures; the line goes to stdout,
to the file named by ``FLOW_FAULT_REPORT`` (when set), and to the table printed at the
end of the pytest run (tests/faults/conftest.py), so CI logs show every figure.
"""

from __future__ import annotations

import os

LINES: list[str] = []


def report_fault(
    name: str, metered: int, arrived: int, lost: int, doubled: int, *, arrived_as: str = "in_ledger"
) -> str:
    line = f"FAULT {name}: metered={metered} {arrived_as}={arrived} lost={lost} doubled={doubled}"
    LINES.append(line)
    print(line)
    target = os.environ.get("FLOW_FAULT_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return line

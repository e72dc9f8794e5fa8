"""Run the hostile-input suite and write docs/reliability.md from what it reports.

Every test marked ``hostile(kind, expect)`` (tests/test_hostile.py, tests/test_activations.py)
is one case, or, for a property test, as many cases as the examples it ran (it records
them as the ``cases`` property). The table groups the cases by kind and says what each
must get and how many did.

    python scripts/reliability_table.py          # runs the suite, writes docs/reliability.md
    python scripts/reliability_table.py --check  # exits 1 if docs/reliability.md is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ["tests/test_hostile.py", "tests/test_activations.py"]
OUT = ROOT / "docs" / "reliability.md"


class Collect:
    """A pytest plugin: each hostile test's kind, expectation, cases and outcome."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[str, str]] = {}
        self.rows: list[tuple[str, str, int, bool]] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker("hostile")
            if mark is not None:
                self.marks[item.nodeid] = (mark.args[0], mark.args[1])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.marks:
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            cases = int(dict(report.user_properties).get("cases", 1))
            self.rows.append((*self.marks[report.nodeid], cases, report.passed))


def table(rows: list[tuple[str, str, int, bool]]) -> str:
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for kind, expect, cases, passed in rows:
        groups[(kind, expect)][0] += cases
        groups[(kind, expect)][1] += cases if passed else 0
    total, ok = sum(g[0] for g in groups.values()), sum(g[1] for g in groups.values())
    lines = [
        "# Reliability: bad inputs and faults",
        "",
        "What causalmad does with inputs files, detector folders and command lines that are wrong, and with",
        "faults while it works. Each case ends in a clear error (exit status 2, one line on stderr "
        "naming the",
        "file and the line, row or field, nothing written) or in a correct result; none gives a traceback or",
        "loses data. The cases are the tests marked `hostile` in `tests/test_hostile.py` and",
        "`tests/test_activations.py`: the fixed corpus of malformed files in `tests/data/bad/` (written by",
        "`scripts/make_bad_inputs.py`), fault injection, and property tests (`hypothesis`, derandomized),",
        "whose every example counts as a case.",
        "",
        "This table is written by the suite's own run:",
        "",
        "```",
        "python scripts/reliability_table.py",
        "```",
        "",
        "| class | cases | what each gets | as expected |",
        "|---|---:|---|---:|",
    ]
    for (kind, expect), (n, passed) in sorted(groups.items()):
        lines.append(f"| {kind} | {n} | {expect} | {passed} |")
    lines += [f"| **all** | **{total}** | | **{ok}** |", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="compare with docs/reliability.md instead of writing it"
    )
    args = ap.parse_args()
    os.chdir(ROOT)
    plugin = Collect()
    code = pytest.main([*SUITE, "-q", "-p", "no:cacheprovider", "-p", "no:warnings"], plugins=[plugin])
    if code not in (0, 1):
        print(f"the suite did not run (pytest exit {code})", file=sys.stderr)
        return 2
    text = table(plugin.rows)
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT} is {'up to date' if same else 'out of date: run python scripts/reliability_table.py'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT}: {sum(r[2] for r in plugin.rows)} cases")
    return int(code != 0)


if __name__ == "__main__":
    sys.exit(main())

"""Write ``constraints.txt``: the exact version of every package that ``causalmad[dev,tracr,ray]``
needs, directly or through another package, as installed in this environment now.

    python scripts/pin_constraints.py            # after `pip install -e ".[dev,tracr,ray]"`, on purpose

The package itself keeps ranges (``pyproject.toml``); CI and the README's commands install
with ``-c constraints.txt``, so a task model trained on a fresh machine is trained with the
versions the documented figures were measured with, not with whatever pip resolves that day.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("dev", "tracr", "ray")


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """Canonical name -> installed version of every requirement reachable from ``root[extras]``."""
    found: dict[str, str] = {}
    todo = [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            ok = [
                e
                for e in ("", *wanted)
                if req.marker is None or req.marker.evaluate({**default_environment(), "extra": e})
            ]
            if not ok:
                continue
            key = re.sub(r"[-_.]+", "-", req.name).lower()
            if key == root or (key in found and not req.extras):
                continue
            try:
                # without a local label (2.13.0+cpu -> 2.13.0): ==2.13.0 matches every build of it
                found[key] = metadata.version(req.name).split("+")[0]
            except metadata.PackageNotFoundError:
                continue
            todo.append((req.name, set(req.extras)))
    return found


def main() -> int:
    pins = closure("causalmad", EXTRAS)
    lines = [
        "# Exact versions for CI and the README's commands (pip install -c constraints.txt ...).",
        "# Written by scripts/pin_constraints.py from an environment that passed the tests; "
        "update on purpose.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    (ROOT / "constraints.txt").write_text("\n".join(lines) + "\n")
    print(f"constraints.txt: {len(pins)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

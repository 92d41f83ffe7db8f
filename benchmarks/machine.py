"""What every benchmark shares: the machine it ran on, and writing its section of RESULTS.md."""
from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["cpu_name", "write_section"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the ``heading`` (``## ...``) section of the results file ``path`` by ``section``, or append it;
    other sections stay as they are. Written to a temporary file, then renamed."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = section.rstrip("\n") + "\n"
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    tmp.replace(path)

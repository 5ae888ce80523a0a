"""`python -m papers.feddg run|report|runs|check` (see common/cli.py)."""
import sys
from pathlib import Path

from common.cli import main
from papers.feddg.config import PAPER_ID, FedDGConfig
from papers.feddg.method import train


def report(results: Path, out: Path, scale: str) -> None:
    """figures.report, imported when a report is built (seaborn's import costs every run job a second)."""
    from papers.feddg.figures import report as build

    build(results, out, scale)


# what common.cli.main runs (tests/test_config.py and benchmarks/paper_scale.py read it too)
ENTRY = (PAPER_ID, FedDGConfig, train, report)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

"""`python -m papers.perfedavg run|report|runs|check` (see common/cli.py)."""
import sys

from common.cli import main
from papers.perfedavg.config import PerFedAvgConfig
from papers.perfedavg.figures import PAPER_ID, report
from papers.perfedavg.method import train

# what common.cli.main runs (benchmarks/paper_scale.py reads it too)
ENTRY = (PAPER_ID, PerFedAvgConfig, train, report)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

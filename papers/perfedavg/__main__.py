"""`python -m papers.perfedavg run|report|runs|check` (see common/cli.py)."""
import sys

from common.cli import main
from papers.perfedavg.config import PerFedAvgConfig
from papers.perfedavg.method import train

# what common.cli.main runs (benchmarks/paper_scale.py reads it too)
ENTRY = ("perfedavg", PerFedAvgConfig, train, "papers.perfedavg.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

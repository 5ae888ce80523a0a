"""`python -m papers.gradient_dropping run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.gradient_dropping.config import GradDropConfig
from papers.gradient_dropping.figures import PAPER_ID, report
from papers.gradient_dropping.method import train

ENTRY = (PAPER_ID, GradDropConfig, train, report)  # what common.cli.main runs (benchmarks/paper_scale.py reads it too)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

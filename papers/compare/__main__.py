"""`python -m papers.compare run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.compare.figures import PAPER_ID, report
from papers.compare.method import config_class, run

ENTRY = (PAPER_ID, config_class, run, report)  # what common.cli.main runs (benchmarks/paper_scale.py reads it too)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

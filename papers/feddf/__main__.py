"""`python -m papers.feddf run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.feddf.config import FedDFConfig
from papers.feddf.figures import PAPER_ID, report
from papers.feddf.run import run

ENTRY = (PAPER_ID, FedDFConfig, run, report)  # what common.cli.main runs (benchmarks/paper_scale.py reads it too)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

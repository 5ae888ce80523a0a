"""`python -m papers.fedgen run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.fedgen.config import FedGenConfig
from papers.fedgen.figures import PAPER_ID, report
from papers.fedgen.method import run

ENTRY = (PAPER_ID, FedGenConfig, run, report)  # what common.cli.main runs (benchmarks/paper_scale.py reads it too)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

"""`python -m papers.fedntd run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.fedntd.config import FedNTDConfig
from papers.fedntd.figures import PAPER_ID, report
from papers.fedntd.method import train

ENTRY = (PAPER_ID, FedNTDConfig, train, report)  # what common.cli.main runs (benchmarks/paper_scale.py reads it too)

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

"""`python -m papers.fedntd run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.fedntd.config import FedNTDConfig
from papers.fedntd.method import train

# what common.cli.main runs (benchmarks/paper_scale.py reads it too); the report module is imported only
# to build a report, so a run never loads it
ENTRY = ("fedntd", FedNTDConfig, train, "papers.fedntd.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

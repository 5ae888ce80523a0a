"""`python -m papers.fedntd run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.fedntd.config import FedNTDConfig
from papers.fedntd.figures import PAPER_ID, report
from papers.fedntd.method import train

sys.exit(main(PAPER_ID, FedNTDConfig, train, report))

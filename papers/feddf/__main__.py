"""`python -m papers.feddf run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.feddf.config import FedDFConfig
from papers.feddf.figures import PAPER_ID, report
from papers.feddf.run import run

sys.exit(main(PAPER_ID, FedDFConfig, run, report))

"""`python -m papers.compare run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.compare.figures import PAPER_ID, report
from papers.compare.method import config_class, run

sys.exit(main(PAPER_ID, config_class, run, report))

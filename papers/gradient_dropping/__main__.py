"""`python -m papers.gradient_dropping run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.gradient_dropping.config import GradDropConfig
from papers.gradient_dropping.figures import PAPER_ID, report
from papers.gradient_dropping.method import train

sys.exit(main(PAPER_ID, GradDropConfig, train, report))

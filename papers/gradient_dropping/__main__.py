"""`python -m papers.gradient_dropping run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.gradient_dropping.config import GradDropConfig
from papers.gradient_dropping.method import train

# what common.cli.main runs (benchmarks/paper_scale.py reads it too); the report module is imported only
# to build a report, so a run never loads it
ENTRY = ("gradient_dropping", GradDropConfig, train, "papers.gradient_dropping.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

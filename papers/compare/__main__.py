"""`python -m papers.compare run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.compare.method import config_class, run

# what common.cli.main runs (benchmarks/paper_scale.py reads it too); the report module is imported only
# to build a report, so a run never loads it
ENTRY = ("compare", config_class, run, "papers.compare.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

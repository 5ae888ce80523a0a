"""`python -m papers.feddf run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.feddf.config import FedDFConfig
from papers.feddf.run import run

# what common.cli.main runs (benchmarks/paper_scale.py reads it too); the report module is imported only
# to build a report, so a run never loads it
ENTRY = ("feddf", FedDFConfig, run, "papers.feddf.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

"""`python -m papers.fedgen run|report|runs` (see common/cli.py)."""
import sys

from common.cli import main
from papers.fedgen.config import FedGenConfig
from papers.fedgen.method import run

# what common.cli.main runs (benchmarks/paper_scale.py reads it too); the report module is imported only
# to build a report, so a run never loads it
ENTRY = ("fedgen", FedGenConfig, run, "papers.fedgen.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

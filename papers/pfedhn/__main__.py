"""`python -m papers.pfedhn run|report|runs|check` (see common/cli.py)."""
import sys

from common.cli import main
from papers.pfedhn.config import PFedHNConfig
from papers.pfedhn.method import train

# what common.cli.main runs (benchmarks/paper_scale.py reads it too)
ENTRY = ("pfedhn", PFedHNConfig, train, "papers.pfedhn.figures")

if __name__ == "__main__":
    sys.exit(main(*ENTRY))

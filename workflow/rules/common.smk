# Loads and validates the workflow config, makes the repository importable for every job, and lists the
# papers (folders of papers/ with an experiments.yaml) and their runs.
import os
import sys

from snakemake.utils import validate

validate(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))

REPO = workflow.basedir
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
if config.get("data_root") and not os.environ.get("REPLICATIONS_DATA"):
    os.environ["REPLICATIONS_DATA"] = os.path.join(REPO, os.path.expanduser(config["data_root"]))

from common import experiments  # noqa: E402

SCALE = config["scale"]
SEEDS = config.get("seeds") or None
PY = sys.executable
PAPERS = sorted(
    p for p in os.listdir(os.path.join(REPO, "papers"))
    if os.path.exists(os.path.join(REPO, "papers", p, "experiments.yaml"))
)


def run_records(paper):
    """The run records a paper's report needs at the configured scale (and seeds override)."""
    return [f"results/{SCALE}/{paper}/{run}.json" for run in experiments.run_ids(paper, SCALE, SEEDS)]

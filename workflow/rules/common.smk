# Loads and validates the workflow config and checks every requested paper's settings, claims and data before
# any job runs (one line and exit 2 on a user error); the functions live in common/workflow.py.
import os
import sys

from snakemake.utils import validate

if "seeds" in config:
    config["seeds"] = wf.parse_seeds(config["seeds"])
wf.check_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
validate(config, "../schemas/config.schema.yaml")  # fills the defaults
wf.setup_environment(config, workflow.basedir)

SCALE = config["scale"]
SEEDS = config.get("seeds") or None
PAPERS = wf.papers()
if not any(flag in sys.argv for flag in ("--lint", "--unlock", "--report")):
    TARGETS = wf.target_papers(sys.argv[1:], SCALE)
    # the device is checked here only when the jobs run here (a cluster's nodes may have the GPU this host lacks)
    wf.check_before_running(TARGETS, SCALE, config["device"] if workflow.local_exec else None)
    if workflow.is_main_process and wf.paper_scale_estimate(TARGETS, SCALE):
        print(wf.paper_scale_estimate(TARGETS, SCALE), file=sys.stderr)

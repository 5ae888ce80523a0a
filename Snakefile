# One workflow for every paper: `snakemake reports/<paper>` reruns that paper's quick-scale experiments (what is
# missing or changed), rebuilds its report, says whether every number equals the committed one, and publishes it.
# Other scales: `snakemake reports/<scale>/<paper> --config scale=smoke|paper` (never touches reports/<paper>); other
# seeds: `snakemake reports/quick-seeds-0/<paper> --config seeds=[0]` (its own folder too).
import os
import sys

sys.path.insert(0, workflow.basedir)
from common import workflow as wf  # noqa: E402


configfile: wf.config_file(os.path.join(workflow.basedir, "config", "config.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/papers.smk"
include: "workflow/rules/teachers.smk"


rule all:
    default_target: True
    input:
        expand(wf.report_dir("{paper}", SCALE, SEEDS), paper=PAPERS),

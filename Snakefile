# One workflow for every paper: `snakemake reports/<paper>` runs that paper's experiments at the configured
# scale (`--config scale=smoke|quick|paper`, quick by default) and writes reports/<paper>/.
import os

configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/papers.smk"


rule all:
    input:
        expand("reports/{paper}", paper=PAPERS),

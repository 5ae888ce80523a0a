# Loads and validates the workflow config and checks every requested paper's settings, claims and data before
# any job runs (one line and exit 2 on a user error); the functions live in common/workflow.py.
import os
import sys

from snakemake.utils import validate

if "seeds" in config:
    config["seeds"] = wf.parse_seeds(config["seeds"])
if "allow_stale" in config:
    config["allow_stale"] = wf.parse_flag(config["allow_stale"])
wf.check_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
validate(config, "../schemas/config.schema.yaml")  # fills the defaults
wf.setup_environment(config, workflow.basedir)

SCALE = config["scale"]
SEEDS = config.get("seeds") or None   # replaces every seed list of the scale; the build gets its own folder
BUILD = wf.build_name(SCALE, SEEDS)   # the scale, or <scale>-seeds-<k>-...: where this build's report goes
PAPERS = wf.papers()
REPORTING = "--report" in sys.argv    # Snakemake's HTML report: captions and READMEs are read then only
os.umask(0o022)   # every file 0644 and folder 0755 whatever the user's umask (a group sharing the disk reads them)
if not any(flag in sys.argv for flag in ("--lint", "--unlock", "--report")):
    TARGETS = wf.target_papers(sys.argv[1:], SCALE, SEEDS)
    if workflow.is_main_process and not wf.dry_run(sys.argv[1:]):   # a dry run writes nothing
        wf.check_writable([f"results/{SCALE}", f"results/{BUILD}", "logs", "reports", ".snakemake"])
        for done in wf.clear_stale_backups("."):   # a killed publish's backup would block the next publish
            print(done, file=sys.stderr)
    if workflow.is_main_process and SEEDS:
        print(wf.announce_build(SCALE, SEEDS), file=sys.stderr)
    # the device is checked here only when the jobs run here (a cluster's nodes may have the GPU this host lacks)
    wf.check_before_running(TARGETS, SCALE, config["device"] if workflow.local_exec else None)
    if workflow.is_main_process and wf.paper_scale_estimate(TARGETS, SCALE):
        print(wf.paper_scale_estimate(TARGETS, SCALE), file=sys.stderr)

# The rules every paper shares: a job per run (setting x seed), the report built from its runs and compared with
# the published one, then published. Each calls the paper's own CLI, so every step also runs without Snakemake.
# Paths: see common/workflow.py.


wildcard_constraints:
    paper="|".join(PAPERS),
    setting=r"[A-Za-z0-9_.\-]+",
    seed=r"\d+",


rule run:
    input:
        # a distillation paper's cached teacher for this seed (rule teacher), nothing for the others; the run reads
        # it from that path, <out>/../../teacher/seed<k>.pt (so this rule's command and params, the other papers'
        # rerun triggers, stay as they were)
        unpack(lambda wc: wf.run_teacher(wc.paper, SCALE, wc.seed)),
    output:
        f"results/{SCALE}/{{paper}}/{{setting}}/seed{{seed}}.json",
    log:
        f"logs/{SCALE}/{{paper}}/{{setting}}/seed{{seed}}.log",
    params:
        py=sys.executable,
        scale=SCALE,
        # params triggers: a changed setting, or a change in a file the run loaded (its record's hashes, see
        # common/provenance.py), reruns the runs it affects
        settings=lambda wc: wf.run_settings(wc.paper, SCALE, wc.setting),
        code=lambda wc: wf.run_code(f"results/{SCALE}/{wc.paper}/{wc.setting}/seed{wc.seed}.json"),
    threads: config["threads_per_run"]
    resources:
        gpu=wf.gpus_per_run(config),  # SLURM: --gpus=1; locally, --resources gpu=N caps the runs sharing the GPUs
        mem_mb=lambda wc: wf.run_resources(wc.paper, SCALE)["mem_mb"],
        runtime=lambda wc: wf.run_resources(wc.paper, SCALE)["runtime"],
    conda:
        "../envs/replications.yaml"
    shell:
        "REPLICATIONS_TRIGGER={params.code} {params.py} -m papers.{wildcards.paper} run --scale {params.scale}"
        " --setting {wildcards.setting}"
        " --seed {wildcards.seed} --threads {threads} --device $REPLICATIONS_DEVICE --out {output} 2>&1 | tee {log}"


rule report:
    input:
        lambda wc: wf.run_records(wc.paper, SCALE, SEEDS) + wf.teacher_records(wc.paper, SCALE, SEEDS),
    output:
        directory(f"results/{BUILD}/{{paper}}/report"),
    log:
        f"logs/{BUILD}/{{paper}}/report.log",
    params:
        py=sys.executable,
        scale=SCALE,
        results=lambda wc: f"results/{SCALE}/{wc.paper}",
        published=lambda wc: wf.report_dir(wc.paper, SCALE, SEEDS),
        inputs=lambda wc: wf.report_inputs(wc.paper),  # a changed claim or figure code rebuilds the report
        # the seeds of a build with its own (--config seeds=...); a draft from stale records (allow_stale)
        flags=(f" --seeds {','.join(map(str, SEEDS))}" if SEEDS else "")
        + (" --allow-stale" if config.get("allow_stale") else ""),
    conda:
        "../envs/replications.yaml"
    shell:
        "({params.py} -m papers.{wildcards.paper} report --scale {params.scale} --results {params.results}"
        " --out {output}{params.flags} && {params.py} -m common.reproduce {output} {params.published}) 2>&1"
        " | tee {log}"


rule publish:
    # The published report is swapped in by rename (common/publish.py), so a publish that fails or is killed
    # leaves the previous one in place. update(): Snakemake must not delete the folder before the job (as it does
    # a plain directory() output); its backup of it, left by a killed run, is cleared at the next start.
    input:
        f"results/{BUILD}/{{paper}}/report",
    output:
        report(
            update(directory(wf.report_dir("{paper}", SCALE, SEEDS))),
            patterns=["figures/{name}.png", "tables/{name}.csv", "{name}.md"],
            caption="../report/figure.rst",
            category="{paper}",
        ),
    log:
        f"logs/{BUILD}/{{paper}}/publish.log",
    params:
        py=sys.executable,
        # for the HTML report only (so never a rerun trigger): the published report's captions and README
        captions=lambda wc: wf.captions(wf.report_dir(wc.paper, SCALE, SEEDS), f"results/{BUILD}/{wc.paper}/report")
        if REPORTING else {},
        readme=lambda wc: wf.readme_rst(wf.report_dir(wc.paper, SCALE, SEEDS)) if REPORTING else "",
    localrule: True
    conda:
        "../envs/replications.yaml"
    shell:
        "{params.py} -m common.publish {input} {output} 2>&1 | tee {log}"


rule index:
    input:
        # the published reports that exist (publish one with `snakemake reports/<paper>` first)
        lambda wc: [f"reports/{p}/claims.json" for p in PAPERS if os.path.exists(f"reports/{p}/claims.json")],
    output:
        "reports/README.md",
    log:
        "logs/index.log",
    params:
        py=sys.executable,
    localrule: True
    conda:
        "../envs/replications.yaml"
    shell:
        "{params.py} -m common.index 2>&1 | tee {log}"

# The two rules every paper shares: one job per run (setting x seed), then the report from all its runs.
# Both call the paper's own CLI, so each step also runs without Snakemake.


wildcard_constraints:
    paper="|".join(PAPERS),
    setting=r"[A-Za-z0-9_.\-]+",
    seed=r"\d+",


rule run:
    output:
        f"results/{SCALE}/{{paper}}/{{setting}}/seed{{seed}}.json",
    log:
        f"logs/{SCALE}/{{paper}}/{{setting}}/seed{{seed}}.log",
    threads: config["threads_per_run"]
    shell:
        "{PY} -m papers.{wildcards.paper} run --scale {SCALE} --setting {wildcards.setting}"
        " --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"


rule report:
    input:
        lambda wc: run_records(wc.paper),
    output:
        report(
            directory("reports/{paper}"),
            patterns=["figures/{name}.png"],
            caption=os.path.join(REPO, "workflow", "report", "figure.rst"),
            category="{paper}",
        ),
    log:
        f"logs/{SCALE}/{{paper}}/report.log",
    shell:
        "{PY} -m papers.{wildcards.paper} report --scale {SCALE} --results results/{SCALE}/{wildcards.paper}"
        " --out {output} > {log} 2>&1"


rule index:
    input:
        # the reports that exist (regenerate one with `snakemake reports/<paper>` first)
        lambda wc: [f"reports/{p}/claims.json" for p in PAPERS if os.path.exists(f"reports/{p}/claims.json")],
    output:
        "reports/README.md",
    shell:
        "{PY} -m common.index"

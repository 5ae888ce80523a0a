# The cached teacher of a distillation paper (KD-SVD): trained once per scale and seed, reused by every run of that
# seed (rule run takes it as an input; the run reads it from that path), retrained when its config (experiments.yaml
# `scales.<scale>.teacher`) or the paper's run code changes. Paths and helpers: common/workflow.py.


rule teacher:
    output:
        weights=f"results/{SCALE}/{{paper}}/teacher/seed{{seed}}.pt",
        record=f"results/{SCALE}/{{paper}}/teacher/teacher-seed{{seed}}.json",
    log:
        f"logs/{SCALE}/{{paper}}/teacher/seed{{seed}}.log",
    wildcard_constraints:
        paper="|".join(wf.teacher_papers()) or "no-paper-has-a-teacher",
    params:
        py=sys.executable,
        scale=SCALE,
        # params triggers: a changed teacher config or run code retrains the teacher (and so its students)
        settings=lambda wc: wf.teacher_settings(wc.paper, SCALE),
        code=lambda wc: wf.run_code(wf.teacher_record(wc.paper, SCALE, wc.seed)),
    threads: config["threads_per_run"]
    resources:
        gpu=wf.gpus_per_run(config),
        mem_mb=lambda wc: wf.run_resources(wc.paper, SCALE)["mem_mb"],
        runtime=lambda wc: wf.run_resources(wc.paper, SCALE)["runtime"],
    conda:
        "../envs/replications.yaml"
    shell:
        "REPLICATIONS_TRIGGER={params.code} {params.py} -m papers.{wildcards.paper} teacher --scale {params.scale}"
        " --seed {wildcards.seed}"
        " --threads {threads} --device $REPLICATIONS_DEVICE --out {output.weights} 2>&1 | tee {log}"

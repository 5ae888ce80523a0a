"""`python -m papers.prompt_tuning run|report|runs|check` (see common/cli.py).

    python -m papers.prompt_tuning run --scale smoke --setting pt_minilm --seed 0 --out /tmp/pt.json

`check` also checks, before any job, that every task the scale reads is under the data root with its sha256
and that every backbone it loads is installed (the T5 folders at the paper scale).
"""
from __future__ import annotations

import sys

from common import cli, experiments
from papers.prompt_tuning import text_data
from papers.prompt_tuning.backbones import check_installed
from papers.prompt_tuning.config import PAPER_ID, PromptTuningConfig
from papers.prompt_tuning.method import t5_folder, train


def report(results, out, scale: str) -> None:
    """figures.report, imported when a report is built (seaborn's import costs every run job a second)."""
    from papers.prompt_tuning.figures import report as build

    build(results, out, scale)


ENTRY = (PAPER_ID, PromptTuningConfig, train, report)  # what common.cli.main runs (tests/test_config.py reads it)


def check_inputs(scale: str) -> None:
    """Every task's files and every backbone of the scale's settings are present."""
    configs = [cli.build(PAPER_ID, PromptTuningConfig, scale, s) for s in experiments.settings(PAPER_ID, scale)]
    for task in sorted({c.task for c in configs}):
        text_data.verify_task(task)
    for backbone, path in sorted({(c.backbone, c.t5_path if c.backbone == "t5" else "") for c in configs}):
        check_installed(backbone, t5_folder(path) if backbone == "t5" else None)


def main(argv: list[str] | None = None) -> int:
    return cli.main(*ENTRY, argv, check_more=check_inputs)


if __name__ == "__main__":
    sys.exit(main())

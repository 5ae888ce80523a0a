"""Prompt tuning's configuration: one run trains one method on one task with one frozen (or tuned) backbone.

Defaults are the paper's and the official code's values (Section 3 of the paper, the released gin configs): a frozen T5 v1.1 LM-adapted model,
P = 100 prompt vectors initialised from the class labels, Adafactor at a constant lr 0.3 with weight decay 1e-5,
batch 32, 30,000 steps, early stopping on validation, inputs of up to 512 tokens, and SST-2 as the official
demo's task (scripts/sst2-demo.sh). experiments.yaml overrides them per scale.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from papers.prompt_tuning import prompts
from papers.prompt_tuning.backbones import BACKBONES
from papers.prompt_tuning.text_data import TASKS

PAPER_ID = "prompt_tuning"
METHODS = ("prompt_tuning", "model_tuning", "linear_probe")


@dataclass(frozen=True)
class PromptTuningConfig:
    """`method`: prompt_tuning (P learned vectors in front of the frozen encoder's input, and a linear head),
    model_tuning (every weight and the head) or linear_probe (the head alone on the frozen encoder's pooled
    features). `ensemble_size` N > 1 (prompt tuning only) trains N prompts on the one frozen encoder, each from
    its own seed, and scores their majority vote (Section 7). `t5_path`: the folder of a Hugging Face T5 v1.1
    LM-adapted checkpoint, relative to <data root>/models/ unless absolute."""

    method: str = "prompt_tuning"
    task: str = "sst2"                  # scripts/sst2-demo.sh; any key of text_data.TASKS
    backbone: str = "t5"                # t5 | minilm | mpnet (backbones.py)
    t5_path: str = "t5-base-lm-adapt"   # backbone t5 only: google/t5-base-lm-adapt in Hugging Face format
    num_layers: int = 0                 # keep the first n transformer layers; 0 = all
    prompt_length: int = 100            # t5_1_1_prompt.gin: PROMPT_LENGTH
    prompt_init: str = "class_labels"   # from_class_labels.gin; one of prompts.PROMPT_INITS
    ensemble_size: int = 1              # prompts trained together on one frozen model (N)
    lr: float = prompts.LR              # prompt_finetune.gin: constant 0.3 (Adafactor, no parameter scaling)
    weight_decay: float = prompts.WEIGHT_DECAY
    batch_size: int = 32                # [note59]
    steps: int = 30_000                 # [note59]
    max_length: int = 512               # inputs truncated to this many tokens (the prompt comes on top)
    length_pool: int = 0                # 0: plain shuffled batches; k: cut from k x B examples sorted by length
    eval_every: int = 1_000             # validation accuracy every n steps; the best step's weights are tested
    val_subset: int = 0                 # 0 = the whole validation split, else its first n examples
    test_subset: int = 0                # 0 = the whole test split (quick, paper), else its first n (smoke)
    eval_batch_size: int = 128

    def __post_init__(self):
        check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        check(self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        check(self.num_layers >= 0, f"num_layers must be >= 0 (0 = all), got {self.num_layers}")
        check(self.prompt_length >= 1, f"prompt_length must be >= 1, got {self.prompt_length}")
        check(self.prompt_init in prompts.PROMPT_INITS,
              f"prompt_init must be one of {', '.join(prompts.PROMPT_INITS)}, got {self.prompt_init!r}")
        check(self.ensemble_size >= 1, f"ensemble_size must be >= 1, got {self.ensemble_size}")
        check(self.ensemble_size == 1 or self.method == "prompt_tuning",
              f"ensemble_size > 1 needs method prompt_tuning (prompts sharing one frozen model), got {self.method!r}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        check(self.length_pool >= 0, f"length_pool must be >= 0 (0 = plain shuffled batches), got "
              f"{self.length_pool}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.val_subset >= 0, f"val_subset must be >= 0 (0 = the whole split), got {self.val_subset}")
        check(self.test_subset >= 0, f"test_subset must be >= 0 (0 = the whole split), got {self.test_subset}")
        check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")

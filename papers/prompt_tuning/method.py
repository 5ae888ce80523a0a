"""Prompt tuning's runs (Lester et al. 2021): one method on one task with one backbone, early stopping on
validation, the selected weights tested once on the task's whole test split.

Shapes: N members trained together (prompts on one frozen encoder; 1 for the baselines), S steps, B batch,
T tokens, P prompt length, D hidden size, C classes.

    prompt_tuning  N soft prompts [P, D] and their linear heads on the frozen encoder (prompts.py); the loss is
                   the sum of the members' losses, so member n's gradient is that of its own loss
    model_tuning   every encoder weight and the head
    linear_probe   the head on the frozen encoder's mean-pooled features, computed once for the rows the run
                   reads (the frozen encoder in eval mode is deterministic, so this equals running it per step)

All use the paper's optimiser (prompts.adafactor: T5X's Adafactor, constant lr, no parameter scaling). The
official runs stop early on validation (Section 3 of the paper): every `eval_every` steps each member's accuracy on
the validation split (its first `val_subset` rows) is measured and its best step's weights are kept; ties keep
the earlier step. Member n draws its prompt, its head and its batch order from seed + n * MEMBER_STRIDE, so
member 0 is the run's own seed: an ensemble's first member is the single prompt of that seed (exactly on a
CPU; up to float rounding on a GPU, where the members share one padded batch). The batches of all S steps are drawn up front on a CPU generator
(`batch_plan`), so a seed reads the same examples on any device; data and weights live on the run's device.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.data import data_root
from common.experiments import ConfigError
from common.results import RunRecord
from common.train import check_finite, epoch_batches
from papers.prompt_tuning import prompts
from papers.prompt_tuning.backbones import Backbone, count_parameters, load_backbone
from papers.prompt_tuning.config import PromptTuningConfig
from papers.prompt_tuning.text_data import TASKS, TokenizedSplit, tokenize_task

MEMBER_STRIDE = 1000


# ------------------------------------------------------------------------------------------------ set-up
def t5_folder(path: str) -> Path:
    """An absolute T5 folder as given; a relative one under <data root>/models/."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root() / "models" / path


def load(cfg: PromptTuningConfig) -> Backbone:
    return load_backbone(cfg.backbone, cfg.num_layers or None,
                         t5_folder(cfg.t5_path) if cfg.backbone == "t5" else None)


def member_seeds(seed: int, n: int) -> list[int]:
    return [seed + k * MEMBER_STRIDE for k in range(n)]


def batch_plan(lengths: torch.Tensor, cfg: PromptTuningConfig, seeds: list[int]) -> torch.Tensor:
    """Training rows [N, S, B]: member n's shuffled epochs from its own seed, the last short batch dropped.
    With `length_pool` k > 0, each run of k consecutive batches is re-cut after sorting its k x B examples by
    length and the epoch's batches are shuffled again (Hugging Face's group_by_length): a batch then pads to
    a length its examples share, not to the longest of B random ones."""
    n, b, k = len(lengths), cfg.batch_size, cfg.length_pool
    if n < b:
        raise ConfigError(f"batch_size {b} exceeds the {n} training examples of task {cfg.task!r}: lower "
                          "batch_size")
    plans = []
    for seed in seeds:
        g, batches = torch.Generator().manual_seed(seed), []
        while len(batches) < cfg.steps:
            epoch = epoch_batches(n, b, g, drop_last=True)
            if k:
                rows = torch.cat(epoch).split(k * b)  # pools of k batches
                rows = [pool[torch.argsort(lengths[pool], stable=True)] for pool in rows]
                cut = torch.cat(rows).split(b)
                epoch = [cut[i] for i in torch.randperm(len(cut), generator=g).tolist()]
            batches += epoch
        plans.append(torch.stack(batches[:cfg.steps]))
    return torch.stack(plans)


class Single(nn.Module):
    """A baseline classifier as an ensemble of one: input_ids and mask [1, B, T] -> logits [1, B, C]."""

    def __init__(self, classifier: prompts.Classifier):
        super().__init__()
        self.members = nn.ModuleList([classifier])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.members[0](input_ids[0], attention_mask[0])[None]


def build_model(cfg: PromptTuningConfig, backbone: Backbone, seeds: list[int]) -> nn.Module:
    """PromptEnsemble of N prompt-tuned classifiers, or a Single model-tuned / linear-probe classifier."""
    labels = TASKS[cfg.task].label_names
    if cfg.method == "prompt_tuning":
        return prompts.PromptEnsemble([prompts.prompt_tuning(backbone, len(labels), cfg.prompt_length,
                                                             cfg.prompt_init, labels, seed) for seed in seeds])
    build = prompts.model_tuning if cfg.method == "model_tuning" else prompts.linear_probe
    return Single(build(backbone, len(labels), seed=seeds[0]))


def state_digest(module: nn.Module) -> str:
    """sha1 over every parameter and buffer's bytes: equal digests, bit-identical weights."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ the learner
class Learner:
    """What the loop trains: the model's N members and `logits(split, rows [N, B]) -> [N, B, C]`, from tokens
    or, for the linear probe, from the cached features. `batched`: the N members' sequences go through the
    encoder as one batch of N x B (Section 7; on a GPU), else member by member, each batch padded only to its
    own longest example (on a CPU, where one large batch is slower). Both give the same logits (tested)."""

    def __init__(self, model: nn.Module, data: dict[str, TokenizedSplit], features: dict | None = None,
                 batched: bool = False):
        self.model, self.data, self.features, self.batched = model, data, features, batched
        self.members = list(model.members)

    def logits(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        data = self.data[split]
        if self.features is not None:
            return self.members[0].head(self.features[split][rows.to(data.labels.device)])
        if self.batched:
            ids, mask, _ = data.batch(rows)  # [N, B, t]
            return self.model(ids, mask)
        return torch.stack([member(*data.batch(r)[:2]) for member, r in zip(self.members, rows)])

    def labels(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        return self.data[split].labels[rows.to(self.data[split].labels.device)]

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def snapshot(self, k: int) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.members[k].named_parameters() if p.requires_grad}

    def restore(self, k: int, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.members[k].named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    @torch.no_grad()
    def predict(self, split: str, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Every member's logits [N, n, C] on `rows` [n] of a split, in eval mode, in batches of similar
        length (the order is undone)."""
        self.model.eval()
        by_length = self.data[split].by_length(rows)
        order, n = rows[by_length], len(self.members)
        out = torch.cat([self.logits(split, order[i:i + batch_size].expand(n, -1))
                         for i in range(0, len(order), batch_size)], dim=1)  # [N, n_rows, C]
        return out[:, torch.argsort(by_length).to(out.device)]


@torch.no_grad()
def cached_features(classifier: prompts.Classifier, data: dict[str, TokenizedSplit], rows: dict[str, torch.Tensor],
                    batch_size: int) -> dict[str, torch.Tensor]:
    """The frozen encoder's mean-pooled features [n_split, D] of each split, filled at the rows the run reads
    (zeros elsewhere), in batches of similar length."""
    classifier.eval()
    out = {}
    for split, used in rows.items():
        d = data[split]
        feats = torch.zeros(len(d), classifier.head.in_features, device=d.labels.device)
        used = used[d.by_length(used)]
        for i in range(0, len(used), batch_size):
            ids, mask, _ = d.batch(used[i:i + batch_size])
            feats[used[i:i + batch_size].to(feats.device)] = classifier.features(ids, mask)
        out[split] = feats
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [N, n, C], labels [n] -> accuracy per member [N]."""
    return (logits.argmax(-1) == labels).float().mean(-1)


# ------------------------------------------------------------------------------------------------ the loop
def fit(learner: Learner, cfg: PromptTuningConfig, plan: torch.Tensor, val_rows: torch.Tensor,
        record: RunRecord) -> dict:
    """S steps of the summed member losses; every `eval_every` steps (and after the last) the members'
    validation accuracy and early-stopping snapshots. Restores each member's best weights; returns
    {best_val [N], best_step [N], step_s}."""
    n, steps = plan.shape[:2]
    optimizer = prompts.adafactor(learner.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_labels = learner.data["validation"].labels[val_rows.to(learner.data["validation"].labels.device)]
    best_val, best_step = [-1.0] * n, [0] * n
    best = [learner.snapshot(k) for k in range(n)]
    total = torch.zeros(n, device=val_labels.device)
    since, train_s = 0, 0.0
    for s in range(steps):
        start = time.perf_counter()
        learner.model.train()
        rows = plan[:, s]  # [N, B]
        logits = learner.logits("train", rows)  # [N, B, C]
        loss = F.cross_entropy(logits.flatten(0, 1), learner.labels("train", rows).flatten(),
                               reduction="none").view(n, -1).mean(1)  # [N]
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        total += loss.detach()
        since += 1
        train_s += time.perf_counter() - start
        if (s + 1) % cfg.eval_every and s + 1 < steps:
            continue
        mean_loss = float(total.sum()) / (n * since)  # the loop's one read of the device per interval
        check_finite(mean_loss, f"{cfg.method}, step {s + 1}")
        val = accuracy(learner.predict("validation", val_rows, cfg.eval_batch_size), val_labels).tolist()
        for k in range(n):
            if val[k] > best_val[k]:
                best_val[k], best_step[k], best[k] = val[k], s + 1, learner.snapshot(k)
        record.log(step=s + 1, train_loss=mean_loss, val_acc=sum(val) / n, step_s=train_s / (s + 1))
        total.zero_()
        since = 0
    for k in range(n):
        learner.restore(k, best[k])
    return {"best_val": best_val, "best_step": best_step, "step_s": train_s / steps}


def train(cfg: PromptTuningConfig, seed: int, record: RunRecord, device: torch.device | str = "cpu") -> None:
    """One run: the configured method trained for `steps` steps with early stopping on validation, then its
    members' (and their majority vote's) accuracy on the whole test split. Fills record.history (per
    evaluation) and record.summary."""
    backbone = load(cfg)
    backbone.model.to(device)
    frozen = cfg.method != "model_tuning"
    digest = state_digest(backbone.model) if frozen else None
    data = {k: v.to(device) for k, v in tokenize_task(cfg.task, backbone.tokenizer, cfg.max_length, seed).items()}
    seeds = member_seeds(seed, cfg.ensemble_size)
    plan = batch_plan(torch.from_numpy(data["train"].lengths), cfg, seeds)  # [N, S, B]
    val_rows, test_rows = (torch.arange(min(k, len(data[s])) if k else len(data[s]))
                           for s, k in (("validation", cfg.val_subset), ("test", cfg.test_subset)))
    model = build_model(cfg, backbone, seeds).to(device)
    features = None
    if cfg.method == "linear_probe":
        start = time.perf_counter()
        features = cached_features(model.members[0], data, {"train": plan.unique(), "validation": val_rows,
                                                            "test": test_rows}, cfg.eval_batch_size)
        record.summary["feature_s"] = time.perf_counter() - start
    learner = Learner(model, data, features, batched=torch.device(device).type != "cpu")
    fitted = fit(learner, cfg, plan, val_rows, record)
    test_labels = data["test"].labels[test_rows.to(device)]
    logits = learner.predict("test", test_rows, cfg.eval_batch_size)  # [N, n_test, C]
    acc = accuracy(logits, test_labels).tolist()
    counts = backbone.parameter_counts()
    record.summary.update({
        "test_acc": acc[0], "val_acc": fitted["best_val"][0], "best_step": fitted["best_step"][0],
        "step_s": fitted["step_s"], "load_s": backbone.load_seconds,
        "parameters": counts["total"], "embedding_parameters": counts["embeddings"],
        "layers": backbone.num_layers, "hidden_size": backbone.hidden_size,
        "trainable_parameters": count_parameters(learner.members[0], trainable_only=True),
        "train_examples": len(data["train"]), "val_examples": len(val_rows), "test_examples": len(test_rows)})
    if frozen:
        record.summary["encoder_unchanged"] = state_digest(backbone.model) == digest
    if cfg.ensemble_size > 1:
        by_val = max(range(len(acc)), key=lambda k: fitted["best_val"][k])
        ensemble = (prompts.majority_vote(logits) == test_labels).float().mean().item()
        mean = sum(acc) / len(acc)
        record.summary.update({
            "member_test_acc": acc, "member_val_acc": fitted["best_val"], "mean_member_test_acc": mean,
            "best_member_test_acc": max(acc), "val_best_member_test_acc": acc[by_val],
            "ensemble_test_acc": ensemble, "ensemble_gain_over_mean": ensemble - mean,
            "ensemble_minus_best": ensemble - max(acc)})

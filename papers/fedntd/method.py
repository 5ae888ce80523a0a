"""FedNTD (Lee et al., NeurIPS 2022) and FedLSD (arXiv v1), as local-loss terms on the shared FL engine.

Shapes: B batch, C classes, K sampled clients.

FedNTD, the released `algorithms/fedntd/criterion.py::NTD_Loss` with `utils.py::refine_as_not_true`:

    L = CE(z, y) + beta * tau^2 * KL( softmax(z~_g / tau) || softmax(z~_l / tau) )

where z~ is a logit vector with the true-class column removed per sample ([B, C-1]), z_l the local model's
logits and z_g those of the frozen copy of the global model the client received this round (no gradient;
`ClientTrainer._get_dg_logits` runs it under no_grad on the same augmented batch). KLDivLoss(batchmean)
averages over the batch. tau = beta = 1 as `config/fedntd.json` (the class default tau = 3 is overridden).

FedLSD, the all-class ablation: the same term over all C classes,

    L = CE(z, y) + beta * tau^2 * KL( softmax(z_g / tau) || softmax(z_l / tau) ),

which is the released code's `algorithms/fedkd/ClientTrainer.py` form (the repository has no `fedlsd/`
folder). arXiv v1 wrote FedLSD as a convex mix (1 - beta) CE + beta * KD; we keep CE + beta * KD so that
FedNTD and FedLSD differ only in which classes are distilled (see README, deviations).

Server side both are FedAvg. `ForgettingProbe` adds the paper's forgetting diagnostic to any method.
"""
from __future__ import annotations

import copy
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from common.fl import local
from common.fl.engine import Method, get_method, register_method, run_federated
from common.models import MLP, register_model
from common.train import predict_logits
from papers.fedntd.config import FedNTDConfig


@register_model("mlp2nn")
def mlp_2nn(in_shape, num_classes):
    """McMahan et al.'s (2017) 2NN, 784-200-200-K with ReLU (as benchmarks/fl_engine.py): the quick scale's model,
    ~25x cheaper per image than the McMahan CNN on this CPU (README, deviations)."""
    c, h, w = in_shape
    return MLP(c * h * w, (200, 200), num_classes)


def not_true_index(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per sample, the C-1 class indices other than its label, in increasing order: y [B] -> [B, C-1]."""
    j = torch.arange(num_classes - 1, device=y.device)
    return j + (j >= y.unsqueeze(-1)).long()


def not_true_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`refine_as_not_true`: the logits without the true-class column, [B, C] -> [B, C-1] (vmap-safe gather)."""
    return logits.gather(-1, not_true_index(y, logits.shape[-1]))


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float,
                    w: torch.Tensor | None = None) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), averaged over the samples of weight w.

    student, teacher [B, D]; w [B] (1 real, 0 padding; None = all real). The teacher is not differentiated."""
    teacher = teacher.detach() / tau
    p_t = F.softmax(teacher, -1)
    kl = (p_t * (F.log_softmax(teacher, -1) - F.log_softmax(student / tau, -1))).sum(-1)  # [B]
    if w is None:
        return tau ** 2 * kl.mean()
    return tau ** 2 * (kl * w).sum() / w.sum().clamp_min(1.0)


def not_true_distillation_loss(local_logits: torch.Tensor, global_logits: torch.Tensor, y: torch.Tensor,
                               tau: float, w: torch.Tensor | None = None) -> torch.Tensor:
    """FedNTD's L_NTD (without beta): distillation over the not-true classes only. logits [B, C], y [B]."""
    return distillation_kl(not_true_logits(local_logits, y), not_true_logits(global_logits, y), tau, w)


def all_class_distillation_loss(local_logits: torch.Tensor, global_logits: torch.Tensor, tau: float,
                                w: torch.Tensor | None = None) -> torch.Tensor:
    """FedLSD's self-distillation term (without beta): over all C classes. logits [B, C]."""
    return distillation_kl(local_logits, global_logits, tau, w)


class GlobalDistillation(Method):
    """Shared by FedNTD and FedLSD: the received global model, frozen, is the teacher of the local loss."""

    def round_context(self, state, clients, round_):
        # shared by the K clients (vmap in_dims None); never differentiated: only `params` is
        return {"global_params": {n: state[n] for n in self.param_names},
                "global_buffers": {n: state[n] for n in self.buffer_names}}, {}

    def global_logits(self, x: torch.Tensor, shared: dict) -> torch.Tensor:
        """z_g [B, C]: the frozen global copy on the same (augmented) batch, under no_grad; in eval mode, so a
        BatchNorm model uses (and leaves untouched) the global running statistics."""
        if not hasattr(self, "teacher"):
            self.teacher = copy.deepcopy(self.model).eval()
        with torch.no_grad():
            return local.forward(self.teacher, shared["global_params"], shared["global_buffers"], x).detach()

    def knob(self, name: str) -> float:
        """The paper's knob, or FedNTDConfig's default when run with a plain FLConfig (the engine's tests)."""
        return float(getattr(self.cfg, name, getattr(FedNTDConfig, name)))


@register_method("fedntd")
class FedNTD(GlobalDistillation):
    """FedNTD: CE + beta * tau^2 * KL over the not-true classes (NTD_Loss)."""

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        kd = not_true_distillation_loss(logits, self.global_logits(x, shared), y, self.knob("ntd_tau"), w)
        return self.knob("ntd_beta") * kd


@register_method("fedlsd")
class FedLSD(GlobalDistillation):
    """FedLSD: CE + beta * tau^2 * KL over all classes (the fedkd form)."""

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        kd = all_class_distillation_loss(logits, self.global_logits(x, shared), self.knob("lsd_tau"), w)
        return self.knob("lsd_beta") * kd


# ---------------------------------------------------------------------------------------------- forgetting
def official_out_of_local(class_acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The released code's out-of-distribution accuracy of client models (`algorithms/measures.py::
    get_round_personalized_acc` with `calculate_inverse_dist`): sum_c acc_c (1 - p_c) / (C - 1), p the client's
    class shares. class_acc [K, C], counts [K, C] (client k's training samples per class) -> [K]."""
    p = counts / counts.sum(-1, keepdims=True)
    return (class_acc * (1 - p) / (counts.shape[-1] - 1)).sum(-1)


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy per class [C] on the logits' device (nan for a class absent from y)."""
    correct = torch.zeros(num_classes, device=logits.device).index_add_(0, y, (logits.argmax(1) == y).float())
    count = torch.bincount(y, minlength=num_classes).float()
    return correct / count  # 0/0 -> nan


class ForgettingProbe:
    """Mixin for any method (`probed(cls)`): the paper's forgetting diagnostic and per-class accuracy.

    Every `forget_every` rounds, for each sampled client, the global model it received and its model after
    local training are evaluated per class on the test set. Ours: out-of-local-class accuracy is the mean
    per-class accuracy over the classes the client holds no sample of; in-local over the classes it holds
    (weighted by its label distribution); both averaged over the sampled clients (out_before / out_after /
    in_before / in_after). The released code's (`official_out_of_local`): every class weighted by
    (1 - p_c) / (C - 1), clients weighted by their data size (official_out_after; official_out_before for the
    received global model under the same weights). Every evaluation also logs the global model's per-class
    test accuracy.
    """

    def client_update(self, state, clients, round_):
        update = super().client_update(state, clients, round_)
        every = getattr(self.cfg, "forget_every", 0)
        if every and round_ % every == 0:
            self._probe = self._forgetting(state, update)
        return update

    @cached_property
    def class_counts(self) -> np.ndarray:
        """[n_clients, C] every client's training samples per class (read from the device once per run)."""
        y, C = self.fed.train.y, self.fed.train.num_classes
        counts = torch.stack([torch.bincount(y[part.to(y.device)], minlength=C) for part in self.fed.parts])
        return counts.cpu().numpy()

    def _forgetting(self, state, update) -> dict:
        test, C = self.fed.test, self.fed.train.num_classes
        states = [state]
        for k in range(len(update.clients)):
            client_state = dict(state)
            client_state.update({n: update.params[n][k] for n in self.param_names})
            client_state.update({n: update.buffers[n][k] for n in self.buffer_names})
            states.append(client_state)
        logits = (predict_logits(self.model_with(s), test, self.cfg.eval_batch_size) for s in states)
        accs = torch.stack([per_class_accuracy(z, test.y, C) for z in logits])
        accs = accs.cpu().numpy()   # [1 + K, C]: the received global model's, then each client's; one read
        before, afters, counts = accs[0], accs[1:], self.class_counts[update.clients]
        rows = []
        for after, cnt in zip(afters, counts):
            held, dist = cnt > 0, cnt / max(1, cnt.sum())
            row = {"in_before": float(np.nansum(before * dist)), "in_after": float(np.nansum(after * dist))}
            if (~held).any():
                row.update(out_before=float(np.nanmean(before[~held])), out_after=float(np.nanmean(after[~held])))
            rows.append(row)
        keys = ("out_before", "out_after", "in_before", "in_after")
        out = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)}
        size = update.n_samples.numpy()
        if C > 1 and size.sum() > 0:
            weight = size / size.sum()   # measures.py: local_size_prop, the clients' data sizes normalised
            out["official_out_after"] = float(official_out_of_local(afters, counts) @ weight)
            out["official_out_before"] = float(official_out_of_local(before[None], counts) @ weight)
        return out

    def evaluate(self, state, round_):
        """The engine's global test accuracy and loss from one pass, plus per-class accuracy and the probe."""
        model, test = self.model_with(state), self.fed.test
        logits = predict_logits(model, test, self.cfg.eval_batch_size)
        acc, loss = (logits.argmax(1) == test.y).float().mean(), F.cross_entropy(logits, test.y)
        accs = per_class_accuracy(logits, test.y, self.fed.train.num_classes)
        values = torch.cat([acc.view(1), loss.view(1), accs]).tolist()   # the evaluation's one read
        out = {"test_acc": values[0], "test_loss": values[1]}
        if self.fed.client_test_parts is not None:
            out["personal_acc"] = self.personalised_accuracy(lambda c: model)
        out.update({f"class_acc_{c}": a for c, a in enumerate(values[2:])})
        out.update(getattr(self, "_probe", {}) or {})
        self._probe = {}
        return out


def probed(method_cls: type[Method]) -> type[Method]:
    """`method_cls` with the forgetting probe (same name, same local loss)."""
    cls = type(f"Probed{method_cls.__name__}", (ForgettingProbe, method_cls), {})
    cls.name = method_cls.name
    return cls


def train(cfg, seed: int, record, device: torch.device | str = "cpu") -> None:
    """One run: the engine's round loop with the configured method (probed for forgetting), then summary
    scalars of the forgetting diagnostic averaged over the probed rounds."""
    run_federated(cfg, seed, record, probed(get_method(cfg.method)), device=device)
    hist = record.history
    for key in ("out_before", "out_after", "in_before", "in_after", "official_out_before", "official_out_after"):
        vals = [h[key] for h in hist if key in h and h[key] is not None]
        if vals:
            record.summary[key] = float(np.mean(vals))
    if "out_before" in record.summary and "out_after" in record.summary:
        record.summary["out_forgetting"] = record.summary["out_before"] - record.summary["out_after"]
    last = hist[-1]
    classes = [last[k] for k in last if k.startswith("class_acc_")]
    record.summary["final_min_class_acc"] = float(np.nanmin(classes))

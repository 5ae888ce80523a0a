"""KD-SVD's runs: the benchmark's ResNet, the cached teacher, and a student distilled by one method.

Shapes: B batch, C channels, H×W spatial size, K classes; a network's distillation points are the outputs of its
three stages (after the last block's ReLU, KD_methods_with_TF nets/ResNet.py's 'feat' collection), [B, C_l, H_l,
W_l] with C_l = widths[l + 1] for teacher and student alike.

A student step by method (train_w_distill.py and op_util.py of KD_methods_with_TF; the teacher frozen, in eval
mode, outside the optimiser):

    student          CE                                        (+ weight decay, every method)
    hinton           0.7 CE + 0.3 KL(p_T^τ ‖ p_S^τ), τ = 4      Response.py::Soft_logits, op_util: no τ² factor
    at               CE + β/2 Σ_l mean((Q_S,l − Q_T,l)²)        Multiple.py::Attention_transfer, one summed loss
    fitnets, fsp     `init_epochs` of the hint / FSP loss alone, then `epochs` of CE alone (Optimizer_w_Initializer;
                     momentum reset in between); FSP weighted 1e-3/2, FitNets 1
    kd_svd, kd_eid   per parameter tensor g = g_CE + g_wd + clip_by_norm(g_KD, ‖g_CE‖ · sigmoid(epoch))
                     (Optimizer_w_Distillation, 'KD-' branch: three gradients computed separately)
    kd_svd_noalign   as kd_svd, but the student's leading singular vector as the decomposition gives it: no
                     Align_rsv (our ablation)

Weight decay g_wd = wd · w is added by the optimiser to every tensor that has a gradient (the sum above).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import models, provenance
from common.experiments import ConfigError, build_config
from common.models import BasicBlock, register_model
from common.results import RunRecord
from common.train import (agreement, due, load_split, lr_at, predict_logits, sgd, train_epochs)
from papers.kd_svd.config import MULTITASK, TWO_STAGE, KDConfig, TeacherConfig, check_compatible
from papers.kd_svd.losses import (attention_transfer_loss, check_k, check_maps, fitnets_loss,
                                  fsp_loss, hint_regressors, hinton_kd_loss, kd_svd_loss, multitask_gradients,
                                  rbf_relation, singular_knowledge)
from papers.kd_svd.svd import feature_matrix, truncated_svd, zero_nonfinite

RELATION_IMAGES = 16     # test images the relation matrices and the relation distance are computed on
RELATION_CROP = 64       # the saved relation matrices: at most 64 × 64 channels
TIMING_REPEATS = 5       # distillation-loss timing: forward + backward, after one warm-up


# ------------------------------------------------------------------------------------------------- the network
class KDResNet(nn.Module):
    """KD_methods_with_TF nets/ResNet.py: conv3×3(widths[0])-BN-ReLU, three stages of `blocks` basic blocks with
    widths[1:] channels (strides 1, 2, 2; a 1×1 projection where the shape changes), global average pool, FC.
    Convolutions have no bias; weights are He-normal over the fan-out (tcl.variance_scaling_initializer(mode=
    'FAN_OUT')), the FC bias is 0."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], blocks: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor, maps: bool = False):
        """Logits [B, K], and with `maps` also the three stage outputs [B, C_l, H_l, W_l]."""
        h, feats = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        logits = self.classifier(h.mean((2, 3)))
        return (logits, feats) if maps else logits


@register_model("kd_resnet")
def kd_resnet(in_shape, num_classes, widths=(32, 64, 128, 256), blocks=1):
    return KDResNet(in_shape[0], num_classes, tuple(widths), blocks)


def subset_seed(seed: int) -> int:
    """The seed of a run's stratified training subset (kept apart from its batch generator's)."""
    return 10_000 + seed


def build_network(cfg: KDConfig | TeacherConfig, shape: tuple[int, int, int], num_classes: int) -> KDResNet:
    return models.build_model("kd_resnet", shape, num_classes, widths=cfg.widths, blocks=cfg.blocks)


# ---------------------------------------------------------------------------------------------------- losses
def kd_svd_loss_unaligned(student_maps, teacher_maps, k: int = 1, route: str = "svd") -> torch.Tensor:
    """The ablation of Align_rsv: `losses.kd_svd_loss` with the student's k leading right singular vectors taken
    as the decomposition returns them (sign and order not matched to the teacher's)."""
    check_maps(student_maps, teacher_maps, min_points=2, same_channels=True)
    check_k(student_maps, teacher_maps, k)
    loss, previous = student_maps[0].new_zeros(()), None
    for f_s, f_t in zip(student_maps, teacher_maps):
        sigma_T, V_T = truncated_svd(feature_matrix(f_t.detach()), k, route)     # [B, K], [B, C, K]
        _, V_S = truncated_svd(feature_matrix(f_s), k, route)                    # [B, C, K]
        weight = sigma_T.unsqueeze(1)
        V_S, V_T = V_S * weight, V_T * weight
        if previous is not None:
            R_S, R_T = rbf_relation(V_S, previous[0]), rbf_relation(V_T, previous[1])
            loss = loss + zero_nonfinite((R_S - R_T).square()).sum()
        previous = V_S, V_T
    return loss


def distillation_loss(cfg: KDConfig, regressors: nn.ModuleList | None):
    """The method's distillation term as a function of (student logits, student maps, teacher logits, teacher
    maps), weighted as the official code weights it; None for the student alone."""
    m = cfg.method
    if m == "hinton":   # Soft_logits has no τ²: hinton_kd_loss / τ² is the plain KL
        tau = cfg.kd_temperature
        return lambda zs, fs, zt, ft: cfg.kd_alpha * hinton_kd_loss(zs, zt, tau) / tau ** 2
    if m == "at":
        return lambda zs, fs, zt, ft: attention_transfer_loss(fs, ft, cfg.at_beta)
    if m == "fitnets":
        return lambda zs, fs, zt, ft: cfg.fitnets_weight * fitnets_loss(fs, ft, regressors)
    if m == "fsp":
        return lambda zs, fs, zt, ft: cfg.fsp_weight * fsp_loss(fs, ft)
    if m in ("kd_svd", "kd_eid"):
        route = "svd" if m == "kd_svd" else "eid"
        return lambda zs, fs, zt, ft: kd_svd_loss(fs, ft, cfg.svd_k, route)
    if m == "kd_svd_noalign":
        return lambda zs, fs, zt, ft: kd_svd_loss_unaligned(fs, ft, cfg.svd_k, "svd")
    return None


def ce_weight(cfg: KDConfig) -> float:
    return 1 - cfg.kd_alpha if cfg.method == "hinton" else 1.0


def global_norm(grads) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))


# ---------------------------------------------------------------------------------------------------- teacher
def freeze(model: nn.Module) -> nn.Module:
    """The teacher as the official code holds it: inference mode (BN uses its moving statistics), no gradient,
    outside the optimiser."""
    model.eval()
    model.requires_grad_(False)
    return model


def train_teacher(cfg: TeacherConfig, seed: int, record: RunRecord, device: torch.device | str):
    """Train the teacher (cross-entropy + weight decay) with the centralised loop; returns (model, test logits
    [N, K] of the final model) and fills `record` (setting 'teacher')."""
    train, test = load_split(cfg, subset_seed(seed), device)
    model = build_network(cfg, train.shape, train.num_classes).to(device)
    optimizer = sgd(model.parameters(), cfg)

    def step(x, y, epoch):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    generator = torch.Generator().manual_seed(seed)
    logits = None
    for epoch, loss, step_s in train_epochs(model, train, cfg, optimizer, step, generator, where="the teacher"):
        row = {"epoch": epoch, "train_loss": loss, "lr": lr_at(cfg, epoch - 1), "step_s": step_s}
        if due(epoch, cfg):
            logits = predict_logits(model, test, cfg.eval_batch_size)
            row["test_acc"] = (logits.argmax(1) == test.y).float().mean().item()
        record.log(**row)
    record.summary = {"test_acc": record.history[-1]["test_acc"],
                      "best_test_acc": max(h["test_acc"] for h in record.history if "test_acc" in h),
                      "train_images": len(train), "test_images": len(test),
                      "parameters": models.count_parameters(model)}
    return model, logits


def save_teacher(path: Path, model: nn.Module, cfg: TeacherConfig, test_logits: torch.Tensor,
                 record: RunRecord) -> None:
    """The artefact: weights, config and test logits in `path` (.pt, written to a temporary file then renamed),
    and the teacher's run record (config, per-epoch history, test accuracy) beside it (`teacher_record_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": record.config, "test_logits": test_logits.detach().cpu(), "seed": record.seed,
            "test_acc": record.summary["test_acc"]}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    provenance.stamp(record)
    record.save(teacher_record_path(path))


def teacher_record_path(path: str | Path) -> Path:
    """The teacher's run record beside its weights: teacher/seed0.pt -> teacher/teacher-seed0.json (a name the
    reports' and the progress line's `*/seed*.json` globs of student records do not match)."""
    path = Path(path)
    return path.with_name(f"teacher-{path.stem}.json")


def load_teacher(path: Path, cfg: KDConfig, shape, num_classes: int, device: torch.device | str):
    """(frozen teacher on `device`, its test logits [N, K], its stored config and test accuracy)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no teacher at {path}: train it first (python -m papers.kd_svd teacher --scale <scale> "
                          f"--seed <seed> --out {path}; the workflow does this itself) or give --teacher PATH")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    check_compatible(cfg, blob["config"], f"at {path}")
    teacher_cfg = build_config(TeacherConfig, dict(blob["config"]))
    teacher = build_network(teacher_cfg, shape, num_classes)
    teacher.load_state_dict(blob["state_dict"])
    return freeze(teacher.to(device)), blob["test_logits"].to(device), blob["config"], float(blob["test_acc"])


# ---------------------------------------------------------------------------------------------------- student
class StudentStep:
    """One student update for the configured method: fills the student's gradients and returns the detached
    loss; `probe` (the first batch of every epoch) also measures ‖g_KD‖ / ‖g_CE‖ (the weighted gradients,
    before the multi-task clip) on the device."""

    def __init__(self, cfg: KDConfig, student: nn.Module, teacher: nn.Module, regressors: nn.ModuleList):
        self.cfg, self.student, self.teacher = cfg, student, teacher
        self.params = [p for p in [*student.parameters(), *regressors.parameters()] if p.requires_grad]
        self.distill = distillation_loss(cfg, regressors)
        self.stage = "init" if cfg.method in TWO_STAGE and cfg.init_epochs else "main"
        self.probe = True          # set again after every epoch: the next epoch's first batch is probed
        self.ratio: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        logits, maps = self.student(x, maps=True)
        if self.distill is None or (self.stage == "main" and self.cfg.method in TWO_STAGE and self.cfg.init_epochs):
            loss = F.cross_entropy(logits, y)          # the student alone, or FitNets/FSP after initialisation
            loss.backward()
            return loss.detach()
        with torch.no_grad():
            t_logits, t_maps = self.teacher(x, maps=True)
        dist = self.distill(logits, maps, t_logits, t_maps)
        if self.stage == "init":                       # FitNets/FSP initialisation: the distillation loss alone
            dist.backward()
            return dist.detach()
        ce = ce_weight(self.cfg) * F.cross_entropy(logits, y)
        if self.cfg.method not in MULTITASK and not self.probe:
            (ce + dist).backward()
            return (ce + dist).detach()
        g_ce = torch.autograd.grad(ce, self.params, retain_graph=True, allow_unused=True)
        g_kd = torch.autograd.grad(dist, self.params, allow_unused=True)
        if self.probe:
            self.ratio, self.probe = global_norm(g_kd) / global_norm(g_ce), False
        if self.cfg.method in MULTITASK:
            grads = multitask_gradients(g_ce, [None] * len(g_ce), g_kd, epoch)
        else:
            grads = [a if b is None else b if a is None else a + b for a, b in zip(g_ce, g_kd)]
        for p, g in zip(self.params, grads):
            p.grad = g
        return (ce + dist).detach()


def fixed_batch(data, n: int) -> torch.Tensor:
    """The first n images of a data set, normalised, without augmentation [n, C, H, W]."""
    return data.normalize(data.x[:n])


def time_distillation(distill, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward and backward of the distillation loss alone (the student's logits and maps as
    leaves), the median of TIMING_REPEATS after a warm-up, synchronised on CUDA. A measurement, not a verdict:
    the machine is shared."""
    with torch.no_grad():
        zs, fs = student(x, maps=True)
        zt, ft = teacher(x, maps=True)
    leaves = [zs.clone().requires_grad_(), *[f.clone().requires_grad_() for f in fs]]
    times = []
    for i in range(TIMING_REPEATS + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        torch.autograd.grad(distill(leaves[0], leaves[1:], zt, ft), leaves, allow_unused=True)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


@torch.no_grad()
def relations(student: nn.Module, teacher: nn.Module, x: torch.Tensor, k: int) -> dict:
    """On a fixed batch x of test images: the KD-SVD relation distance per image (losses.kd_svd_loss, route svd,
    divided by the batch size) and, for the first image, the teacher's and the (aligned) student's RBF
    relation matrices R between consecutive points [C_l, C_{l-1}] (first vector; cropped to RELATION_CROP)."""
    was = student.training
    student.eval()
    _, fs = student(x, maps=True)
    _, ft = teacher(x, maps=True)
    student.train(was)
    out = {"distance": kd_svd_loss(fs, ft, k, "svd").item() / len(x), "pairs": []}
    knowledge = [singular_knowledge(s[:1], t[:1], k, "svd") for s, t in zip(fs, ft)]   # ([1, C, K], [1, C, K])

    def crop(R):   # [1, C_l, C_l-1, K] -> the first vector's matrix, at most RELATION_CROP square, as lists
        return R[0, :RELATION_CROP, :RELATION_CROP, 0].cpu().double().round(decimals=4).tolist()

    for l in range(1, len(knowledge)):
        (V_S, V_T), (P_S, P_T) = knowledge[l], knowledge[l - 1]
        out["pairs"].append({"points": [l - 1, l], "teacher": crop(rbf_relation(V_T, P_T)),
                             "student": crop(rbf_relation(V_S, P_S))})
    return out


def train(cfg: KDConfig, seed: int, record: RunRecord, device: torch.device | str = "cpu",
          teacher_path: str | Path | None = None) -> None:
    """One student run: the student of the configured method distilled from the teacher at `teacher_path`,
    evaluated on the test split (accuracy, agreement and predictive KL with the teacher) every `eval_every`
    epochs; the summary holds the final and best accuracy, the final agreement, the mean gradient-norm ratio,
    the distillation loss's seconds per step, and the relation matrices of a fixed test batch."""
    if teacher_path is None:
        raise ConfigError("a KD-SVD student run needs its teacher: give --teacher PATH")
    train_data, test = load_split(cfg, subset_seed(seed), device)
    student = build_network(cfg, train_data.shape, train_data.num_classes).to(device)   # init from the seed
    teacher, teacher_logits, teacher_cfg, teacher_acc = load_teacher(teacher_path, cfg, train_data.shape,
                                                                       train_data.num_classes, device)
    if len(teacher_logits) != len(test):
        raise ConfigError(f"the teacher at {teacher_path} holds logits for {len(teacher_logits)} test images, this "
                          f"run tests on {len(test)}: rebuild the teacher")
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    record.config["teacher"] = {"path": str(teacher_path), **teacher_cfg, "test_acc": teacher_acc}
    regressors = hint_regressors(cfg.widths[1:], teacher_cfg["widths"][1:]).to(device) \
        if cfg.method == "fitnets" else nn.ModuleList()
    step = StudentStep(cfg, student, teacher, regressors)
    generator = torch.Generator().manual_seed(seed)
    stages = []
    if step.stage == "init":   # FitNets / FSP: the initialisation at the base lr, then the main schedule
        stages.append(("init", dataclasses.replace(cfg, epochs=cfg.init_epochs, lr_schedule="constant")))
    stages.append(("main", cfg))
    done, accs = 0, []
    for stage, stage_cfg in stages:
        step.stage = stage
        optimizer = sgd(step.params, stage_cfg)           # a fresh optimiser: the official momentum reset
        for epoch, loss, step_s in train_epochs(student, train_data, stage_cfg, optimizer, step, generator,
                                                where=f"{cfg.method} ({stage})"):
            row = {"epoch": done + epoch, "stage": stage, "train_loss": loss, "lr": lr_at(stage_cfg, epoch - 1),
                   "step_s": step_s}
            if step.ratio is not None:
                row["grad_ratio"] = step.ratio.item()
            step.probe, step.ratio = True, None
            if stage == "main" and due(epoch, cfg):
                logits = predict_logits(student, test, cfg.eval_batch_size)
                row["test_acc"] = (logits.argmax(1) == test.y).float().mean().item()
                row.update(agreement(logits, teacher_logits))
                accs.append(row["test_acc"])
            record.log(**row)
        done += stage_cfg.epochs
    step.probe = False
    last = record.history[-1]
    ratios = [h["grad_ratio"] for h in record.history if "grad_ratio" in h and h["stage"] == "main"]
    record.summary = {
        "final_test_acc": last["test_acc"], "best_test_acc": max(accs), "final_agreement": last["agreement"],
        "final_kl_teacher_student": last["kl_teacher_student"], "teacher_test_acc": teacher_acc,
        "grad_ratio": sum(ratios) / len(ratios) if ratios else float("nan"),
        "step_s": sum(h["step_s"] for h in record.history) / len(record.history),
        "train_images": len(train_data), "test_images": len(test)}
    if step.distill is not None:
        record.summary["dist_loss_s"] = time_distillation(step.distill, student, teacher,
                                                          fixed_batch(train_data, cfg.batch_size))
    rel = relations(student, teacher, fixed_batch(test, RELATION_IMAGES), cfg.svd_k)
    record.summary["relation_distance"] = rel["distance"]
    record.summary["relation_sample"] = rel["pairs"]
    unchanged = all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    record.summary["teacher_unchanged"] = unchanged
    if not unchanged:
        raise RuntimeError("the teacher's weights or BN statistics changed during the student's training")

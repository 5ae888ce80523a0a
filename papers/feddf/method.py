"""FedDF (Lin et al. 2020, Alg. 1): server-side ensemble distillation after FedAvg, for one architecture
(`feddf`) or several (`feddf_hetero`, with `fedavg_hetero` as its per-architecture FedAvg baseline).

Shapes: K received client models, B distillation batch, C classes.

Per round, following the official `pcode/aggregation/noise_knowledge_transfer.py` (re-implemented):
1. x_0 = the uniform average of the received models' whole state dicts (`fedavg.py::_fedavg`), per
   architecture; it initialises the student (`use_fedavg_as_start`).
2. Teachers: the K received models, frozen, in eval mode. For an unlabelled batch x, the ensemble's
   logits are their uniform average (`update_student_scheme=avg_logits`): z̄ = (1/K) Σ_k f(x; x_k)   [B, C].
3. The student, in train mode (its BatchNorm statistics are re-estimated on the distillation data, on
   genuine batches: the last, shorter batch of an epoch over the pool is kept, never padded), takes Adam
   steps (lr 1e-3, re-created every round, cosine-annealed with T_max = `feddf_cosine_steps` = 10,000, the
   official total_n_server_pseudo_batches, gradient norm clipped at 5) on
   KL(σ(z̄/T) ‖ σ(z_s/T))  =  F.kl_div(log σ(z_s/T), σ(z̄/T), "batchmean"), T = 1, without a T² factor.
4. Every `feddf_val_every` steps the student is scored on the server's labelled validation split (with the
   training transform, as the official split is cut from the training set); the best one is kept, and
   distillation stops after `feddf_patience` steps without improvement, or after `feddf_steps` steps.
   With `feddf_select_on_val: false` it runs `feddf_steps` steps and keeps the last student. With
   `feddf_keep_start: true` (official `return_best_model_on_val`, off by default) the FedAvg start is scored
   before distillation and replaces the best distilled student only if it scores strictly higher.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from common import augment
from common import data as datasets
from common.experiments import ConfigError
from common.fl.aggregation import state_bytes, unstack
from common.fl.engine import ClientUpdate, Method, register_method
from common.models import build_model
from common.train import check_finite
from papers.feddf.config import DISTILLATION_POOLS, FedDFConfig


# ---------------------------------------------------------------------------------------------- the loss

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(σ(z_t/T) ‖ σ(z_s/T)) averaged over the batch, as the official `BaseKTSolver.divergence` (no T²).

    student_logits, teacher_logits: [B, C]."""
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1), reduction="batchmean")


@torch.no_grad()
def ensemble_logits(teachers: list[nn.Module], x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The teachers' logits averaged with `weights` (uniform 1/K by default, `avg_logits`): [B, C].

    Teachers are evaluated in eval mode (their BatchNorm running statistics), as the official solver."""
    if not teachers:
        raise ValueError("ensemble distillation needs at least one teacher model")
    if weights is None:
        weights = torch.full((len(teachers),), 1.0 / len(teachers), device=x.device)
    out = 0.0
    for w, teacher in zip(weights, teachers):
        was_training = teacher.training
        teacher.eval()
        out = out + w * teacher(x)
        teacher.train(was_training)
    return out


# ------------------------------------------------------------------------------------ distillation data

NOISE_BATCH_SIZE = 128   # NoiseKTSolver's default batch_size: the random_data scheme's batch
NOISE_CHUNK_BYTES = 64 * 2 ** 20   # noise is drawn and moved in chunks of at most this many bytes


def moved(draws: list[dict[str, torch.Tensor]], sizes: list[int], device: torch.device) -> list[dict]:
    """Per-batch draws made on the CPU (dicts with the same keys, batch s holding [sizes[s]] tensors) on
    `device`: one copy per key for all the batches, split back into per-batch views."""
    flat = {k: torch.cat([d[k] for d in draws]).to(device).split(sizes) for k in draws[0]}
    return [{k: v[s] for k, v in flat.items()} for s in range(len(sizes))]


class DistillationData:
    """Unlabelled images for the server: a pool of uint8 images [N, C, H, W] (CIFAR-100, Fashion-MNIST, ...)
    normalised with the pool's own mean/std (official `prepare_data.py`) and augmented like the clients'
    data, or random noise. Batches are made on the pool's device (noise: on `device`)."""

    def __init__(self, images: torch.Tensor | None, normalize: Callable, shape: tuple[int, int, int],
                 augmentation: str = "flip_crop", noise: bool = False, device: torch.device | str = "cpu"):
        if not noise and (images is None or len(images) == 0):
            raise ValueError("no distillation data: the unlabelled pool is empty (set feddf_source / "
                             "feddf_source_size, or use feddf_source: noise)")
        if not noise and tuple(images.shape[1:]) != tuple(shape):
            raise ValueError(f"distillation images have shape {tuple(images.shape[1:])}, the task needs {tuple(shape)}")
        self.images, self.normalize, self.shape = images, normalize, tuple(shape)
        self.augmentation, self.noise = augmentation, noise
        self.device = torch.device(device) if noise else images.device

    def __len__(self) -> int:
        return 0 if self.noise else len(self.images)

    @classmethod
    def for_config(cls, cfg, task: datasets.Dataset, seed: int) -> "DistillationData":
        """The source named by cfg.feddf_source, fitted to the task's image shape [C, H, W], on the task's
        device (the pool is picked on the CPU and moved once)."""
        shape = task.shape
        if cfg.feddf_source == "noise":
            return cls(None, noise_to_unit_range, shape, "none", noise=True, device=task.device)
        pool = datasets.load(*DISTILLATION_POOLS[cfg.feddf_source])
        images = fit_images(pool.x, shape)
        if cfg.feddf_source_size:
            if cfg.feddf_source_size > len(images):
                raise ConfigError(f"feddf_source_size {cfg.feddf_source_size} exceeds the {len(images)} images of "
                                  f"{cfg.feddf_source}")
            gen = torch.Generator().manual_seed(seed + 17)
            pick = torch.randperm(len(images), generator=gen, device=gen.device)
            images = images[pick[:cfg.feddf_source_size]]
        return cls(images.to(task.device), own_normalization(pool, shape[0], task.device), shape, cfg.augment)

    def batches(self, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """`steps` normalised batches [B, C, H, W] on the data's device: shuffled epochs over the pool, each
        ending with its shorter last batch (a DataLoader without drop_last), or fresh noise images of
        NOISE_BATCH_SIZE (official `_create_data_randomly`: Gaussian noise min-max scaled per batch, then
        mapped to [-1, 1]). The draws are made on `generator` (the CPU), batch by batch as a per-step loop
        would, so a seed gives the same batches on any device."""
        if self.noise:
            yield from self._noise_batches(steps, generator)
        else:
            yield from self._pool_batches(batch_size, steps, generator)

    def _pool_batches(self, batch_size: int, steps: int,
                      generator: torch.Generator) -> Iterator[torch.Tensor]:
        """The phase's indices and augmentation are drawn at once and moved in one copy per tensor."""
        draws = []
        while len(draws) < steps:
            order = torch.randperm(len(self.images), generator=generator, device=generator.device)
            for idx in order.split(batch_size)[:steps - len(draws)]:
                params = augment.draw(self.augmentation, (len(idx),), self.shape[-1], generator)
                draws.append({"idx": idx, **params})
        for params in moved(draws, [len(d["idx"]) for d in draws], self.device):
            yield augment.apply(self.images[params.pop("idx")], self.normalize, params)

    def _noise_batches(self, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Noise drawn in chunks of at most NOISE_CHUNK_BYTES (a whole phase can be gigabytes), each moved in
        one copy."""
        per_chunk = max(1, NOISE_CHUNK_BYTES // (4 * NOISE_BATCH_SIZE * math.prod(self.shape)))
        for first in range(0, steps, per_chunk):
            n = min(per_chunk, steps - first)
            chunk = torch.stack([torch.randn(NOISE_BATCH_SIZE, *self.shape, generator=generator,
                                             device=generator.device) for _ in range(n)])
            for z in chunk.to(self.device):
                yield self.normalize(z)


def own_normalization(pool: datasets.Dataset, channels: int, device: torch.device | str = "cpu") -> Callable:
    """The pool's own mean/std (official `prepare_data.py`: CIFAR-100's for CIFAR-100 images), on `device`;
    when the pool was converted to another channel count (grey <-> RGB, `fit_images`), its channel-averaged
    mean/std."""
    mean, std = pool.mean, pool.std
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (mean, std))
    return lambda xb: (xb.float().div(255.0) - mean) / std


def noise_to_unit_range(z: torch.Tensor) -> torch.Tensor:
    """Gaussian noise [B, C, H, W] min-max scaled to [0, 1] over the batch, then to [-1, 1] (`pn_normalize`)."""
    return ((z - z.min()) / (z.max() - z.min()) - 0.5) * 2


def fit_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images [N, C', H', W'] to [N, C, H, W]: grey -> RGB by repetition, zero-padded or centre-cropped."""
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.repeat(1, c, 1, 1)
        elif c == 1:
            x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
        else:
            raise ValueError(f"cannot map {x.shape[1]}-channel images to {c} channels")
    dh, dw = h - x.shape[2], w - x.shape[3]
    if dh or dw:
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))   # negative padding crops
    return x.contiguous()


# --------------------------------------------------------------------------------------- distillation

@dataclass
class DistillLog:
    steps: int = 0              # steps taken before stopping
    best_step: int = 0          # step of the kept student (0: the start, or no validation and the last one)
    best_val_acc: float = float("nan")
    first_loss: float = float("nan")
    last_loss: float = float("nan")


def distill(students: dict[str, nn.Module], teachers: list[nn.Module], batches: Iterator[torch.Tensor], *,
            steps: int, cosine_steps: int | None = None, lr: float = 1e-3, temperature: float = 1.0,
            clip: float = 5.0, val_every: int = 100, patience: int = 1000,
            validate: Callable[[nn.Module], float] | None = None, keep_start: bool = False) -> dict[str, DistillLog]:
    """Distil the ensemble of `teachers` into every student (one optimiser each) on shared batches, as the
    official `NoiseKTSolver.distillation`.

    Each student: Adam(lr), CosineAnnealingLR(T_max=cosine_steps, default `steps`), grad-norm clip; in train
    mode. With `validate` (model -> accuracy on the labelled server split) it is scored every `val_every`
    steps, keeps its best-scoring weights (a later student must score strictly higher) and stops after
    `patience` steps without improvement or after `steps` steps; without, it runs `steps` steps and is
    returned as it ends. With `keep_start` the undistilled student is scored before distillation and, after
    it, replaces the best distilled student only if it scores strictly higher (the distilled one wins ties).
    Students are modified in place. The steps never wait for the device: the losses stay device tensors, read
    (and checked for divergence) once when distillation ends; each validation reads its accuracy once."""
    if not students:
        raise ValueError("distill needs at least one student")
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    opts = {n: torch.optim.Adam(s.parameters(), lr=lr) for n, s in students.items()}
    scheds = {n: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=cosine_steps or steps) for n, o in opts.items()}
    logs = {n: DistillLog() for n in students}
    best = {n: None for n in students}
    losses: dict[str, list[torch.Tensor] | None] = {n: None for n in students}   # see track_loss
    active = set(students)

    def check(name: str, step: int) -> None:
        acc = validate(students[name])
        log = logs[name]
        if best[name] is None or acc > log.best_val_acc:
            log.best_val_acc, log.best_step = acc, step
            best[name] = copy.deepcopy(students[name].state_dict())
        elif step - log.best_step >= patience:
            active.discard(name)

    start = {}
    if validate is not None and keep_start:
        start = {n: (validate(s), copy.deepcopy(s.state_dict())) for n, s in students.items()}
    for s in students.values():
        s.train()
    for step in range(1, steps + 1):
        if not active:
            break
        try:
            x = next(batches)
        except StopIteration:
            raise ValueError("no distillation data: the batch iterator is empty") from None
        target = ensemble_logits(teachers, x)                       # [B, C]
        for name in sorted(active):
            student, opt = students[name], opts[name]
            loss = distillation_loss(student(x), target, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), clip)
            opt.step()
            scheds[name].step()
            logs[name].steps = step
            losses[name] = track_loss(losses[name], loss.detach())
            if validate is not None and step % val_every == 0:
                check(name, step)
    read_losses(logs, losses)
    for name, student in students.items():
        log = logs[name]
        if name in start and (best[name] is None or start[name][0] > log.best_val_acc):
            log.best_val_acc, log.best_step = start[name][0], 0
            best[name] = start[name][1]
        if validate is not None and best[name] is not None:
            student.load_state_dict(best[name])
    return logs


def track_loss(track: list[torch.Tensor] | None, loss: torch.Tensor) -> list[torch.Tensor]:
    """[first, last, running sum] of a student's losses as device tensors (the sum is finite iff every loss
    is)."""
    return [loss, loss, loss] if track is None else [track[0], loss, track[2] + loss]


def read_losses(logs: dict[str, DistillLog], losses: dict[str, list[torch.Tensor] | None]) -> None:
    """One device -> host read for every student's first and last loss; a diverged student raises."""
    names = [n for n in logs if losses[n] is not None]
    if not names:
        return
    values = torch.stack([torch.stack(losses[n]) for n in names]).tolist()
    for name, (first, last, total) in zip(names, values):
        check_finite(total, f"the distillation of {name}")
        logs[name].first_loss, logs[name].last_loss = first, last


def distillation_generator(seed: int, round_: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + round_) * 7919 + 1)


# ------------------------------------------------------------------------------------------- methods

FOREIGN_CONFIG_STEPS = 20


def knobs(cfg) -> FedDFConfig:
    """FedDF's knobs for any FL config: `cfg` itself when it is a FedDFConfig, else FedDF's defaults with the
    federated setting of `cfg` and a short fixed distillation (so the engine's every-method test can run these
    methods on a plain FLConfig, which has no labelled server split)."""
    if isinstance(cfg, FedDFConfig):
        return cfg
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if hasattr(FedDFConfig, f.name)}
    # no labelled server split there: a short fixed distillation (FOREIGN_CONFIG_STEPS), the last student kept
    return dataclasses.replace(FedDFConfig(), **{**shared, "method": "fedavg", "feddf_select_on_val": False,
                                                 "feddf_steps": FOREIGN_CONFIG_STEPS,
                                                 "feddf_cosine_steps": FOREIGN_CONFIG_STEPS})


class _ServerDistillation:
    """What the FedDF methods share: the distillation data, the validation split and the call to `distill`."""

    def setup_distillation(self, cfg, fed) -> None:
        self.knobs = knobs(cfg)
        self.distill_data = DistillationData.for_config(self.knobs, fed.train, fed.seed)
        self.distill_logs: dict[str, DistillLog] = {}
        self.val_generator = torch.Generator().manual_seed(fed.seed * 1_000_003 + 29)

    @torch.no_grad()
    def validation_accuracy(self, model: nn.Module) -> float:
        """Accuracy on the server's labelled split, its images drawn through the clients' training transform
        (the official validation split is a part of the training set and keeps its transform). The transform's
        draws are made on the CPU and moved in one copy; one device -> host read."""
        val, batch = self.fed.server_val, self.cfg.eval_batch_size
        sizes = [min(batch, len(val) - i) for i in range(0, len(val), batch)]
        draws = [augment.draw(self.cfg.augment, (n,), val.shape[-1], self.val_generator) for n in sizes]
        was_training = model.training
        model.eval()
        correct = val.y.new_zeros(())
        for x, y, params in zip(val.x.split(sizes), val.y.split(sizes), moved(draws, sizes, val.device)):
            correct += (model(augment.apply(x, val.normalize, params)).argmax(1) == y).sum()
        model.train(was_training)
        return correct.item() / len(val)

    def run_distillation(self, students: dict[str, nn.Module], teachers: list[nn.Module], round_: int) -> None:
        cfg = self.knobs
        use_val = cfg.feddf_select_on_val
        if use_val and (self.fed.server_val is None or len(self.fed.server_val) == 0):
            raise ConfigError("validation-based selection needs a server validation split (server_val_fraction > 0)")
        generator = distillation_generator(self.fed.seed, round_)
        batches = self.distill_data.batches(cfg.feddf_batch_size, cfg.feddf_steps, generator)
        self.distill_logs = distill(
            students, teachers, batches,
            steps=cfg.feddf_steps, cosine_steps=cfg.feddf_cosine_steps, lr=cfg.feddf_lr, temperature=cfg.feddf_temperature, clip=cfg.feddf_clip,
            val_every=cfg.feddf_val_every, patience=cfg.feddf_patience,
            validate=self.validation_accuracy if use_val else None, keep_start=cfg.feddf_keep_start)

    def distill_metrics(self) -> dict:
        if not self.distill_logs:
            return {}
        logs = list(self.distill_logs.values())
        return {"distill_steps": sum(l.steps for l in logs) / len(logs),
                "distill_best_step": sum(l.best_step for l in logs) / len(logs),
                "distill_loss_first": sum(l.first_loss for l in logs) / len(logs),
                "distill_loss_last": sum(l.last_loss for l in logs) / len(logs)}


@torch.no_grad()
def ensemble_accuracy(teachers: list[nn.Module], data: datasets.Dataset, batch_size: int = 1000) -> float:
    """Test accuracy of the teachers' averaged logits (the distillation target) on a labelled set, counted on
    the data's device and read once."""
    correct = data.y.new_zeros(())
    for i in range(0, len(data), batch_size):
        x = data.normalize(data.x[i:i + batch_size])
        correct += (ensemble_logits(teachers, x).argmax(1) == data.y[i:i + batch_size]).sum()
    return correct.item() / max(1, len(data))


def client_models(method: Method, update: ClientUpdate) -> list[nn.Module]:
    """The K received models as modules (the teachers)."""
    return [method.model_with({**unstack(update.params, k), **unstack(update.buffers, k)})
            for k in range(len(update.clients))]


@register_method("feddf")
class FedDF(_ServerDistillation, Method):
    """FedDF for one architecture: FedAvg, then the average is distilled from the received models."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.setup_distillation(cfg, fed)
        self.fedavg_state = None

    def server_update(self, state, averaged, update, round_):
        self.fedavg_state = averaged
        student = self.model_with(averaged)
        self.teachers = client_models(self, update)
        self.run_distillation({self.cfg.model: student}, self.teachers, round_)
        return {k: v.detach().clone() for k, v in student.state_dict().items()}

    def evaluate(self, state, round_):
        out = super().evaluate(state, round_)
        if self.fedavg_state is not None:   # the same round's plain average and ensemble: what distillation had
            out["fedavg_test_acc"] = super().evaluate(self.fedavg_state, round_)["test_acc"]
            out["ensemble_test_acc"] = ensemble_accuracy(self.teachers, self.fed.test, self.cfg.eval_batch_size)
        return {**out, **self.distill_metrics()}


@register_method("fedavg_hetero")
class HeteroFedAvg(Method):
    """Clients of several architectures in contiguous blocks (client c of n trains feddf_archs[c * A // n], as
    the official `num_clients_per_model`); FedAvg within each architecture. The engine's `state` is the
    architecture `cfg.model`'s; the others are held here."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.archs = list(getattr(cfg, "feddf_archs", ())) or [cfg.model]   # none given: one architecture
        self.arch_of = [self.archs[c * len(self.archs) // cfg.n_clients] for c in range(cfg.n_clients)]
        shape, classes = fed.train.shape, fed.train.num_classes
        # another architecture is initialised on the CPU like the engine's model, then moved to the device
        self.members = {a: Method(cfg, fed, model if a == cfg.model else
                                  build_model(a, shape, classes).to(fed.device)) for a in self.archs}
        self.states = {a: {k: v.detach().clone() for k, v in m.model.state_dict().items()}
                       for a, m in self.members.items()}
        self.averaged: dict[str, dict] = {}
        self.round_bytes = self.round_clients = 0

    def client_update(self, state, clients, round_):
        self.states[self.cfg.model] = state
        by_arch = {}
        for a in self.archs:
            mine = [c for c in clients if self.arch_of[c] == a]
            if mine:
                by_arch[a] = self.members[a].client_update(self.states[a], mine, round_)
        self.round_bytes = sum(state_bytes(self.states[a]) * len(u.clients) for a, u in by_arch.items())
        self.round_clients = len(clients)
        loss = torch.cat([u.loss for u in by_arch.values()])
        sizes = torch.cat([u.n_samples for u in by_arch.values()])
        return ClientUpdate(clients, {}, {}, sizes, loss, extras={"by_arch": by_arch})

    def aggregate(self, state, update):
        self.averaged = {a: self.members[a].aggregate(self.states[a], u) for a, u in update.extras["by_arch"].items()}
        return self.averaged.get(self.cfg.model, state)

    def server_update(self, state, averaged, update, round_):
        self.states.update(self.averaged)
        return self.states[self.cfg.model]

    def message_bytes(self, state):
        """Per sampled client on average: each sends and receives its own architecture's model."""
        per_client = self.round_bytes // max(1, self.round_clients)
        return per_client, per_client

    def evaluate(self, state, round_):
        self.states[self.cfg.model] = state
        out = {}
        for a in self.archs:
            out[f"test_acc_{a}"] = self.members[a].evaluate(self.states[a], round_)["test_acc"]
        out["test_acc"] = sum(out[f"test_acc_{a}"] for a in self.archs) / len(self.archs)
        out["test_loss"] = float("nan")
        return out


@register_method("feddf_hetero")
class HeteroFedDF(_ServerDistillation, HeteroFedAvg):
    """FedDF across architectures: the average of every architecture received this round is distilled from
    the ensemble of all received models, of every architecture; an architecture none of whose clients was
    sampled keeps its server model (official: only the received architectures' fedavg_models are distilled)."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.setup_distillation(cfg, fed)

    def server_update(self, state, averaged, update, round_):
        by_arch = update.extras["by_arch"]
        teachers = [t for a, u in by_arch.items() for t in client_models(self.members[a], u)]
        students = {a: self.members[a].model_with(avg) for a, avg in self.averaged.items()}
        self.run_distillation(students, teachers, round_)
        self.states.update({a: {k: v.detach().clone() for k, v in s.state_dict().items()} for a, s in students.items()})
        return self.states[self.cfg.model]

    def evaluate(self, state, round_):
        return {**super().evaluate(state, round_), **self.distill_metrics()}

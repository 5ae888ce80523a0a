"""FedGen (Zhu, Hong & Zhou, ICML 2021) and the baselines of its Table 1, on the shared FL engine.

Shapes: K sampled users, N = 20 users in all, B batch, C classes, D = 32 latent dimensions, E noise dimensions.

Everything follows the official code (github.com/zhuangdizhu/FedGen); the file each piece mirrors is named
in its docstring. The round, as `serverpFedGen.FedGen.train` runs it:
  1. broadcast the global *parameters* (each user keeps its own BatchNorm statistics), and the generator;
  2. K users take 20 SGD steps on  NLL(x, y) + beta_t KL(softmax(h(G(y))) || p(x)) + alpha_t CE(h(G(y')), y')
     (`FedGen.local_penalty`, from the second round on);
  3. the server trains G for 50 Adam steps against the freshly trained users' last layers
     (`FedGen.server_update`): label-count-weighted teacher loss + diversity loss;
  4. the size-weighted average of the parameters is the new global model (BN buffers are not averaged).
Every user draws its batches from one shuffled DataLoader kept across rounds (`loader_batches`).

Two evaluation protocols are logged every round (`OfficialProtocol.evaluate`):
  paper_acc: the official one: each of the N users runs the global parameters with *its own* BatchNorm
             statistics on its own label-restricted test split; accuracy pooled (`serverbase.evaluate`);
             the paper reports the mean of the top-5 rounds per seed (`utils/plot_utils.py`).
  test_acc:  the standard one: the aggregated model (global parameters, BN statistics averaged over the
             round's users with the same size weights) on the test set: the engine's curve subset when
             `test_subset` is set, the full official test set at the final round.

Device: the data, the models, the generator and every accumulator live on the run's device (`fed.device`). The
batch plan and the generator's labels and noise are drawn on CPU generators (same draws on any device) and
moved once per round; the noise and labels drawn inside the users' loss come from the global RNG of the
tensors' device (CUDA's on a GPU). Statistics are read once per round (generator) or evaluation.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.experiments import ConfigError
from common.fl import local
from common.fl.aggregation import stack_states, state_bytes, weighted_average
from common.fl.engine import ClientUpdate, Method, register_method
from common import augment
from common.fl.methods import Centralised, FedProx
from common.partition import register_partition
from papers.fedgen.config import FedGenConfig


# ---------------------------------------------------------------------------------------------- data
@register_partition("fedgen_dirichlet")
def fedgen_dirichlet_partition(labels: np.ndarray, n_clients: int, seed: int, alpha: float,
                               sampling_ratio: float = 0.5, min_size: int = 10, data_seed: int = -1,
                               max_tries: int = 1000) -> list[torch.Tensor]:
    """`data/Mnist/generate_niid_dirichlet.py::devide_train_data`: classes in shuffled order; from each class
    keep min(ratio * N / users, ratio * n_class) samples (1,500 of MNIST's ~6,000, so 15,000 in all); split them
    with q ~ Dir(alpha), zeroing q for users that already hold >= ratio * N / users samples; retry until every
    user has >= min_size. `data_seed` >= 0 fixes the split across run seeds, as the official script (seed 42)."""
    rng = np.random.default_rng(seed if data_seed < 0 else data_seed)
    labels = np.asarray(labels)
    classes = rng.permutation(np.unique(labels))
    cap = sampling_ratio * len(labels) / n_clients
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients)
        for c in classes:
            idx = rng.permutation(by_class[c])
            if sampling_ratio < 1:
                idx = idx[:int(min(cap, int(sampling_ratio * len(idx))))]
            q = rng.dirichlet(np.full(n_clients, alpha)) * (sizes < cap)
            cuts = (np.cumsum(q / q.sum()) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_size:
            return [torch.from_numpy(np.sort(np.concatenate(p))) for p in parts]
    raise ConfigError(f"no FedGen Dirichlet(alpha={alpha}) split gave every user >= {min_size} samples")


def user_test_splits(train_parts: list[torch.Tensor], train_y: torch.Tensor, test_y: torch.Tensor,
                     num_classes: int) -> list[torch.Tensor]:
    """`divide_test_data` with unknown_test=0: user u gets, for every label it holds in training,
    int(n_test(label) / N) test images of that label, taken in order without overlap. Indices into `test`."""
    n_users = len(train_parts)
    by_label = [torch.nonzero(test_y == c).flatten() for c in range(num_classes)]
    pointer = [0] * num_classes
    out = []
    for part in train_parts:
        held = torch.unique(train_y[part.to(train_y.device)]).tolist()
        chunks = []
        for c in held:
            n = len(by_label[c]) // n_users
            chunks.append(by_label[c][pointer[c]:pointer[c] + n])
            pointer[c] += n
        out.append(torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long, device=test_y.device))
    return out


def loader_batches(n: int, batch_size: int, start: int, steps: int, seed: int, user: int) -> torch.Tensor:
    """Batches start .. start + steps - 1 of one user's endless DataLoader (`userbase.get_next_train_batch`:
    DataLoader(shuffle=True, drop_last=True), its iterator kept across rounds and restarted only when
    exhausted). Epoch e is a fresh permutation (seeded by run seed, epoch and user) cut to floor(n / B) whole
    batches, so a user's batches continue its epoch from one round to the next. A user with n < B, for which
    the official loader yields no batch at all, fills its batch from consecutive permutations.
    Returns positions [steps, B] into the user's samples, on the CPU."""
    epoch_len = (n // batch_size) * batch_size or n
    first, last = start * batch_size, (start + steps) * batch_size
    epochs = range(first // epoch_len, -(-last // epoch_len))
    gens = [local.client_generator(seed, e, user) for e in epochs]
    stream = torch.cat([torch.randperm(n, generator=g, device="cpu")[:epoch_len] for g in gens])
    offset = epochs[0] * epoch_len
    return stream[first - offset:last - offset].view(steps, batch_size)


# ---------------------------------------------------------------------------------------------- generator
class ConditionalGenerator(nn.Module):
    """G(z | y), `FLAlgorithms/trainmodel/generator.py` with embedding=0: [eps (E) ; one-hot(y) (C)] -> FC(hidden)
    -> BatchNorm1d -> ReLU -> FC(D). eps ~ U[0, 1)^E (`torch.rand`, although the code comment says Gaussian)."""

    def __init__(self, num_classes: int = 10, noise_dim: int = 32, hidden: int = 256, latent: int = 32):
        super().__init__()
        self.num_classes, self.noise_dim = num_classes, noise_dim
        self.hidden = nn.Sequential(nn.Linear(noise_dim + num_classes, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.out = nn.Linear(hidden, latent)

    def forward(self, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """y [B] int64, eps [B, E] -> latent z [B, D]."""
        onehot = (y.unsqueeze(-1) == torch.arange(self.num_classes, device=y.device)).to(eps.dtype)  # [B, C]
        return self.out(self.hidden(torch.cat([eps, onehot], -1)))

    def sample(self, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """G(y) with noise drawn from a CPU `generator` (the same draws on any device), moved to y's."""
        eps = torch.rand(len(y), self.noise_dim, generator=generator, device="cpu").to(y.device)
        return self(y, eps), eps


def generator_draws(gen: torch.Generator, steps: int, n_labels: int, batch: int, noise_dim: int):
    """The server's draws for `steps` generator steps, made on the CPU `gen` in the order the steps use them
    (label positions, then noise, per step): positions [S, B] into the qualified labels, eps [S, B, E]."""
    pos = torch.empty(steps, batch, dtype=torch.long, device="cpu")
    eps = torch.empty(steps, batch, noise_dim, device="cpu")
    for s in range(steps):
        pos[s] = torch.randint(0, n_labels, (batch,), generator=gen, device="cpu")
        eps[s] = torch.rand(batch, noise_dim, generator=gen, device="cpu")
    return pos, eps


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How often each label occurs in y [N] -> [C] int64 (as `torch.bincount`, without its device sync)."""
    return (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).sum(0)


def diversity_loss(eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`DiversityLoss('l1')`: exp(-mean_ij[ d2(eps_i, eps_j) * d1(z_i, z_j) ]), with d2 the mean squared and d1
    the mean absolute difference over dimensions. eps [B, E], z [B, D] -> scalar; smaller = more diverse."""
    noise_dist = (eps.unsqueeze(0) - eps.unsqueeze(1)).pow(2).mean(-1)   # [B, B]
    z_dist = (z.unsqueeze(0) - z.unsqueeze(1)).abs().mean(-1)            # [B, B]
    return torch.exp(-(noise_dist * z_dist).mean())


def label_weights(counts: torch.Tensor) -> torch.Tensor:
    """`get_label_weights`: counts [K, C] (this round's label counts, starting at 1) -> w [C, K], w[y, k] =
    n_k(y) / sum_k' n_k'(y): how much user k's head is trusted as a teacher for label y."""
    counts = counts.to(torch.float32)
    return (counts / counts.sum(0, keepdim=True)).T


def qualified_labels(counts: torch.Tensor, min_count: int = 1) -> torch.Tensor:
    """Labels some sampled user counted more than `min_count` times (MIN_SAMPLES_PER_LABEL = 1)."""
    return torch.nonzero(counts.max(0).values > min_count).flatten()


def teacher_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, how: str = "official") -> torch.Tensor:
    """The generator's teacher loss, summed over users. logits [K, B, C] (each user's last layer on G(y)),
    y [B], weights [C, K] from `label_weights`.

    per_sample: sum_k mean_i[ CE_k,i * w(y_i, k) ]  (what the paper describes).
    official:   sum_k mean_i[CE_k,i] * mean_i[w(y_i, k)]: serverpFedGen.train_generator multiplies a [B] loss by
                a [B, 1] weight, which broadcasts to [B, B] before the mean, so each user's weight is its batch
                average, not per sample."""
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]), reduction="none").view(logits.shape[:2])
    w = weights[y].T                                                     # [K, B]
    if how == "per_sample":
        return (ce * w).mean(1).sum()
    return (ce.mean(1) * w.mean(1)).sum()


def regulariser_weight(initial: float, decay: float, round_: int) -> float:
    """`UserpFedGen.exp_lr_scheduler`: max(1e-4, w0 * decay ** glob_iter), glob_iter = round - 1 (0-based)."""
    return max(1e-4, initial * decay ** (round_ - 1))


# ---------------------------------------------------------------------------------------------- protocol
class OfficialProtocol(Method):
    """The behaviour every method of the official code shares (FedAvg here):

    - each user draws its batches from its own DataLoader iterator, kept across rounds (`loader_batches`);
    - users keep their own BatchNorm statistics across rounds (`send_parameters` copies parameters only), so a
      user starts local training from the global parameters and its own buffers;
    - the server averages parameters only (cfg.aggregate_buffers = False);
    - evaluation logs both protocols (module docstring)."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.eval_model = copy.deepcopy(model).eval()
        self.initial_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.client_buffers: dict[int, dict] = {}
        self.round_buffers = dict(self.initial_buffers)   # size-weighted average of this round's BN statistics
        self.batches_drawn = [0] * cfg.n_clients           # each user's position in its DataLoader stream
        self.plan: local.Plan | None = None                # this round's batches
        # the paper protocol's per-user splits are cut from the full official test set (`divide_test_data`)
        full = fed.full_test if fed.full_test is not None else fed.test
        self.user_tests = user_test_splits(fed.parts, fed.train.y, full.y, fed.train.num_classes)
        self.user_test_x, self.user_test_y = full.normalize(full.x), full.y   # [T, 1, 28, 28], normalised once
        self.standard_test: tuple = (None, None, None)     # (source split, x, y) for the standard protocol
        self.extra_metrics: dict = {}

    # -- users draw from their kept DataLoader iterators, and keep their BN statistics
    def make_plan(self, clients: list[int], round_: int) -> local.Plan:
        """This round's `local_steps` batches of each sampled user (`loader_batches`), as an engine plan
        drawn on the CPU and moved to the run's device in one copy."""
        cfg = self.cfg
        idx, aug = [], []
        for c in clients:
            pos = loader_batches(len(self.fed.parts[c]), cfg.batch_size, self.batches_drawn[c], cfg.local_steps,
                                 self.fed.seed, c)
            self.batches_drawn[c] += cfg.local_steps
            idx.append(self.fed.parts[c][pos])
            aug.append(augment.draw(cfg.augment, tuple(pos.shape), self.fed.train.shape[-1],
                                    local.client_generator(self.fed.seed, round_, c)))
        idx = torch.stack(idx)                                                # [K, S, B]
        plan = local.Plan(idx, torch.ones(idx.shape, device="cpu"),
                          torch.ones(idx.shape[:2], dtype=torch.bool, device="cpu"),
                          {k: torch.stack([a[k] for a in aug]) for k in aug[0]})
        return plan.to(self.fed.device)

    def client_update(self, state, clients, round_):
        """The engine's local SGD (`Method.client_update`) on the batches of `make_plan`; every batch is whole,
        so the vectorised path runs with BatchNorm."""
        cfg = self.cfg
        start = self.start_state(state, clients)
        self.plan = self.make_plan(clients, round_)
        shared, mine = self.round_context(state, clients, round_)
        train = local.train_vectorized if cfg.vectorize and self.vectorizable else local.train_sequential
        params, buffers, loss = train(self, self.model, {n: start[n] for n in self.param_names},
                                      {n: start[n] for n in self.buffer_names}, self.fed.train, self.plan,
                                      cfg.lr * cfg.lr_decay ** (round_ - 1), shared, mine)
        return ClientUpdate(clients, params, buffers, self.client_sizes(clients), loss)

    def round_samples(self, k: int) -> torch.Tensor:
        """Indices of the training samples user k of this round drew (all its batches, flattened); the plan's
        active steps are a prefix, counted on the host."""
        return self.plan.idx[k, :self.plan.n_steps[k]].flatten()

    def buffers_of(self, c: int) -> dict:
        return self.client_buffers.get(c, self.initial_buffers)

    def start_state(self, state, clients):
        return stack_states([{**{n: state[n] for n in self.param_names}, **self.buffers_of(c)} for c in clients])

    def aggregate(self, state, update: ClientUpdate):
        for k, c in enumerate(update.clients):
            self.client_buffers[c] = {n: update.buffers[n][k].clone() for n in self.buffer_names}
        self.round_buffers = weighted_average(update.buffers, self.aggregation_weights(update))
        return super().aggregate(state, update)

    # -- evaluation
    @torch.no_grad()
    def logits(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        if not len(x):
            return x.new_zeros(0, self.fed.train.num_classes)
        return torch.cat([functional_call(self.eval_model, (params, buffers), (x[i:i + 4000],))
                          for i in range(0, len(x), 4000)])

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The standard protocol's (x normalised, y): the engine's current test split (the curve subset when
        `test_subset` is set, the full official test set at the final round), normalised once per split."""
        source, x, y = self.standard_test
        if source is not self.fed.test:
            x, y = self.fed.test.normalize(self.fed.test.x), self.fed.test.y
            self.standard_test = (self.fed.test, x, y)
        return x, y

    def user_params(self, state: dict, c: int) -> dict:
        return {n: state[n] for n in self.param_names}

    def paper_accuracy(self, state: dict) -> torch.Tensor:
        """(accuracy, loss) pooled over all N users' label-restricted test splits, each user running
        `user_params(state, c)` with its own BN statistics (`serverbase.evaluate`, `userbase.test`).
        A float64 tensor [2] on the device, summed in float64 (as Python floats were), read by the caller."""
        sums, total = torch.zeros(2, dtype=torch.float64, device=self.user_test_y.device), 0   # correct, loss
        for c, idx in enumerate(self.user_tests):
            if len(idx) == 0:
                continue
            out = self.logits(self.user_params(state, c), self.buffers_of(c), self.user_test_x[idx])
            sums += torch.stack([(out.argmax(1) == self.user_test_y[idx]).sum().double(),
                                 F.cross_entropy(out, self.user_test_y[idx], reduction="sum").double()])
            total += len(idx)
        return sums / max(1, total)

    def evaluate(self, state, round_):
        """Both protocols, read from the device in one go."""
        params = {n: state[n] for n in self.param_names}
        x, y = self.test_data()
        out = self.logits(params, self.round_buffers, x)
        standard = torch.stack([(out.argmax(1) == y).float().mean(), F.cross_entropy(out, y)]).double()
        values = torch.cat([standard, self.paper_accuracy(state)]).tolist()
        metrics = dict(zip(("test_acc", "test_loss", "paper_acc", "paper_loss"), values))
        return {**metrics, **self.extra_metrics}


class FedAvg(OfficialProtocol):
    """FedAvg (`serveravg.py` / `useravg.py`) under the official protocol."""

    name = "fedavg"


class FedProxOfficial(OfficialProtocol, FedProx):
    """FedProx (`serverFedProx.py`, `FedProxOptimizer`): w -= lr (grad + lamda (w - w_global) + mu w), lamda =
    cfg.prox_mu = 1 and the optimiser's default mu = cfg.prox_decay = 1e-3 (a weight decay on every parameter),
    i.e. the penalty lamda/2 ||w - w_global||^2 + mu/2 ||w||^2."""

    name = "fedprox"

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        decay = 0.5 * self.cfg.prox_decay * sum((p ** 2).sum() for p in params.values())
        return super().local_penalty(params, x, y, w, logits, shared, mine) + decay


class FedEnsemble(OfficialProtocol):
    """FedEnsemble (`serverpFedEnsemble.py`): FedAvg training; evaluated as the logit-sum ensemble of all N users'
    models after the round (`evaluate_ensemble(selected=False)`): the sampled users' freshly trained models and,
    for the others, the parameters broadcast at the start of the round with their own BN statistics. The paper
    protocol pools the users' test splits; the standard one uses the full test set."""

    name = "fedensemble"

    def aggregate(self, state, update):
        self.members = {c: {n: state[n] for n in self.param_names} for c in range(self.cfg.n_clients)}
        for k, c in enumerate(update.clients):
            self.members[c] = {n: update.params[n][k] for n in self.param_names}
        return super().aggregate(state, update)

    def ensemble_logits(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.logits(self.members[c], self.buffers_of(c), x) for c in range(self.cfg.n_clients))

    def ensemble_metrics(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(accuracy, loss) of the ensemble on (x, y), a tensor [2] on the device."""
        out = self.ensemble_logits(x)
        return torch.stack([(out.argmax(1) == y).float().mean(), F.cross_entropy(out, y)])

    def evaluate(self, state, round_):
        pooled = torch.cat(self.user_tests)
        metrics = [self.ensemble_metrics(self.user_test_x[pooled], self.user_test_y[pooled])]
        if round_ % 10 == 0 or round_ == self.cfg.rounds:   # N forward passes of the test set: costly
            metrics.append(self.ensemble_metrics(*self.test_data()))
        values = torch.cat(metrics).tolist() + [float("nan")] * (4 - 2 * len(metrics))   # one read
        return dict(zip(("paper_acc", "paper_loss", "test_acc", "test_loss"), values))


# ---------------------------------------------------------------------------------------------- FedDistill
class FedDistill(OfficialProtocol):
    """FedDistill (`serverFedDistill.py`, `userFedDistill.py`): users share per-label average logits, not models.

    Each user tracks cumulative logit sums per label (counts start at 1, never reset); after a round the server
    averages the sampled users' per-label means, and the next round's users add
    distill_weight * KL(softmax(global_logits[y]) || p(x)) to their NLL. Without FL each user keeps its own model
    (never averaged; a never-sampled user keeps its initial model); `FedDistillFL` also averages parameters."""

    name = "feddistill"
    share_model = False

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        C = fed.train.num_classes
        self.logit_sums = torch.zeros(cfg.n_clients, C, C, device=fed.device)
        self.logit_counts = torch.ones(cfg.n_clients, C, device=fed.device)
        self.global_logits: torch.Tensor | None = None
        init = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.client_params: dict[int, dict] = {c: init for c in range(cfg.n_clients)}

    def start_state(self, state, clients):
        if self.share_model:
            return super().start_state(state, clients)
        return stack_states([{**self.client_params[c], **self.buffers_of(c)} for c in clients])

    def round_context(self, state, clients, round_):
        return ({"global_logits": self.global_logits} if self.global_logits is not None else {}), {}

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        if "global_logits" not in shared:
            return logits.new_zeros(())
        target = F.softmax(shared["global_logits"][y], -1)                  # [B, C]
        kl = (torch.special.xlogy(target, target) - target * F.log_softmax(logits, -1)).sum(-1)
        return self.cfg.distill_weight * (kl * w).sum() / w.sum().clamp_min(1.0)

    def client_update(self, state, clients, round_):
        update = super().client_update(state, clients, round_)
        # LogitTracker: the official code adds each step's training logits; we add the logits of the round's
        # batches under the model at the end of the round (see README, deviations)
        for k, c in enumerate(clients):
            idx = self.round_samples(k)
            x, y = self.fed.train.normalize(self.fed.train.x[idx]), self.fed.train.y[idx]
            out = self.logits({n: update.params[n][k] for n in self.param_names},
                              {n: update.buffers[n][k] for n in self.buffer_names}, x)
            self.logit_sums[c].index_add_(0, y, out)
            self.logit_counts[c] += class_counts(y, self.logit_counts.shape[1]).float()
        rows = torch.tensor(clients, device=self.logit_sums.device)
        means = self.logit_sums[rows] / self.logit_counts[rows].unsqueeze(-1)   # [K, C, C]
        self.global_logits = means.mean(0)
        return update

    def aggregate(self, state, update):
        for k, c in enumerate(update.clients):
            self.client_params[c] = {n: update.params[n][k].clone() for n in self.param_names}
        averaged = super().aggregate(state, update)
        return averaged if self.share_model else state

    def user_params(self, state, c):
        return super().user_params(state, c) if self.share_model else self.client_params[c]

    def evaluate(self, state, round_):
        if self.share_model:
            return super().evaluate(state, round_)
        values = self.paper_accuracy(state)
        if round_ % 10 == 0 or round_ == self.cfg.rounds:
            # no global model: the standard number is the users' own models on the test set, averaged
            x, y = self.test_data()
            hits = [self.logits(self.client_params[c], self.buffers_of(c), x).argmax(1) == y
                    for c in range(self.cfg.n_clients)]
            accs = torch.stack([h.float().mean() for h in hits])
            values = torch.cat([values, accs.double()])
        paper_acc, paper_loss, *accs = values.tolist()   # one read
        return {"paper_acc": paper_acc, "paper_loss": paper_loss,
                "test_acc": float(np.mean(accs)) if accs else float("nan"), "test_loss": float("nan")}

    def message_bytes(self, state):
        C = self.fed.train.num_classes
        logits = C * C * 4
        model = state_bytes({n: state[n] for n in self.param_names}) if self.share_model else 0
        return model + logits, model + logits


class FedDistillFL(FedDistill):
    """FedDistill+ / FedDistill-FL: FedDistill's logit regulariser plus parameter averaging."""

    name = "feddistill_fl"
    share_model = True


# ---------------------------------------------------------------------------------------------- FedGen
class FedGen(OfficialProtocol):
    """FedGen: `serverpFedGen.py` (server) and `userpFedGen.py` (users); see the module docstring."""

    name = "fedgen"

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        if not (hasattr(model, "features") and hasattr(model, "classifier")):
            raise ConfigError("FedGen needs a model split into `features` (latent) and `classifier` (last layer)")
        C, D = fed.train.num_classes, model.classifier.in_features
        torch.manual_seed(fed.seed)
        with torch.device("cpu"):     # initialised on the CPU (the same G on any device), then moved
            generator = ConditionalGenerator(C, cfg.gen_noise_dim, cfg.gen_hidden, D)
        self.generator = generator.to(fed.device)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.gen_lr, betas=(0.9, 0.999),
                                              eps=1e-8, weight_decay=cfg.gen_weight_decay)
        self.gen_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.gen_optimizer, gamma=cfg.gen_lr_decay)
        # `available_labels`: every label of the union of the users' training data
        self.available = torch.unique(fed.train.y[torch.cat(fed.parts).to(fed.device)])
        self.alpha_t = self.beta_t = 0.0
        self.label_counts: torch.Tensor | None = None

    # -- users
    def round_context(self, state, clients, round_):
        """The broadcast generator (eval mode: BN uses its running statistics) and this round's weights;
        the regulariser is on from the second round (`regularization = glob_iter > 0`)."""
        on = round_ > 1
        self.alpha_t = regulariser_weight(self.cfg.gen_alpha, self.cfg.gen_reg_decay, round_) if on else 0.0
        self.beta_t = regulariser_weight(self.cfg.gen_beta, self.cfg.gen_reg_decay, round_) if on else 0.0
        if not on:
            return {}, {}
        self.generator.eval()
        shared = {"gen_params": {n: p.detach() for n, p in self.generator.named_parameters()},
                  "gen_buffers": {n: b.detach() for n, b in self.generator.named_buffers()},
                  "available": self.available}
        return shared, {}

    def generate(self, shared: dict, y: torch.Tensor) -> torch.Tensor:
        """G(y) with the broadcast generator, fresh noise (per user under vmap's randomness='different') from
        the global RNG of y's device (CUDA's on a GPU: see the README, Device)."""
        eps = torch.rand(y.shape[0], self.cfg.gen_noise_dim, device=y.device)
        return functional_call(self.generator, (shared["gen_params"], shared["gen_buffers"]), (y, eps))

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        """`UserpFedGen.train` (Eq. 5-6 of the paper):
        beta_t * KL(softmax(h(G(y))) || p(x)), target detached, y = the real batch's labels (KLDivLoss batchmean)
        + alpha_t * gen_batch/batch * mean CE(h(G(y')), y'), y' uniform over the available labels.
        h is the user's current last layer; G's output does not depend on the user's parameters, so the
        synthetic CE reaches `classifier.*` only, the KL reaches the whole net through p(x)."""
        if "gen_params" not in shared:
            return logits.new_zeros(())
        W, b = params["classifier.weight"], params["classifier.bias"]           # [C, D], [C]
        target = F.softmax(F.linear(self.generate(shared, y), W, b), -1).detach()  # [B, C]
        kl = (torch.special.xlogy(target, target) - target * F.log_softmax(logits, -1)).sum(-1)
        latent_matching = (kl * w).sum() / w.sum().clamp_min(1.0)
        avail = shared["available"]
        y_syn = avail[torch.randint(0, avail.shape[0], (self.cfg.gen_batch_size,), device=avail.device)]
        synthetic_ce = F.cross_entropy(F.linear(self.generate(shared, y_syn), W, b), y_syn)
        ratio = self.cfg.gen_batch_size / self.cfg.batch_size
        return self.beta_t * latent_matching + self.alpha_t * ratio * synthetic_ce

    def client_update(self, state, clients, round_):
        """Local SGD, plus the label counts of the round's batches (`update_label_counts`, reset to 1 per label)."""
        update = super().client_update(state, clients, round_)
        C = self.fed.train.num_classes
        self.label_counts = torch.stack([1 + class_counts(self.fed.train.y[self.round_samples(k)], C)
                                         for k in range(len(clients))])  # [K, C]
        return update

    # -- server
    def server_update(self, state, averaged, update, round_):
        self.train_generator(update, round_)
        return averaged

    def train_generator(self, update: ClientUpdate, round_: int) -> dict:
        """`train_generator`: gen_steps Adam steps on  teacher_weight * teacher + diversity_weight * diversity,
        against the sampled users' freshly trained last layers; labels uniform over the qualified labels."""
        cfg = self.cfg
        heads_W = update.params["classifier.weight"].detach()                  # [K, C, D]
        heads_b = update.params["classifier.bias"].detach()                    # [K, C]
        weights = label_weights(self.label_counts)                             # [C, K]
        labels = qualified_labels(self.label_counts)
        gen = torch.Generator().manual_seed(self.fed.seed * 7_919 + round_)
        pos, noise = generator_draws(gen, cfg.gen_steps, len(labels), cfg.gen_batch_size, cfg.gen_noise_dim)
        pos, noise = pos.to(labels.device), noise.to(labels.device)          # one copy per round
        self.generator.train()
        # the steps' mean losses, summed on the device in float64 (as Python floats were) and read once
        means = torch.zeros(2, dtype=torch.float64, device=labels.device)   # teacher, diversity
        for s in range(cfg.gen_steps):
            y, eps = labels[pos[s]], noise[s]
            z = self.generator(y, eps)
            logits = torch.einsum("bd,kcd->kbc", z, heads_W) + heads_b.unsqueeze(1)   # [K, B, C]
            teacher = teacher_loss(logits, y, weights, cfg.gen_teacher_weighting)
            diversity = diversity_loss(eps, z)
            loss = cfg.gen_teacher_weight * teacher + cfg.gen_diversity_weight * diversity
            self.gen_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.gen_optimizer.step()
            means += torch.stack([teacher, diversity]).detach().double() / max(1, cfg.gen_steps)
        self.gen_scheduler.step()
        self.generator.eval()
        label_acc = self.generator_label_accuracy(update).double().view(1)
        mean_teacher, mean_diversity, label_acc = torch.cat([means, label_acc]).tolist()   # the one read
        self.extra_metrics = {"gen_teacher_loss": mean_teacher, "gen_diversity_loss": mean_diversity,
                              "gen_label_acc": label_acc}
        return {"teacher": mean_teacher, "diversity": mean_diversity}

    @torch.no_grad()
    def generator_label_accuracy(self, update: ClientUpdate) -> torch.Tensor:
        """How often the size-weighted average of this round's heads labels G(y) as y (all C labels); a 0-dim
        tensor on the device."""
        heads_W = update.params["classifier.weight"]                           # [K, C, D]
        heads_b = update.params["classifier.bias"]                             # [K, C]
        w = self.aggregation_weights(update).to(heads_W.device)
        W = (w.view(-1, 1, 1) * heads_W).sum(0)
        b = (w.view(-1, 1) * heads_b).sum(0)
        y = torch.arange(self.fed.train.num_classes, device=heads_W.device).repeat(20)
        z, _ = self.generator.sample(y, torch.Generator().manual_seed(0))
        return (F.linear(z, W, b).argmax(1) == y).float().mean()

    def message_bytes(self, state):
        model = state_bytes({n: state[n] for n in self.param_names})
        gen = state_bytes({n: t for n, t in self.generator.state_dict().items() if t.is_floating_point()})
        counts = self.fed.train.num_classes * 4
        return model + gen, model + counts

    @torch.no_grad()
    def latent_projection(self, state: dict, n_real: int = 600) -> dict:
        """2-D PCA of the aggregated model's latents of real test images, with the generator's samples
        projected on the same axes (for the latent-space figure)."""
        params = {n: state[n] for n in self.param_names}
        features = {n[len("features."):]: v for n, v in {**params, **self.round_buffers}.items()
                    if n.startswith("features.")}
        fmodel = self.eval_model.features
        real_x, real_y = self.user_test_x[:n_real], self.user_test_y[:n_real]
        real = functional_call(fmodel, features, (real_x,))
        y_gen = torch.arange(self.fed.train.num_classes, device=real.device).repeat_interleave(
            self.cfg.latent_samples_per_label)
        fake, _ = self.generator.sample(y_gen, torch.Generator().manual_seed(1))
        mean = real.mean(0, keepdim=True)
        _, _, V = torch.linalg.svd(real - mean, full_matrices=False)
        proj = lambda z: ((z - mean) @ V[:2].T).tolist()  # noqa: E731
        return {"real": proj(real), "real_y": real_y.tolist(), "generated": proj(fake), "generated_y": y_gen.tolist()}


# ---------------------------------------------------------------------------------------------- reference
class Central(Centralised, OfficialProtocol):
    """The regime reference: the same CNN trained centrally (the engine's `central`: one user holding the whole
    training set, as many SGD steps per round as a federated round's users take together), drawing batches
    from one kept DataLoader and read under both protocols with its own BatchNorm statistics."""

    name = "central"

    def buffers_of(self, c):
        return super().buffers_of(0)


# FedGen joins the engine's registry (for the comparison report and the engine's method matrix) with the
# config that carries its knobs and the smallest model it accepts (a `features` / `classifier` split).
FedGen.config_cls, FedGen.test_model = FedGenConfig, "fedgen_cnn"
register_method("fedgen")(FedGen)

METHOD_CLASSES: dict[str, type[Method]] = {
    "fedavg": FedAvg, "fedprox": FedProxOfficial, "feddistill": FedDistill, "feddistill_fl": FedDistillFL,
    "fedensemble": FedEnsemble, "fedgen": FedGen, "central": Central,
}


# ---------------------------------------------------------------------------------------------- one run
def rounds_to(history: list[dict], key: str, target: float, never: int) -> int:
    """First round whose `key` reaches `target`; `never` (rounds + 1) when none does."""
    return next((int(h["round"]) for h in history if h.get(key) is not None and h[key] >= target), never)


def run(cfg, seed: int, record, device: torch.device | str = "cpu") -> None:
    """One federated run of cfg.method; adds both protocols' summary numbers to the engine's."""
    from common.fl.engine import run_federated

    method = run_federated(cfg, seed, record, method_cls=METHOD_CLASSES[cfg.method], device=device)
    paper = np.array([h["paper_acc"] for h in record.history])
    std = np.array([h["test_acc"] for h in record.history], dtype=float)
    k = min(cfg.eval_top_k, len(paper))
    never = cfg.rounds + 1
    record.summary.update({
        "paper_top5_acc": float(np.sort(paper)[-k:].mean()),      # the paper's metric (per seed)
        "paper_final_acc": float(paper[-1]),
        "paper_mean_acc": float(paper.mean()),                    # area under the curve / rounds
        "final_test_acc": float(std[-1]),                          # the standard protocol
        "best_test_acc": float(np.nanmax(std)),
        "n_train": int(sum(len(p) for p in method.fed.parts)),
        **{f"paper_rounds_to_{int(t * 100)}": rounds_to(record.history, "paper_acc", t, never)
           for t in (0.7, 0.8, 0.85, 0.9)},
        **{f"test_rounds_to_{int(t * 100)}": rounds_to(record.history, "test_acc", t, never)
           for t in (0.7, 0.8, 0.85, 0.9)},
    })
    if isinstance(method, FedGen):
        record.summary["latent_pca"] = method.latent_projection(method.final_state)

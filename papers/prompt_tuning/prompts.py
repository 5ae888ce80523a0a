"""Soft prompts on a frozen encoder (Lester et al., 2021, Section 2), the two baselines, prompt ensembling
(Section 7) and the paper's optimiser.

Shapes: B batch, T input tokens, P prompt length, D hidden size, V vocabulary, K population of frequent
tokens, C classes, N prompts in an ensemble.

Prompt tuning. The input is embedded with the frozen table, X_e = E[x] [B, T, D]; the learned prompt
P_e [P, D] is put in front, [P_e; X_e] [B, P + T, D], and that goes through the frozen encoder as
`inputs_embeds`, with the attention mask extended by P ones so that every token attends to the prompt and the
prompt to every real token (official: train/prompts.py::prefix_prompt, masks.py::create_prompt_encoder_mask;
PEFT's PeftModelForFeatureExtraction.forward does the same). Only P_e (and our linear head) is trained.

Positions. T5 has relative position biases only, so a prefix shifts nothing there. BERT (MiniLM) and MPNet add
absolute position embeddings inside their embedding layer, also to `inputs_embeds`: with no `position_ids`
given, BERT numbers the P + T positions 0 .. P + T - 1 and MPNet 2 .. P + T + 1
(`create_position_ids_from_inputs_embeds`), so the prompt takes the first P positions and the text moves P
places right, exactly as under PEFT (which drops user position ids). Hence P + T must fit the position table
(`Backbone.max_length`, 512). MPNet numbers the padding positions too when given embeddings, unlike with
`input_ids`; padding is masked, so the real tokens' states are unchanged (tested). BERT token types are all 0,
as PEFT does (it drops `token_type_ids`) and as the sentence-transformers checkpoints were trained.

Classification. T5 generates the label words; an encoder has no decoder, so we read the task out with a linear
head on the mean of the final hidden states over the real input tokens (the prompt positions excluded). Mean
pooling is how all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained (their 1_Pooling config), so the frozen
features are meaningful before any tuning and the linear probe (same features, no prompt) isolates what the
prompt adds.

Initialisations (Section 3.2 / Fig. 3b; official prompts.py):
    random         U[-0.5, 0.5], as the paper's Section 3.2 has it
    random_flax    U[0, 0.5), what the released config runs: flax `linen.initializers.uniform(scale=0.5)`
                   draws from [0, scale) (t5_1_1_prompt.gin; flax/jax docs). On BERT/MPNet the embedding
                   LayerNorm subtracts each vector's mean, so its +0.25 offset matters less than on T5.
    vocab          P rows of the embedding table drawn without replacement from the K = 5000 most common
                   tokens (`from_sample_of_embeddings(population_size=5000)`: the table's first K rows)
    class_labels   row i = the mean embedding of label i's sub-tokens (`from_embedded_list`), the rest as
                   `vocab`
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers.optimization import Adafactor

from papers.prompt_tuning.backbones import Backbone

PROMPT_INITS = ("random", "random_flax", "vocab", "class_labels")
POPULATION = 5000           # from_class_labels.gin / from_sampled_vocab.gin: population_size
LR = 0.3                    # prompt_finetune.gin: constant learning rate
WEIGHT_DECAY = 1e-5         # t5_1_1_prompt.gin: adafactor.Adafactor.weight_decay_rate
MIN_DIM_SIZE_TO_FACTOR = 128  # t5x/adafactor.py default


# -------------------------------------------------------------------------------------------- initialisation
def frequent_token_ids(backbone: Backbone, k: int = POPULATION) -> torch.Tensor:
    """The K "most common" token ids [K]. T5's SentencePiece vocabulary is ordered by piece score, so the
    official code takes rows 0 .. K-1. A BERT/MPNet WordPiece vocabulary lists special tokens, [unusedN] slots
    and single characters (by code point) first, then whole words by corpus frequency ("the", "of", "and",
    ...): we take the first K tokens that are none of those three."""
    if backbone.model.config.model_type == "t5":
        return torch.arange(k)
    tokenizer = backbone.tokenizer
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = [i for i, tok in enumerate(tokens)
            if i not in special and len(tok) > 1 and not re.fullmatch(r"\[unused\d+\]", tok)]
    return torch.tensor(keep[:k])


def random_uniform_init(p: int, d: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """[P, D] drawn from U[low, high)."""
    return torch.rand(p, d, generator=generator) * (high - low) + low


def sampled_vocab_init(embeddings: torch.Tensor, population: torch.Tensor, p: int,
                       generator: torch.Generator) -> torch.Tensor:
    """P rows of `embeddings` [V, D] whose ids come from `population` [K], without replacement unless P > K
    (prompts.py::from_sample_of_embeddings)."""
    k = len(population)
    pick = (torch.randperm(k, generator=generator)[:p] if p <= k
            else torch.randint(k, (p,), generator=generator))
    return embeddings[population[pick]].clone()  # [P, D]


def label_embeddings(embeddings: torch.Tensor, tokenizer, label_names) -> torch.Tensor:
    """[C, D]: each label string tokenised without special tokens, embedded, averaged over its sub-tokens."""
    ids = [tokenizer(name, add_special_tokens=False)["input_ids"] for name in label_names]
    return torch.stack([embeddings[i].mean(0) for i in ids])


def class_label_init(embeddings: torch.Tensor, tokenizer, label_names, population: torch.Tensor, p: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Rows 0 .. C-1 from the label words, the rest sampled from the vocabulary
    (prompts.py::from_embedded_list)."""
    prompt = sampled_vocab_init(embeddings, population, p, generator)  # [P, D]
    if len(label_names) > p:
        warnings.warn(f"prompt length {p} < {len(label_names)} labels: only {list(label_names[:p])} are used")
    labels = label_embeddings(embeddings, tokenizer, label_names[:p])  # [min(C, P), D]
    prompt[: len(labels)] = labels
    return prompt


def initial_prompt(backbone: Backbone, p: int, init: str, label_names=None, seed: int = 0) -> torch.Tensor:
    """The initial prompt [P, D] for one of PROMPT_INITS, drawn from a generator seeded with `seed`."""
    if p < 1:
        raise ValueError(f"prompt length P must be at least 1, got {p}")
    if init not in PROMPT_INITS:
        raise ValueError(f"unknown prompt initialisation {init!r}; known: {', '.join(PROMPT_INITS)}")
    if init == "class_labels" and not label_names:
        raise ValueError("the class_labels initialisation needs the task's label names")
    g = torch.Generator().manual_seed(seed)
    table = backbone.embeddings.weight.detach().float()  # [V, D]
    if init == "random":
        return random_uniform_init(p, table.shape[1], g, -0.5, 0.5)
    if init == "random_flax":
        return random_uniform_init(p, table.shape[1], g, 0.0, 0.5)
    population = frequent_token_ids(backbone)
    if init == "vocab":
        return sampled_vocab_init(table, population, p, g)
    return class_label_init(table, backbone.tokenizer, tuple(label_names), population, p, g)


# ------------------------------------------------------------------------------------------------ the prompt
class SoftPrompt(nn.Module):
    """P learned vectors put in front of the embedded input (prompts.py::Prompt and
    train/prompts.py::prefix_prompt)."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone().float())  # [P, D]

    def __len__(self) -> int:
        return self.weight.shape[0]

    def forward(self, x_embed: torch.Tensor) -> torch.Tensor:
        prompt = self.weight.to(x_embed.dtype).expand(x_embed.shape[0], -1, -1)  # [B, P, D]
        return torch.cat([prompt, x_embed], dim=1)  # [B, P + T, D]


def extend_mask(attention_mask: torch.Tensor, p: int) -> torch.Tensor:
    """[B, T] -> [B, P + T]: the prompt positions are always visible (masks.py::add_fake_prompt)."""
    ones = attention_mask.new_ones(attention_mask.shape[0], p)  # [B, P]
    return torch.cat([ones, attention_mask], dim=1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [B, L, D] over the positions where mask [B, L] is 1 -> [B, D]."""
    w = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


def freeze(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


class Classifier(nn.Module):
    """Encoder (frozen unless `tune_encoder`), an optional soft prompt, mean pooling over the input tokens
    and a linear head. Prompt tuning: prompt, frozen; model tuning: no prompt, tuned; linear probe: no
    prompt, frozen. A frozen encoder stays in eval mode (no dropout), like the released prompt-tuning
    configs (DROPOUT_RATE = 0 in t5_1_1_flaxformer.gin)."""

    def __init__(self, backbone: Backbone, num_classes: int, prompt: SoftPrompt | None = None,
                 tune_encoder: bool = False, seed: int = 0):
        super().__init__()
        self.encoder = backbone.model.requires_grad_(True) if tune_encoder else freeze(backbone.model)
        self.max_length = backbone.max_length
        self.prompt = prompt
        self.tune_encoder = tune_encoder
        self.head = nn.Linear(backbone.hidden_size, num_classes)
        bound = backbone.hidden_size ** -0.5  # torch's own nn.Linear range, drawn from a seeded generator
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=g)
            self.head.bias.uniform_(-bound, bound, generator=g)

    @property
    def prompt_length(self) -> int:
        return 0 if self.prompt is None else len(self.prompt)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if not self.tune_encoder:
            self.encoder.eval()
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states [B, P + T, D] and the mask the encoder saw [B, P + T]."""
        if self.prompt is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return hidden, attention_mask
        p, t = self.prompt_length, input_ids.shape[1]
        if self.max_length is not None and p + t > self.max_length:
            raise ValueError(f"prompt length {p} + input length {t} exceeds the encoder's {self.max_length} "
                             "positions: shorten max_length or the prompt")
        x_embed = self.encoder.get_input_embeddings()(input_ids)  # [B, T, D]
        mask = extend_mask(attention_mask, p)  # [B, P + T]
        hidden = self.encoder(inputs_embeds=self.prompt(x_embed), attention_mask=mask).last_hidden_state
        return hidden, mask

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the final hidden states over the real input tokens [B, D]."""
        hidden, _ = self.encode(input_ids, attention_mask)  # [B, P + T, D]
        return mean_pool(hidden[:, self.prompt_length:], attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))  # [B, C]


def prompt_tuning(backbone: Backbone, num_classes: int, prompt_length: int = 100, init: str = "class_labels",
                  label_names=None, seed: int = 0) -> Classifier:
    """A frozen encoder with a P-vector soft prompt (paper defaults: P = 100, class-label initialisation)."""
    prompt = SoftPrompt(initial_prompt(backbone, prompt_length, init, label_names, seed))
    return Classifier(backbone, num_classes, prompt, tune_encoder=False, seed=seed)


def model_tuning(backbone: Backbone, num_classes: int, seed: int = 0) -> Classifier:
    """The baseline that tunes every weight of the encoder (and the head)."""
    return Classifier(backbone, num_classes, None, tune_encoder=True, seed=seed)


def linear_probe(backbone: Backbone, num_classes: int, seed: int = 0) -> Classifier:
    """The baseline that trains only a linear head on the frozen encoder's mean-pooled features."""
    return Classifier(backbone, num_classes, None, tune_encoder=False, seed=seed)


# ------------------------------------------------------------------------------------------------ ensembling
def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, B, C] -> the class most of the N prompts predict [B]; a tie goes to the lowest class."""
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0)  # [B, C]
    return votes.argmax(-1)


class PromptEnsemble(nn.Module):
    """N prompt-tuned classifiers (each from its own seed) that share one frozen encoder, run as one batch of
    N x B sequences and combined by majority vote (Section 7). The members' prompts and heads stay their own
    parameters, so the same forward also trains them together: member n's gradient is that of its own loss."""

    def __init__(self, members: list[Classifier]):
        super().__init__()
        first = members[0]
        if any(m.prompt is None or m.encoder is not first.encoder for m in members):
            raise ValueError("an ensemble needs prompt-tuned classifiers that share one encoder")
        if len({m.prompt_length for m in members}) > 1:
            raise ValueError("the ensemble's prompts must have the same length")
        self.members = nn.ModuleList(members)  # the encoder is theirs: train() keeps it in eval mode
        self.max_length = first.max_length

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every prompt's logits [N, B, C] from one encoder call on N x B sequences; input_ids and
        attention_mask are [B, T] (every prompt reads the same batch) or [N, B, T] (prompt n reads batch n)."""
        prompts = torch.stack([m.prompt.weight for m in self.members])  # [N, P, D]
        n, p, d = prompts.shape
        if input_ids.dim() == 2:
            input_ids, attention_mask = input_ids.expand(n, -1, -1), attention_mask.expand(n, -1, -1)
        b, t = input_ids.shape[1:]
        if self.max_length is not None and p + t > self.max_length:
            raise ValueError(f"prompt length {p} + input length {t} exceeds {self.max_length} positions")
        encoder = self.members[0].encoder
        x_embed = encoder.get_input_embeddings()(input_ids)  # [N, B, T, D]
        z = torch.cat([prompts[:, None].expand(n, b, p, d).to(x_embed.dtype), x_embed], dim=2)  # [N, B, P+T, D]
        mask = attention_mask.reshape(n * b, t)  # [N * B, T]
        hidden = encoder(inputs_embeds=z.reshape(n * b, p + t, d),
                         attention_mask=extend_mask(mask, p)).last_hidden_state  # [N * B, P + T, D]
        f = mean_pool(hidden[:, p:], mask).view(n, b, d)  # [N, B, D]
        weight = torch.stack([m.head.weight for m in self.members])  # [N, C, D]
        bias = torch.stack([m.head.bias for m in self.members])  # [N, C]
        return torch.einsum("nbd,ncd->nbc", f, weight) + bias[:, None]  # [N, B, C]


# ------------------------------------------------------------------------------------------------- optimiser
class T5XAdafactor(Adafactor):
    """transformers' Adafactor with t5x/adafactor.py's factoring rule: a 2-D parameter gets a factored
    second moment only when its smaller dimension is >= 128 (`_factored_dims`; the prompt's NONE factor
    rules fall back to this heuristic for rank <= 2, `_parse_rule`), so a [100, D] prompt keeps a full
    [P, D] second moment. transformers factors every matrix."""

    @staticmethod
    def _get_options(param_group, param_shape):
        factored = len(param_shape) >= 2 and sorted(param_shape)[-2] >= MIN_DIM_SIZE_TO_FACTOR
        return factored, param_group["beta1"] is not None


def adafactor(params, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> T5XAdafactor:
    """The paper's optimiser (t5_1_1_prompt.gin): Adafactor, constant lr 0.3, no parameter scaling,
    second-moment decay 1 - t^-0.8, update clipping 1.0, no momentum, weight decay 1e-5. T5X decays by
    `weight_decay` per step, (1 - wd) * w; transformers by lr * weight_decay, so we pass weight_decay / lr.
    lr 0.3 suits T5's large embedding entries; MiniLM's have RMS 0.056 and MPNet's 0.086: sweep lr there."""
    return T5XAdafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                        decay_rate=-0.8, clip_threshold=1.0, beta1=None, weight_decay=weight_decay / lr)

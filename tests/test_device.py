"""The device setting: resolution and its errors, the run record, and the engine on every device at hand.

No test needs a GPU: the CUDA cases run where one is present and are skipped elsewhere. On the CPU, the hot
loop's device discipline is checked with `device_guard` (tensors made without a device land on `meta`)."""
import json

import pytest
import torch

from common import device, workflow
from common.experiments import ConfigError
from common.fl import METHODS, Federation, get_method
from common.models import build_model
from tests.conftest import needs_mnist
from tests.device_guard import device_guard
from tests.test_fl_engine import toy_config, toy_federation

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve("auto") == torch.device("cpu")
    assert device.resolve(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("spec, words", [("tpu", "auto, cpu, cuda or cuda:N"), ("cuda:x", "auto, cpu"),
                                         ("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU")])
def test_a_device_this_machine_lacks_is_one_clear_error(monkeypatch, spec, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=words) as err:
        device.resolve(spec)
    assert "\n" not in str(err.value)


def test_a_gpu_index_past_the_last_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 CUDA GPU"):
        device.resolve("cuda:2")


@needs_mnist
def test_the_run_record_names_the_device(tmp_path):
    from common.cli import main
    from papers.gradient_dropping.config import GradDropConfig
    from papers.gradient_dropping.figures import PAPER_ID, report
    from papers.gradient_dropping.method import train

    out = tmp_path / "r.json"
    argv = ["run", "--scale", "smoke", "--setting", "dense", "--device", "cpu", "--out", str(out)]
    assert main(PAPER_ID, GradDropConfig, train, report, argv) == 0
    info = json.loads(out.read_text())["device"]
    assert info["device"] == "cpu" and info["torch"] == torch.__version__


def _round(dev: str, vectorize: bool, method: str = "fedavg", model: str = "mlp"):
    cfg = toy_config(method=method, model=model, vectorize=vectorize, n_clients=4, participation=1.0,
                     local_epochs=1, batch_size=16, momentum=0.5, weight_decay=1e-3)
    fed = toy_federation(cfg, n=100)
    fed = Federation(cfg, fed.seed, fed.train.to(dev), fed.test.to(dev), fed.parts, None, None)
    torch.manual_seed(0)
    meth = get_method(method)(cfg, fed, build_model(model, fed.train.shape, 3).to(dev))
    state = {k: v.clone() for k, v in meth.model.state_dict().items()}
    with device_guard() as counts:
        update = meth.client_update(state, [0, 1, 2, 3], 1)
        new = meth.server_update(state, meth.aggregate(state, update), update, 1)
    return new, counts


@pytest.mark.parametrize("dev", DEVICES)
def test_both_training_paths_give_the_same_models_on_each_device(dev):
    vec, _ = _round(dev, True)
    seq, _ = _round(dev, False)
    for n in vec:
        assert vec[n].device.type == dev
        torch.testing.assert_close(vec[n], seq[n], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("vectorize", [True, False])
def test_cpu_and_gpu_give_the_same_models_up_to_float_rounding(vectorize):
    cpu, _ = _round("cpu", vectorize)
    gpu, _ = _round("cuda", vectorize)
    for n in cpu:
        torch.testing.assert_close(gpu[n].cpu(), cpu[n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].__module__.startswith("common")))
@pytest.mark.parametrize("vectorize", [True, False])
def test_the_hot_loop_makes_every_tensor_on_the_run_device_and_reads_the_host_once_per_client(dev, method, vectorize):
    """Under the guard a tensor made without a device is on `meta`, and mixing it in fails: the round runs, so
    every tensor of the local training, aggregation and server step is made on the run's device. The host is
    read once per round (vectorised) or per client (sequential): the divergence checks, never per step."""
    _, counts = _round(dev, vectorize, method)
    assert counts["host_reads"] <= (1 if vectorize else 4)
    # one move of the round's batch plan (index, weights, active mask) to the device, nothing per step
    assert counts["cross_device_copies"] <= (3 if dev != "cpu" else 0)


def test_the_guard_catches_a_tensor_made_without_a_device():
    with pytest.raises(RuntimeError, match="meta"), device_guard():
        torch.zeros(3) + torch.ones(3, device="cpu")


def test_data_moves_once_and_normalises_on_its_device():
    fed = toy_federation(toy_config())
    moved = fed.train.to("meta")
    assert moved.x.device.type == "meta" and fed.train.to("cpu") is fed.train
    assert moved.normalize(moved.x[:4]).device.type == "meta"
    assert fed.train.subset(torch.tensor([1, 2])).x.device.type == "cpu"


@pytest.mark.parametrize("device, scale, gpus", [("auto", "paper", 1), ("auto", "quick", 0), ("cpu", "paper", 0),
                                                 ("cuda", "quick", 1), ("cuda:1", "smoke", 1)])
def test_run_jobs_ask_for_a_gpu_when_they_will_use_one(device, scale, gpus):
    assert workflow.gpus_per_run({"device": device, "scale": scale}) == gpus


def test_the_paper_scale_prints_its_measured_cost_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(workflow, "REPO", tmp_path)
    assert workflow.paper_scale_estimate(["feddf"], "paper") == ""   # nothing measured yet
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "paper_scale.json").write_text(json.dumps({"papers": [
        {"paper": "feddf", "runs": 46, "device_hours": 12.5, "device_name": "NVIDIA X", "runs_not_measured": 0},
        {"paper": "feddf", "runs": 46, "device_hours": 300.0, "device_name": "CPU", "runs_not_measured": 4}]}))
    line = workflow.paper_scale_estimate(["feddf", "fedntd"], "paper")
    assert "[feddf] paper scale: 46 runs; device time about 12.5 h on NVIDIA X, about 300.0 h on CPU (+4 runs" in line
    assert "[fedntd] paper scale: cost not measured yet" in line
    (tmp_path / "benchmarks" / "results" / "paper_scale.json").write_text(json.dumps({"papers": [
        {"paper": "feddf", "runs": 46, "device_hours": 0.0, "device_name": "CPU", "runs_not_measured": 46}]}))
    assert "device time not measurable on CPU" in workflow.paper_scale_estimate(["feddf"], "paper")
    assert workflow.paper_scale_estimate(["feddf"], "quick") == ""


def test_the_paper_scale_benchmark_extrapolates_an_epoch_slice_per_stage():
    import importlib.util

    from common.workflow import REPO
    spec = importlib.util.spec_from_file_location("paper_scale", REPO / "benchmarks" / "paper_scale.py")
    paper_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_scale)
    config = {"epochs": 100, "init_epochs": 40, "batch_size": 32}
    assert paper_scale.slice_overrides(config) == ({"init_epochs": 1, "epochs": 1, "eval_every": 1}, "epochs", 1)
    assert paper_scale.slice_overrides({"epochs": 100, "init_epochs": 0})[0] == {"epochs": 2, "eval_every": 1}
    # 100 images in batches of 32: 4 steps an epoch; 4 x (0.1 + 0.2) s of the 10 s were steps, 8.8 s setup
    record = {"summary": {"train_images": 100}, "wall_time_s": 10.0,
              "history": [{"stage": "init", "step_s": 0.1}, {"stage": "main", "step_s": 0.2}]}
    assert paper_scale.epochs_seconds(record, config) == pytest.approx(8.8 + 40 * 0.4 + 100 * 0.8)


def test_a_paper_sets_its_run_jobs_memory_and_time_or_gets_the_scale_default(monkeypatch):
    assert workflow.run_resources("gradient_dropping", "paper") == {"mem_mb": 8000, "runtime": 720}
    monkeypatch.setattr(workflow.experiments, "experiments", lambda paper: {"resources": {"paper": {"mem_mb": 16000}}})
    assert workflow.run_resources("x", "paper") == {"mem_mb": 16000, "runtime": 720}
    assert workflow.run_resources("x", "quick") == {"mem_mb": 4000, "runtime": 120}

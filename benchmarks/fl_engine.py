"""Speed of the federated engine: local training, vectorised (vmap) vs sequential, and evaluation.

    python benchmarks/fl_engine.py                 # all models, 20 and 100 clients, 1 and 2 threads
    python benchmarks/fl_engine.py --quick         # MLP and the small CNN at 20 clients only
    python benchmarks/fl_engine.py --device cuda   # on a GPU (`auto`, the default, takes it when present)

One FedAvg round with every client participating (IID MNIST subset, 1 local epoch, batch 32). Prints and
saves (benchmarks/results/fl_engine[_<device>].json) client-samples per second, the achieved GFLOP/s (training
FLOPs = 3 x the forward FLOPs counted by torch's FlopCounterMode) and its ratio to this device's own
float32 matmul rate, measured in the same run with the same thread count; and the seconds of one evaluation of
the global model on the whole MNIST test set (10,000 images) at the configured evaluation batch.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import device as devices  # noqa: E402
from common.fl import FLConfig  # noqa: E402
from common.fl.engine import Federation, get_method  # noqa: E402
from common.models import build_model  # noqa: E402
from common.results import atomic_write_text  # noqa: E402

MODELS = {"mlp": "MLP 784-200-200-10 (McMahan et al.'s 2NN)", "fedgen_cnn": "FedGen's small CNN (~30k parameters)",
          "cnn": "McMahan et al.'s CNN (~1.7M parameters)"}
KWARGS = {"mlp": {"hidden": (200, 200)}}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_gflops(threads: int, dev: torch.device, n: int = 1024, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    for _ in range(3):
        a @ b
    sync(dev)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def train_flops_per_sample(model_name: str) -> float:
    model = build_model(model_name, (1, 28, 28), 10, **KWARGS.get(model_name, {}))
    x = torch.randn(32, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return 3 * counter.get_total_flops() / 32


def one_round(model_name: str, n_clients: int, vectorize: bool, samples: int, dev: torch.device) -> tuple[float, float]:
    """Seconds of one round's local training (after a warm-up round) and of one evaluation on the test set."""
    cfg = FLConfig(dataset="mnist", model=model_name, partition="iid", n_clients=n_clients, participation=1.0,
                   local_epochs=1, batch_size=32, lr=0.01, train_subset=samples, vectorize=vectorize)
    fed = Federation.build(cfg, 0, dev)
    model = build_model(model_name, fed.train.shape, 10, **KWARGS.get(model_name, {})).to(dev)
    method = get_method("fedavg")(cfg, fed, model)
    state = {k: v.clone() for k, v in method.model.state_dict().items()}
    clients = list(range(n_clients))
    method.client_update(state, clients, 1)  # warm-up
    method.evaluate(state, 1)
    sync(dev)
    start = time.perf_counter()
    method.client_update(state, clients, 2)
    sync(dev)
    train = time.perf_counter() - start
    start = time.perf_counter()
    method.evaluate(state, 2)
    return train, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=6400, help="training samples split over the clients")
    parser.add_argument("--device", default="auto", help=devices.CHOICES)
    args = parser.parse_args()
    dev = devices.resolve(args.device)
    devices.prepare(dev)
    models = ["mlp", "fedgen_cnn"] if args.quick else list(MODELS)
    client_counts = [20] if args.quick else [20, 100]
    rows = []
    for threads in (1, 2):
        peak = matmul_gflops(threads, dev)
        for model_name in models:
            flops = train_flops_per_sample(model_name)
            for n_clients in client_counts:
                times, evals = {}, {}
                for vectorize in (True, False):
                    torch.set_num_threads(threads)
                    times[vectorize], evals[vectorize] = one_round(model_name, n_clients, vectorize, args.samples, dev)
                for vectorize, seconds in times.items():
                    rate = args.samples / seconds
                    row = {"device": str(dev), "model": model_name, "clients": n_clients, "threads": threads,
                           "path": "vectorised" if vectorize else "sequential", "seconds": round(seconds, 3),
                           "samples_per_s": round(rate), "gflops": round(rate * flops / 1e9, 2),
                           "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(rate * flops / 1e9 / peak, 3),
                           "speedup_vs_sequential": round(times[False] / seconds, 2),
                           "eval_seconds": round(evals[vectorize], 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    name = "fl_engine.json" if dev.type == "cpu" else f"fl_engine_{dev.type}.json"
    out = Path(__file__).resolve().parent / "results" / name
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    atomic_write_text(out, json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()

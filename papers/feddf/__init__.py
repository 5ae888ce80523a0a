"""FedDF: ensemble distillation for robust model fusion in federated learning.

Each round the server averages the received client models (FedAvg) and then distils into that average
the ensemble of the received models: on unlabelled data (CIFAR-100 images for CIFAR-10 clients) the
student matches the clients' averaged logits under a KL loss, with Adam, and the student that scores best
on a small labelled server validation split is kept. The paper reports fewer communication rounds to a
target accuracy than FedAvg, FedProx and FedAvgM, most clearly with long local training and strongly
non-IID data, and it fuses clients of different architectures (averaged within an architecture, each
architecture's server model distilled from the ensemble of all clients).
"""

PAPER = ("Tao Lin, Lingjing Kong, Sebastian U. Stich and Martin Jaggi. Ensemble Distillation for Robust Model "
         "Fusion in Federated Learning. NeurIPS 2020. arXiv:2006.07242. Official code: "
         "github.com/epfml/federated-learning-public-code, codes/FedDF-code")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's, run.py's per accuracy curve
# (the global model's, then each of feddf_archs' as `_<arch>`: the archs experiments.yaml names) and the
# distillation's.
ARCHS = ("fedgen_cnn", "mlp", "resnet8", "resnet20")
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    *(f"{k}{s}" for s in ("", *(f"_{a}" for a in ARCHS))
      for k in ("final_test_acc", "best_test_acc", "mean_test_acc", "rounds_to_target")),
    "mean_distill_steps", "mean_distill_gain")

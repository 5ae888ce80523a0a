"""The teaching comparison: every federated method of the repository on one common benchmark.

Not a paper: the baselines (FedAvg, FedProx, FedAvgM, local-only, centralised) and each FL paper's own
method, side by side on MNIST and a second data set (Fashion-MNIST at the quick scale, CIFAR-10 at the paper
scale) under IID and Dirichlet label skew, so a student sees what heterogeneity costs FedAvg and what each
method buys back. Each panel's baselines are measured against the same model trained centrally to convergence.
"""

PAPER = ("Baselines: McMahan et al. 2017 (FedAvg, AISTATS), Li et al. 2020 (FedProx, MLSys), Hsu et al. 2019 "
         "(FedAvgM, arXiv:1909.06335); label skew by Dirichlet sampling as Hsu et al. 2019")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's (common/fl/engine.py
# run_federated), method.py's run (rounds to the data set's target) and, for the personalisation panel, Per-
# FedAvg's (papers/perfedavg/method.py train, A = 5).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "rounds_to_target", "target",
    "final_pers_acc_0", "final_pers_loss_0", "final_pers_acc_1", "final_pers_loss_1", "final_pers_acc_5",
    "final_pers_loss_5", "final_meta_objective", "final_adapt_gain", "total_grad_evals")

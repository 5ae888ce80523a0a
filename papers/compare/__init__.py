"""The teaching comparison: every federated method of the repository on one common benchmark.

Not a paper: the baselines (FedAvg, FedProx, FedAvgM, local-only, centralised) and each FL paper's own
method, side by side on MNIST and a second data set (Fashion-MNIST at the quick scale, CIFAR-10 at the paper
scale) under IID and Dirichlet label skew, so a student sees what heterogeneity costs FedAvg and what each
method buys back. Each panel's baselines are measured against the same model trained centrally to convergence.
"""

PAPER = ("Baselines: McMahan et al. 2017 (FedAvg, AISTATS), Li et al. 2020 (FedProx, MLSys), Hsu et al. 2019 "
         "(FedAvgM, arXiv:1909.06335); label skew by Dirichlet sampling as Hsu et al. 2019")

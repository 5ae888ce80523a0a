"""FedGen: data-free knowledge distillation for heterogeneous federated learning.

The server learns a tiny conditional generator G(z | y) from the uploaded models alone: it maps noise and a
label to a point in the classifier's latent space (the input of the last linear layer) that the users'
heads label as y, weighted by how many samples of y each user holds. The generator is broadcast with the
model, and its samples regularise local training (a latent-matching KL on the real batch and a synthetic
cross-entropy that reaches the last layer only), passing the ensemble's knowledge of the global label
distribution to users that see only a few labels.
"""

PAPER = ("Zhuangdi Zhu, Junyuan Hong and Jiayu Zhou. Data-Free Knowledge Distillation for Heterogeneous "
         "Federated Learning. ICML 2021, PMLR 139:12878-12889. arXiv:2105.10056. "
         "Code: github.com/zhuangdizhu/FedGen")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's and method.py's run (both
# protocols).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "paper_top5_acc", "paper_final_acc", "paper_mean_acc", "n_train", "latent_pca",
    *(f"{p}_rounds_to_{t}" for p in ("paper", "test") for t in (70, 80, 85, 90)))

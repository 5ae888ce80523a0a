"""FedNTD: Federated Not-True Distillation (and its FedLSD precursor).

Local training on a client's skewed label distribution makes the received global model forget the classes
the client does not hold. FedNTD adds to each client's cross-entropy a distillation term towards the frozen
global model's softmax over the *not-true* classes only (the ground-truth column removed per sample), so the
local model learns its true classes freely but keeps the global view of the others. FedLSD, the arXiv v1
precursor, distils over all classes. Only the client loss changes; aggregation is FedAvg's.
"""

PAPER = ("Gihun Lee, Minchan Jeong, Yongjin Shin, Sangmin Bae and Se-Young Yun. Preservation of the Global "
         "Knowledge by Not-True Distillation in Federated Learning. NeurIPS 2022. arXiv:2106.03097 "
         "(v1, 2021: 'Preservation of the Global Knowledge by Not-True Self Knowledge Distillation in Federated "
         "Learning', which proposes FedLSD). Code: github.com/Lee-Gihun/FedNTD")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's and method.py's train (the
# forgetting probe's averages).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "out_before", "out_after", "in_before", "in_after", "official_out_before", "official_out_after",
    "out_forgetting", "final_min_class_acc")

"""Gradient dropping: sparse communication for distributed gradient descent.

Each worker adds its previous residual to its new gradient, sends only the entries whose absolute
value exceeds a threshold (the R-quantile of |g|, estimated from a sample), and keeps the rest as
its residual. With R = 99 % and index+value messages the traffic falls about 50x while MNIST
accuracy and NMT BLEU are kept; a single global threshold needs layer normalisation.
"""

PAPER = ("Alham Fikri Aji and Kenneth Heafield. Sparse Communication for Distributed Gradient Descent. "
         "EMNLP 2017, pp. 440-445. arXiv:1704.05021")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): method.py's run and the modelled times
# figures.py's with_time_model adds (time_to_target_s, speedup_to_target, modelled_time_1gbps_s).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "bytes_up", "bytes_total", "dense_bytes_up", "upload_reduction",
    "mean_density", "step_flops", "dropping_ops", "compute_ops", "link_bytes", "n_params", "kept_*",
    "time_to_target_s", "speedup_to_target", "modelled_time_1gbps_s")

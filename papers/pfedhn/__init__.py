"""pFedHN: personalised federated learning with hypernetworks.

The server trains a hypernetwork h(v_i; phi) that maps a learned embedding v_i of each client to all the weights
theta_i of that client's own small network. A step picks one client, sends it theta_i = h(v_i; phi), the client
trains theta_i for a few SGD steps into theta~_i and returns Delta theta_i = theta_i - theta~_i, and the server
updates phi and v_i with the vector-Jacobian product (d theta_i / d(phi, v_i))^T Delta theta_i. What travels is
the size of the target network, whatever the size of the hypernetwork. pFedHN-PC generates only the feature
extractor and keeps a private linear head on each client. The paper reports higher personalised accuracy than
Local, FedAvg, Per-FedAvg, FedPer, pFedMe and LG-FedAvg on CIFAR-10 (2 classes per client) and CIFAR-100 (10 per
client) with 10, 50 and 100 clients, and that a novel client can be served by learning only its embedding.
"""

PAPER = ("Aviv Shamsian, Aviv Navon, Ethan Fetaya and Gal Chechik. Personalized Federated Learning using "
         "Hypernetworks. ICML 2021, PMLR 139:9489-9502. arXiv:2103.04628. Official code: "
         "https://github.com/AvivSham/pFedHN")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's and method.py's run (the best-
# validation round, the novel clients').
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "best_val_test_acc", "best_val_acc", "best_visits", "final_val_acc", "final_client_acc_min",
    "final_client_acc_max", "final_client_acc_std", "train_samples", "unused_train_samples",
    "final_global_test_acc", "label_mix_match", "novel_test_acc_before", "novel_val_acc_before", "novel_test_acc",
    "novel_val_acc", "trained_test_acc", "novel_minus_trained", "novel_tuning_gain")

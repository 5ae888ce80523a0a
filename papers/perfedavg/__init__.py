"""Per-FedAvg: personalised federated learning as model-agnostic meta-learning.

Instead of one model that fits the average user, Per-FedAvg learns a shared initialisation w from which every
user, after ONE local gradient step of size alpha on its own data, does well: it minimises the MAML objective
F(w) = (1/n) sum_i f_i(w - alpha grad f_i(w)) with FedAvg's communication pattern (tau local steps on the sampled
users, then the server averages). A local step needs the gradient of f_i(w - alpha grad f_i(w)), which holds a
Hessian-vector product: the first-order variant (FO) drops it, the Hessian-free variant (HF) approximates it by a
finite difference of two gradients, and the exact product (what we call MAML here) is a reference. The paper
proves convergence to first-order stationary points of F for non-convex losses, with bounds that grow with the
users' gradient and Hessian dissimilarity, and reports higher personalised accuracy than FedAvg followed by the
same one-step adaptation on MNIST and CIFAR-10 with a small MLP.
"""

PAPER = ("Alireza Fallah, Aryan Mokhtari and Asuman Ozdaglar. Personalized Federated Learning with Theoretical "
         "Guarantees: A Model-Agnostic Meta-Learning Approach. NeurIPS 2020. arXiv:2002.07948. "
         "No official code.")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's and method.py's train (the
# personalised evaluation's final values; A = adapt_extra_steps = 5).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "final_pers_acc_0", "final_pers_loss_0", "final_pers_acc_1", "final_pers_loss_1", "final_pers_acc_5",
    "final_pers_loss_5", "final_meta_objective", "final_adapt_gain", "total_grad_evals")

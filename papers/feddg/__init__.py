"""FedDG / ELCFS: federated domain generalisation by episodic learning in continuous frequency space.

K hospitals train one segmentation model by federated averaging without sharing images, and the model must
work on a hospital it never saw. Each client shares only the Fourier amplitude spectra of its images
(low-level appearance) in a distribution bank and keeps the phases (semantics). Locally, continuous frequency
space interpolation restyles a client's image towards another client's: the low-frequency band of its
amplitude is moved a random fraction lam ~ U(0, 1) towards a bank amplitude (Eq. 2, with M and 1 - M as
corrected in the authors' issue #2) and recombined with its own phase. Episodic (MLDG-style, first-order)
meta-learning then takes an inner step on the raw batch and evaluates the updated weights on the restyled
batch, and a boundary-oriented InfoNCE loss (tau = 0.05, weight 0.1) pulls together the features of object
boundaries and pushes them away from the nearby background, across the raw and restyled passes. On
leave-one-site-out optic disc/cup segmentation (4 fundus sites) and prostate MRI (6 sites) the paper reports
higher Dice and lower HD95 than FedAvg and DG methods transplanted into FL, with every component contributing
in the ablation. Here the sites are digit domains (MNIST, USPS, MNIST-M, a restyled MNIST), used both for
stroke segmentation and for classification.
"""

PAPER = ("Quande Liu, Cheng Chen, Jing Qin, Qi Dou and Pheng-Ann Heng. FedDG: Federated Domain "
         "Generalization on Medical Image Segmentation via Episodic Learning in Continuous Frequency Space. "
         "CVPR 2021. arXiv:2103.06030. Official code: https://github.com/liuquande/FedDG-ELCFS")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): the engine's and method.py's summarise
# (classification: the seen domains' accuracy; segmentation: Dice, HD95 and the best-Dice round on the unseen
# site).
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "last5_test_acc", "bytes_down", "bytes_up", "final_personal_acc",
    "final_seen_acc", "final_dice", "final_hd95", "final_empty", "best_dice", "best_hd95", "best_round",
    "final_seen_dice", "final_seen_hd95", "bank_bytes", "example_masks")

"""KD-SVD and KD-EID: knowledge distillation through the dominant singular vectors of feature maps.

Each distillation point's feature map, read as a [HW, C] matrix per sample, is compressed by a truncated
SVD: its dominant right singular vectors (over channels), weighted by the teacher's normalised singular
values, are a compact knowledge that does not depend on the spatial size. The student does not copy these
vectors; it copies their relation between consecutive distillation points, an RBF kernel matrix over channel
entries, after a sign and order alignment of its own candidate vectors to the teacher's. Task and
distillation are learnt together ("self-supervised", multi-task): per tensor, the distillation gradient is
clipped to the norm of the task gradient, so it never dominates. KD-EID (TNNLS) computes the same
decomposition faster, by an eigendecomposition of the smaller Gram matrix, whatever the spatial shape of the
maps.
"""

PAPER = ("Seung Hyun Lee, Dae Ha Kim and Byung Cheol Song. Self-supervised Knowledge Distillation Using "
         "Singular Value Decomposition. ECCV 2018, pp. 339-354. arXiv:1807.06819. "
         "Code: github.com/sseung0703/SSKD_SVD (TF1) and github.com/sseung0703/KD_methods_with_TF "
         "(nets/SVP.py, nets/Shared.py::KD_SVD). "
         "Seunghyun Lee and Byung Cheol Song. Knowledge Transfer via Decomposing Essential Information in "
         "Convolutional Neural Networks. IEEE TNNLS 33(1):366-377, 2022. doi:10.1109/TNNLS.2020.3027837 "
         "(KD-EID; code: KD_methods_with_TF nets/SVP.py::SVD_eid).")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): method.py's student run and `over_ce`, which
# figures.py's runs_frame adds.
SUMMARY_METRICS = (
    "final_test_acc", "best_test_acc", "final_agreement", "final_kl_teacher_student", "teacher_test_acc",
    "grad_ratio", "step_s", "train_images", "test_images", "dist_loss_s", "relation_distance",
    "relation_sample", "teacher_unchanged", "over_ce")

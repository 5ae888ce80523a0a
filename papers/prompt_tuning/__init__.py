"""Prompt tuning: steer a frozen language model with a few learned input vectors.

Prompt tuning prepends P learnable "soft prompt" vectors to the embedded input of a frozen pretrained model
and trains only those P x D numbers for each downstream task (no hand-written prompt, no change to the model).
With frozen T5 v1.1 "LM-adapted" models from Small to XXL on SuperGLUE, the paper finds that prompt tuning far
outperforms GPT-3's few-shot prompt design and that its gap to full model tuning closes as the model grows,
until at about 11B parameters it matches model tuning (Fig. 1), while each task stores only its prompt.
Ablations (Fig. 3) show that prompt length (saturating near 20 tokens), the initialisation (class-label
embeddings > sampled vocabulary > random uniform) and the pre-training objective (LM adaptation rather than
span corruption) matter for small models and stop mattering at XXL. Prompt-tuned models are more robust to
domain shift than model-tuned ones (SQuAD -> MRQA, QQP -> MRPC/PAWS), and N prompts on one frozen model form a
cheap ensemble, run as one batch and combined by majority vote, that beats the average single prompt.
"""

PAPER = ("Brian Lester, Rami Al-Rfou and Noah Constant. "
         "The Power of Scale for Parameter-Efficient Prompt Tuning. "
         "EMNLP 2021, pp. 3045-3059. arXiv:2104.08691. "
         "Official code: https://github.com/google-research/prompt-tuning (T5X / Flaxformer / JAX).")

# The summary metrics its runs produce (common/experiments.py checks every claim, regime and `reported:`
# metric against these before any job; fnmatch patterns allowed): method.py's run (the ensemble's where
# ensemble_size > 1).
SUMMARY_METRICS = ("test_acc", "val_acc", "best_step", "step_s", "load_s", "feature_s", "parameters",
    "embedding_parameters", "layers", "hidden_size", "trainable_parameters", "train_examples", "val_examples",
    "test_examples", "encoder_unchanged", "member_test_acc", "member_val_acc", "mean_member_test_acc",
    "best_member_test_acc", "val_best_member_test_acc", "ensemble_test_acc", "ensemble_gain_over_mean",
    "ensemble_minus_best")

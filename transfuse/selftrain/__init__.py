"""Teacher–student self-training chains (Noisy Student; Shaw et al.'s chain) for few labels.

>>> chain = load_chain("examples/selftrain_pneumonia.yaml")
>>> out = run_chain(chain, workspace="workspace", smoke=True)
>>> [(r.role, r.generation, r.test_auc) for r in out.runs]

See ``docs/SELFTRAIN.md``.
"""

from .chain import (ChainOutcome, ChainRun, chain_status, labelled_indices, load_run_model,
                    run_chain, teacher_logits, train_student)
from .noise import ChainDataset, NoiseSpec, apply_stochastic_depth, make_augment
from .pseudo import PseudoLabels, PseudoSpec, pseudo_label_quality, select_pseudo_labels, teacher_probs
from .spec import (ChainSpec, baseline_specs, chain_from_dict, finetune_spec, load_chain,
                   student_spec, teacher_spec)

__all__ = [
    "ChainSpec", "load_chain", "chain_from_dict", "teacher_spec", "student_spec", "baseline_specs",
    "finetune_spec", "run_chain", "chain_status", "train_student", "teacher_logits",
    "load_run_model", "labelled_indices", "ChainRun", "ChainOutcome", "PseudoSpec",
    "PseudoLabels", "select_pseudo_labels", "pseudo_label_quality", "teacher_probs", "NoiseSpec",
    "make_augment", "apply_stochastic_depth", "ChainDataset",
]

"""Metrics, the masked loss and the uncertain-label policies, checked against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from transfuse.data.base import resolve_labels
from transfuse.train.loop import loss_fn
from transfuse.train.metrics import accuracy, auroc, classification_metrics


def _multiclass(n: int = 80, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k  # every class present
    rng.shuffle(y)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]  # informative but imperfect
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def _multilabel(n: int = 60, k: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(np.int64)
    y[:2] = [[0] * k, [1] * k]  # both values in every column
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 1.2 * (2 * y - 1))))
    return p, y


# -- AUC ------------------------------------------------------------------------------------------

def test_auc_of_a_hand_computed_example():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ranked right.
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], 1)
    res = auroc(probs, np.array([0, 0, 1, 1]), task="multiclass")
    assert res.macro == pytest.approx(0.75)
    assert res.per_class == pytest.approx((0.75, 0.75))


def test_multiclass_macro_equals_sklearn_ovr_macro():
    p, y = _multiclass()
    want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert auroc(p, y, task="multiclass").macro == pytest.approx(want, abs=1e-12)
    m = classification_metrics(p, y, task="multiclass", class_names=list("abcd"))
    assert m["auc"] == pytest.approx(want, abs=1e-12)
    assert 0.5 < want < 1  # the example is informative, so the check is not trivial


def test_multiclass_per_class_equals_sklearn():
    p, y = _multiclass()
    want = roc_auc_score(y, p, multi_class="ovr", average=None)
    res = auroc(p, y, task="multiclass")
    np.testing.assert_allclose(res.per_class, want, atol=1e-12)
    for c in range(4):
        assert res.per_class[c] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
    m = classification_metrics(p, y, task="multiclass", class_names=("a", "b", "c", "d"))
    assert [m[f"auc/{n}"] for n in "abcd"] == pytest.approx(list(want), abs=1e-12)
    assert m["acc"] == pytest.approx(float((p.argmax(1) == y).mean()))


def test_binary_two_class_equals_plain_binary_auc():
    p, y = _multiclass(n=50, k=2, seed=3)
    want = roc_auc_score(y, p[:, 1])
    res = auroc(p, y, task="multiclass")
    assert res.macro == pytest.approx(want, abs=1e-12)
    assert res.per_class == pytest.approx((want, want), abs=1e-12)


def test_multilabel_macro_and_per_class_equal_sklearn():
    p, y = _multilabel()
    res = auroc(p, y, task="multilabel")
    assert res.macro == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)
    np.testing.assert_allclose(res.per_class, roc_auc_score(y, p, average=None), atol=1e-12)
    m = classification_metrics(p, y, task="multilabel", class_names=("x", "y", "z"))
    assert m["auc/z"] == pytest.approx(roc_auc_score(y[:, 2], p[:, 2]), abs=1e-12)


def test_class_with_one_label_value_is_nan_and_left_out_of_macro():
    p, y = _multilabel(k=4)
    y[:, 1] = 0  # label 1 never positive: AUC undefined
    res = auroc(p, y, task="multilabel")
    assert math.isnan(res.per_class[1])
    others = [roc_auc_score(y[:, c], p[:, c]) for c in (0, 2, 3)]
    assert res.macro == pytest.approx(np.mean(others), abs=1e-12)
    m = classification_metrics(p, y, task="multilabel", class_names=("a", "b", "c", "d"))
    assert math.isnan(m["auc/b"]) and m["auc"] == pytest.approx(np.mean(others), abs=1e-12)


def test_multiclass_absent_class_is_nan_and_left_out_of_macro():
    p, y = _multiclass(k=3)
    y = np.where(y == 2, 0, y)  # class 2 never occurs
    res = auroc(p, y, task="multiclass")
    assert math.isnan(res.per_class[2])
    assert res.macro == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1)]))


def test_no_defined_auc_gives_nan_macro():
    res = auroc(np.full((4, 2), 0.5), np.zeros((4, 2)), task="multilabel")
    assert math.isnan(res.macro) and all(math.isnan(a) for a in res.per_class)


def test_mask_excludes_entries_from_the_auc():
    p, y = _multilabel(n=80, k=3, seed=5)
    rng = np.random.default_rng(7)
    mask = (rng.random(y.shape) > 0.3).astype(np.float32)
    mask[:2] = 1  # keep both label values in every column
    y_noise = y.copy()
    y_noise[mask == 0] = 1 - y_noise[mask == 0]  # masked labels are garbage: must not matter
    res = auroc(p, y_noise, task="multilabel", mask=mask)
    want = [roc_auc_score(y[mask[:, c] > 0, c], p[mask[:, c] > 0, c]) for c in range(3)]
    np.testing.assert_allclose(res.per_class, want, atol=1e-12)
    assert res.macro == pytest.approx(np.mean(want), abs=1e-12)
    assert auroc(p, y_noise, task="multilabel").macro != pytest.approx(res.macro)  # mask matters


def test_mask_that_leaves_one_label_value_gives_nan():
    p = np.array([[0.2], [0.7], [0.9], [0.4]])
    y = np.array([[0], [1], [1], [0]])
    mask = np.array([[0], [1], [1], [0]])  # only positives kept
    assert math.isnan(auroc(p, y, task="multilabel", mask=mask).per_class[0])


def test_masked_multilabel_accuracy_counts_kept_entries_only():
    p = np.array([[0.9, 0.2], [0.1, 0.8], [0.6, 0.4]])
    y = np.array([[1, 1], [0, 1], [0, 0]])
    mask = np.array([[1, 0], [1, 1], [0, 1]])  # kept: right, right, right, right
    assert accuracy(p, y, task="multilabel", mask=mask) == pytest.approx(1.0)
    assert accuracy(p, y, task="multilabel") == pytest.approx(4 / 6)


# -- uncertain labels: resolve_labels, loss and AUC -----------------------------------------------

RAW = np.array([[1, -1, 0], [-1, 0, np.nan], [0, 1, -1]], dtype=np.float32)


def test_resolve_labels_ignore_masks_uncertain_and_missing():
    y, m = resolve_labels(RAW, task="multilabel", policy="ignore")
    assert y.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert m.tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    assert y.dtype == torch.float32 and m.dtype == torch.float32


@pytest.mark.parametrize("policy,value", [("ones", 1.0), ("zeros", 0.0)])
def test_resolve_labels_ones_zeros_map_uncertain(policy, value):
    y, m = resolve_labels(RAW, task="multilabel", policy=policy)
    v = value
    assert y.tolist() == [[1, v, 0], [v, 0, 0], [0, 1, v]]
    assert m.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]  # only the missing (NaN) entry is masked


def test_resolve_labels_multiclass_keeps_indices():
    y, m = resolve_labels(np.array([2, 0, 1]), task="multiclass", policy="ignore")
    assert y.tolist() == [2, 0, 1] and y.dtype == torch.int64 and m.tolist() == [1, 1, 1]


def test_masked_loss_ignores_masked_entries():
    y, m = resolve_labels(RAW, task="multilabel", policy="ignore")
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.5, -0.7, 1.1], [-2.0, 0.4, 0.9]], requires_grad=True)
    loss = loss_fn(logits, y, m, "multilabel")
    keep = m.bool()
    want = F.binary_cross_entropy_with_logits(logits[keep], y[keep])
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    (g,) = torch.autograd.grad(loss, logits)
    assert (g[~keep] == 0).all()

    changed = logits.detach().clone()
    changed[~keep] = torch.tensor([9.0, -7.0, 5.0, -3.0])  # only masked entries change
    changed.requires_grad_(True)
    loss2 = loss_fn(changed, y, m, "multilabel")
    (g2,) = torch.autograd.grad(loss2, changed)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-7)
    torch.testing.assert_close(g2, g)


def test_loss_with_everything_masked_is_zero_not_nan():
    logits = torch.randn(2, 3)
    loss = loss_fn(logits, torch.zeros(2, 3), torch.zeros(2, 3), "multilabel")
    assert loss.item() == 0.0


def test_multiclass_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.0, 0.5, 0.2]])
    y = torch.tensor([0, 2])
    assert loss_fn(logits, y, torch.ones(2), "multiclass").item() == pytest.approx(
        F.cross_entropy(logits, y).item())


def test_ignore_policy_removes_uncertain_labels_from_the_auc():
    rng = np.random.default_rng(11)
    raw = rng.choice([0.0, 1.0, -1.0], size=(60, 2), p=[0.4, 0.4, 0.2]).astype(np.float32)
    raw[:2] = [[0, 0], [1, 1]]
    p = rng.random((60, 2))
    y, m = resolve_labels(raw, task="multilabel", policy="ignore")
    res = auroc(p, y.numpy(), task="multilabel", mask=m.numpy())
    for c in range(2):
        sure = raw[:, c] != -1
        assert res.per_class[c] == pytest.approx(roc_auc_score(raw[sure, c], p[sure, c]), abs=1e-12)
    # Under "ones" every row counts and -1 is a positive.
    y1, m1 = resolve_labels(raw, task="multilabel", policy="ones")
    res1 = auroc(p, y1.numpy(), task="multilabel", mask=m1.numpy())
    assert res1.per_class[0] == pytest.approx(roc_auc_score(raw[:, 0] != 0, p[:, 0]), abs=1e-12)

"""ImageNet forgetting (issue 31): the ImageNet head on a fine-tuned encoder, scored on the
hand-labelled scikit-image photos that ship offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transfuse.analysis.forgetting_imagenet import (PHOTOS, imagenet_hybrid_scores,
                                                    label_log_likelihood, photo_batch)


def test_the_photo_set_is_six_labelled_images_that_ship_with_scikit_image():
    x, labels = photo_batch(size=32)
    assert x.shape == (6, 3, 32, 32) and len(PHOTOS) == 6
    assert all(ls and all(0 <= c < 1000 for c in ls) for ls in labels)
    assert float(x.min()) >= -1 - 1e-6 and float(x.max()) <= 1 + 1e-6  # mean = std = 0.5


def test_label_log_likelihood_sums_each_label_set():
    p = np.full((2, 1000), 0.0)
    p[0, 281], p[0, 282] = 0.25, 0.25  # photo 0: two of its classes, 0.5 in all
    p[1, 967] = 0.1
    assert label_log_likelihood(p, [(281, 282, 285), (967,)]) == pytest.approx(
        (math.log(0.5) + math.log(0.1)) / 2)


@pytest.mark.slow
def test_an_unchanged_encoder_keeps_the_imagenet_score_at_every_stage():
    from transfuse.models import create_model
    from transfuse.weights import resolve_source

    sw = resolve_source("imagenet:efficientnet_lite0")
    model = create_model(sw.arch, spatial_dims=2, in_channels=3, num_classes=1000)
    state = sw.loader()
    model.load_state_dict(state)
    pts = imagenet_hybrid_scores(model, state, size=96)
    assert [s for s, _ in pts][:2] == ["none", "stem"] and pts[-1][0] == "block7"
    assert len({v for _, v in pts}) == 1 and math.log(1 / 1000) < pts[0][1] < 0
    torch.manual_seed(0)
    moved = {k: (v + 0.3 * torch.randn_like(v) if v.ndim >= 2 else v) for k, v in state.items()}
    after = imagenet_hybrid_scores(model, moved, size=96)
    assert after[0][1] == pts[0][1] and after[-1][1] < pts[-1][1]  # k = 0 is the source itself

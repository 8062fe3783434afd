"""``gabor``, ``moments`` and ``covariance`` init strategies (transfuse/inits/gabor.py, moments.py).

Gabor: the raw formula against hand-computed values, orientation and frequency selectivity,
channel handling, scaling, the 3D bank, and that only the first conv changes. Moments: exact
value multisets, no correlation with the source, seeding. Covariance: the drawn filters reproduce
the source filters' mean and covariance. Sources are "pretrained" models of the same
architecture whose weights were given structure (a shared spatial pattern with random amplitudes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transfuse.errors import ConfigError
from transfuse.inits import apply_init
from transfuse.inits.gabor import gabor_bank, gabor_kernel, gabor_kernel_3d, gabor_params
import transfuse.inits.moments as moments_mod
from transfuse.inits.moments import covariance_tensor, filter_moments, permute_tensor
from transfuse.models import create_model
from transfuse.weights.sources import SourceWeights

NUM_CLASSES = 3


# ----------------------------------------------------------------------------- helpers / fixtures


def _structured_source(name: str, spatial_dims: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """A 'pretrained' state dict: conv filters = amplitude × smooth pattern + noise (non-zero mean
    and strongly correlated pixels), linear weights shifted, BN parameters and stats perturbed."""
    g = torch.Generator().manual_seed(seed)
    model = create_model(name, spatial_dims=spatial_dims, num_classes=NUM_CLASSES)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if v.ndim >= 3:  # conv weight (O, I, *k)
            o, i, *ks = v.shape
            axes = [torch.linspace(-1, 1, s) if s > 1 else torch.zeros(1) for s in ks]
            grids = torch.meshgrid(*axes, indexing="ij")
            pattern = torch.exp(-sum(a ** 2 for a in grids)) * (1 + grids[-1])
            amp = 0.5 + torch.randn(o, i, *([1] * len(ks)), generator=g)
            noise = 0.3 * torch.randn(v.shape, generator=g)
            sd[k] = 0.05 * (amp * pattern + noise)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:
            sd[k] = v + 0.1 + 0.2 * torch.randn(v.shape, generator=g)
    return sd


def _source(name: str, sd: dict[str, torch.Tensor]) -> SourceWeights:
    return SourceWeights(name=f"test:{name}", arch=name, loader=lambda: sd)


@pytest.fixture(scope="module")
def cbr_src() -> dict[str, torch.Tensor]:
    return _structured_source("cbr_tiny")


def _actions(report) -> dict[str, str]:
    return {r.key: r.action for r in report.records}


def _filter_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation of two conv weights after removing the mean filter from each: the part of
    the weights that says which filter sits where (the mean filter is kept by ``covariance``)."""
    a, b = a.double().flatten(0, 1), b.double().flatten(0, 1)
    return _corr(a - a.mean(0), b - b.mean(0))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- Gabor: formula


def test_gabor_kernel_matches_hand_computed_values():
    # k = 3, θ = 0, ψ = 0, λ = 3, σ = 1, γ = 0.5: g = exp(-(x² + y²/4)/2) · cos(2πx/3),
    # x = column - 1, y = row - 1.
    c = math.cos(2 * math.pi / 3)  # = -1/2 at x = ±1
    expected = np.array([
        [math.exp(-(1 + 0.25) / 2) * c, math.exp(-0.25 / 2), math.exp(-(1 + 0.25) / 2) * c],
        [math.exp(-1 / 2) * c, 1.0, math.exp(-1 / 2) * c],
        [math.exp(-(1 + 0.25) / 2) * c, math.exp(-0.25 / 2), math.exp(-(1 + 0.25) / 2) * c],
    ])
    got = gabor_kernel(3, theta=0.0, wavelength=3.0, sigma=1.0, gamma=0.5, psi=0.0)
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    # corner value spelled out: exp(-0.625) · (-0.5)
    assert got[0, 0].item() == pytest.approx(-0.5 * math.exp(-0.625), abs=1e-12)

    # odd phase: cos(2πx/3 + π/2) = -sin(2πx/3), zero on the centre column
    odd = gabor_kernel(3, theta=0.0, wavelength=3.0, sigma=1.0, gamma=0.5, psi=math.pi / 2)
    s = math.sin(2 * math.pi / 3)
    assert odd[1, 0].item() == pytest.approx(math.exp(-0.5) * s, abs=1e-12)
    assert odd[1, 2].item() == pytest.approx(-math.exp(-0.5) * s, abs=1e-12)
    assert odd[:, 1].abs().max().item() < 1e-12

    # θ = π/2 swaps the roles of x and y: the transpose of the θ = 0 filter
    k0 = gabor_kernel(5, theta=0.0, wavelength=4.0, sigma=1.3, gamma=0.7, psi=0.3)
    k90 = gabor_kernel(5, theta=math.pi / 2, wavelength=4.0, sigma=1.3, gamma=0.7, psi=0.3)
    torch.testing.assert_close(k90, k0.T, rtol=0, atol=1e-12)


def test_gabor_params_bands_order_and_bank_entries():
    low = gabor_params(out_channels=64, kernel_size=7, band="low")
    high = gabor_params(out_channels=64, kernel_size=7, band="high")
    assert low["wavelengths"] == pytest.approx([7.0, 7 / 1.5])
    assert high["wavelengths"] == pytest.approx([3.5, 2.8])
    assert low["sigma"] == pytest.approx(7 / 4) and low["gamma"] == 0.5
    assert low["phases"] == pytest.approx([0.0, math.pi / 2])
    # 64 channels / (2 wavelengths × 2 phases) = 16 orientations, all filters distinct
    assert len(low["orientations"]) == 16
    assert low["orientations"][4] == pytest.approx(math.pi / 4)
    assert len(set(low["channels"])) == 64
    # orientation fastest, then wavelength, then phase
    assert low["channels"][:2] == [(0, 0, 0), (1, 0, 0)]
    assert low["channels"][16] == (0, 1, 0) and low["channels"][33] == (1, 0, 1)
    # small banks keep at least 4 orientations; floor on λ for small kernels
    small = gabor_params(out_channels=8, kernel_size=5, band="high")
    assert len(small["orientations"]) == 4
    assert small["wavelengths"] == pytest.approx([2.5, 2.2])

    # bank entry = the raw formula made zero-mean, up to a positive scale
    bank = gabor_bank(out_channels=64, in_channels=1, kernel_size=7, band="low").double()
    for c in (0, 5, 16, 37, 63):
        oi, wi, pi = low["channels"][c]
        g = gabor_kernel(7, theta=low["orientations"][oi], wavelength=low["wavelengths"][wi],
                         sigma=low["sigma"], gamma=low["gamma"], psi=low["phases"][pi])
        g = g - g.mean()
        w = bank[c, 0]
        scale = float((w * g).sum() / (g * g).sum())
        assert scale > 0
        torch.testing.assert_close(w, scale * g, rtol=0, atol=1e-6)
    # every filter zero-mean and equal L2 norm
    assert bank.flatten(1).mean(1).abs().max() < 1e-7
    norms = bank.flatten(1).norm(dim=1)
    assert float(norms.max() / norms.min()) == pytest.approx(1.0, abs=1e-5)


def test_gabor_orientation_selectivity():
    lam, k = 7 / 1.5, 7
    g = gabor_kernel(k, theta=0.0, wavelength=lam, sigma=k / 4, psi=0.0).float()
    g = g - g.mean()
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    matched = torch.cos(2 * math.pi * xx / lam)  # varies along x, like the θ = 0 carrier
    orthogonal = torch.cos(2 * math.pi * yy / lam)
    other_freq = torch.cos(2 * math.pi * xx / (lam * 3))

    def response(img, w):
        return float(F.conv2d(img[None, None], w[None, None]).abs().max())

    r_m, r_o, r_f = response(matched, g), response(orthogonal, g), response(other_freq, g)
    assert r_m > 3 * r_o
    assert r_m > r_f
    # in the bank: channel 0 (θ = 0) prefers the matched grating, the θ = π/2 channel the other
    bank = gabor_bank(out_channels=16, in_channels=1, kernel_size=7)
    p = gabor_params(out_channels=16, kernel_size=7)
    c90 = p["channels"].index((2, 0, 0))
    assert p["orientations"][2] == pytest.approx(math.pi / 2)
    assert response(matched, bank[0, 0]) > 2 * response(orthogonal, bank[0, 0])
    assert response(orthogonal, bank[c90, 0]) > 2 * response(matched, bank[c90, 0])


def _peak_frequencies(bank: torch.Tensor, n: int = 64) -> list[float]:
    """Radial frequency (cycles/px) of the FFT magnitude peak of each filter ``bank[:, 0]``."""
    spec = torch.fft.fft2(bank[:, 0].double(), s=(n, n)).abs().flatten(1)
    idx = spec.argmax(1)
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    return torch.hypot(f[idx // n], f[idx % n]).tolist()


def test_gabor_high_band_has_higher_dominant_frequency():
    for k in (5, 7, 11):
        low = gabor_bank(out_channels=32, in_channels=1, kernel_size=k, band="low")
        high = gabor_bank(out_channels=32, in_channels=1, kernel_size=k, band="high")
        f_low, f_high = _peak_frequencies(low), _peak_frequencies(high)
        assert np.mean(f_high) > 1.3 * np.mean(f_low), k
        # paired per channel (same orientation/phase): high ≥ low
        assert all(h >= lo for h, lo in zip(f_high, f_low)), k


def test_gabor_repeated_over_input_channels_and_gray_response():
    bank = gabor_bank(out_channels=16, in_channels=3, kernel_size=5)
    assert bank.shape == (16, 3, 5, 5) and bank.dtype == torch.float32
    for i in (1, 2):
        torch.testing.assert_close(bank[:, i], bank[:, 0], rtol=0, atol=0)
    # a gray image (R = G = B) through w gives the response of the grayscale filter g = 3 · w[:, 0]
    gray = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    rgb = gray.expand(1, 3, 12, 12)
    g = 3 * bank[:, :1]
    torch.testing.assert_close(F.conv2d(rgb, bank), F.conv2d(gray, g), rtol=1e-5, atol=1e-6)


def test_gabor_scaling_to_given_std_and_kaiming_default():
    w = gabor_bank(out_channels=24, in_channels=3, kernel_size=7, std=0.123)
    assert float(w.std()) == pytest.approx(0.123, rel=1e-5)
    w = gabor_bank(out_channels=24, in_channels=2, kernel_size=7)
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (2 * 49)), rel=1e-5)
    w3 = gabor_bank(out_channels=8, in_channels=1, kernel_size=3, spatial_dims=3)
    assert float(w3.std()) == pytest.approx(math.sqrt(2 / 27), rel=1e-5)


def test_gabor_3d_bank():
    w = gabor_bank(out_channels=32, in_channels=3, kernel_size=5, spatial_dims=3)
    assert w.shape == (32, 3, 5, 5, 5)
    flat = w[:, 0].double().flatten(1)
    assert flat.mean(1).abs().max() < 1e-7                 # each filter zero-mean
    assert flat.norm(dim=1).min() > 0.5 * flat.norm(dim=1).max()  # none vanishes
    assert torch.linalg.matrix_rank(flat) == 32           # 32 linearly independent filters
    p = gabor_params(out_channels=32, kernel_size=5, spatial_dims=3)
    dirs = torch.tensor(p["orientations"], dtype=torch.float64)
    assert dirs.shape == (8, 3)
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert (dirs[:, 0] > 0).all()                          # upper hemisphere
    # an in-plane direction reduces to the 2D formula times a Gaussian in depth
    th, lam, sig, gam = 0.4, 3.0, 1.2, 0.5
    g3 = gabor_kernel_3d(5, direction=(0.0, math.sin(th), math.cos(th)), wavelength=lam,
                         sigma=sig, gamma=gam, psi=0.2)
    g2 = gabor_kernel(5, theta=th, wavelength=lam, sigma=sig, gamma=gam, psi=0.2)
    z = torch.arange(5, dtype=torch.float64) - 2
    expected = g2[None] * torch.exp(-(gam ** 2) * z ** 2 / (2 * sig ** 2))[:, None, None]
    torch.testing.assert_close(g3, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_apply_gabor_changes_only_first_conv_cbr(dims):
    model = create_model("cbr_tiny", spatial_dims=dims, num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init(model, "gabor")
    acts = _actions(report)
    assert acts.pop("stem.0.weight") == "redrawn"
    assert set(acts.values()) == {"default"}
    rec = report.by_key()["stem.0.weight"]
    assert rec.note.startswith("Gabor bank: 8 ")  # 32 channels = 8 orientations × 2 × 2
    assert "low band" in rec.note and "Kaiming" in rec.note
    after = model.state_dict()
    for k, v in before.items():
        if k != "stem.0.weight":
            assert torch.equal(after[k], v), k
    w = after["stem.0.weight"]
    expected = gabor_bank(out_channels=32, in_channels=3, kernel_size=5, spatial_dims=dims)
    torch.testing.assert_close(w, expected)
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (3 * 5 ** dims)), rel=1e-4)


def test_apply_gabor_resnet18_and_bands():
    model = create_model("resnet18", num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init(model, "gabor:high")
    acts = _actions(report)
    assert acts.pop("conv1.weight") == "redrawn"
    assert set(acts.values()) == {"default"}
    assert "16 orientations" in report.by_key()["conv1.weight"].note
    assert "high band" in report.by_key()["conv1.weight"].note
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != "conv1.weight")
    torch.testing.assert_close(after["conv1.weight"],
                               gabor_bank(out_channels=64, in_channels=3, kernel_size=7, band="high"))
    # deterministic: no randomness in the bank
    other = create_model("resnet18", num_classes=NUM_CLASSES)
    apply_init(other, "gabor:high", seed=5)
    assert torch.equal(other.state_dict()["conv1.weight"], after["conv1.weight"])


def test_gabor_errors(cbr_src):
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    with pytest.raises(ConfigError, match="low or high"):
        apply_init(model, "gabor:mid")
    with pytest.raises(ConfigError, match="already set"):
        apply_init(model, "transfusion:stem+gabor", source=_source("cbr_tiny", cbr_src))
    with pytest.raises(ConfigError, match="at least 3"):
        gabor_bank(out_channels=4, in_channels=1, kernel_size=1)


# ----------------------------------------------------------------------------- moments


def test_moments_permutes_source_values(cbr_src):
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init(model, "moments", source=_source("cbr_tiny", cbr_src), seed=3)
    after = model.state_dict()
    weights = [r.key for r in report.records if r.kind in ("conv", "linear") and r.stage != "head"]
    assert weights == ["stem.0.weight", "block1.0.weight", "block2.0.weight", "block3.0.weight"]
    for r in report.records:
        if r.key in weights:
            assert r.action == "redrawn" and r.note.startswith("permutation"), r.key
            src = cbr_src[r.key]
            torch.testing.assert_close(after[r.key].flatten().sort().values,
                                       src.flatten().sort().values, rtol=0, atol=0)
            assert not torch.equal(after[r.key], src)
            if src.numel() > 100_000:
                assert abs(_corr(after[r.key], src)) < 0.01, r.key
        else:  # norms, BN statistics, classifier: default
            assert r.action == "default", r.key
            assert torch.equal(after[r.key], before[r.key]), r.key
    # filter structure destroyed: the shared spatial pattern no longer shows in the mean filter
    big = "block3.0.weight"
    src_mean = cbr_src[big].flatten(0, 1).mean(0)
    new_mean = after[big].flatten(0, 1).mean(0)
    assert float((new_mean - new_mean.mean()).abs().max()) < 0.1 * float((src_mean - src_mean.mean()).abs().max())


def test_moments_seeded(cbr_src):
    def draw(seed):
        m = create_model("cbr_tiny", num_classes=NUM_CLASSES)
        apply_init(m, "moments", source=_source("cbr_tiny", cbr_src), seed=seed)
        return m.state_dict()["block1.0.weight"].clone()

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10.0)
    assert sorted(permute_tensor(x, g).tolist()) == x.tolist()


@pytest.mark.parametrize("numba_path", [True, False], ids=["numba", "torch-bucketed"])
def test_permute_large_tensor(monkeypatch, numba_path):
    """A large tensor, in the compiled path and (torch fallback) above ``FY_MAX`` values, where
    the shuffle is bucketed (Rao–Sandelius): an exact permutation, uncorrelated with the
    source, seeded, shape and dtype kept."""
    monkeypatch.setattr(moments_mod, "USE_NUMBA", numba_path)
    if numba_path:
        assert moments_mod._compiled_shuffle() is not None, "numba is a dependency"
    rows = moments_mod.FY_MAX // 25 + 500
    src = torch.arange(rows * 25, dtype=torch.float32).reshape(rows, 1, 5, 5)  # value = index
    n = src.numel()
    assert n > moments_mod.FY_MAX
    out = permute_tensor(src, torch.Generator().manual_seed(1))
    assert out.shape == src.shape and out.dtype == src.dtype and out.is_contiguous()
    assert torch.equal(out.flatten().sort().values, src.flatten())
    assert abs(_corr(out, src)) < 0.01
    # any stretch of the output draws from the whole source: mean source index ≈ (n - 1) / 2
    flat = out.flatten().double()
    for part in (flat[: n // 10], flat[n // 2: n // 2 + n // 10], flat[-(n // 10):]):
        assert abs(float(part.mean()) / ((n - 1) / 2) - 1) < 0.01
    again = permute_tensor(src, torch.Generator().manual_seed(1))
    other = permute_tensor(src, torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)


@pytest.mark.parametrize("numba_path, fy_max, bucket", [(True, 0, 0), (False, 2, 1), (False, 100, 1)],
                         ids=["numba", "torch-bucketed", "torch-fisher-yates"])
def test_permutation_is_uniform(monkeypatch, numba_path, fy_max, bucket):
    """All 4! orders of 4 values equally likely: in the compiled Fisher–Yates, and in the torch
    fallback's bucketed path (forced with tiny ``FY_MAX``/``BUCKET``: 4 buckets of ≈ 1 value)
    and plain Fisher–Yates."""
    monkeypatch.setattr(moments_mod, "USE_NUMBA", numba_path)
    if not numba_path:
        monkeypatch.setattr(moments_mod, "FY_MAX", fy_max)
        monkeypatch.setattr(moments_mod, "BUCKET", bucket)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    draws = 12_000
    counts: dict[tuple, int] = {}
    for _ in range(draws):
        key = tuple(permute_tensor(x, g).int().tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 24 and all(sorted(k) == [0, 1, 2, 3] for k in counts)
    expected = draws / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 55.0  # 23 degrees of freedom: P(χ² > 55) ≈ 2e-4


def test_compiled_shuffle_is_bit_exact_for_every_dtype_and_unbiased_at_large_bounds():
    """Any dtype is shuffled as raw bits (NaN payloads, -0.0 and bfloat16 survive), and the
    position of one marked value is uniform over a long tensor (χ² over 16 bins)."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64):
        x = torch.arange(1000).to(dtype)
        if dtype.is_floating_point:
            x[3], x[4] = float("nan"), -0.0
        y = permute_tensor(x, g)
        assert y.dtype == dtype
        key = torch.int16 if x.element_size() == 2 else (torch.int32 if x.element_size() == 4 else torch.int64)
        assert torch.equal(x.view(key).sort().values, y.view(key).sort().values), dtype
    n, draws = 1000, 8000
    bins = torch.zeros(16)
    x = torch.zeros(n)
    x[0] = 1.0
    for _ in range(draws):
        pos = int(permute_tensor(x, g).argmax())
        bins[pos * 16 // n] += 1
    expected = bins.sum() / 16  # bins hold 62 or 63 positions: expected within 2 %
    chi2 = float(((bins - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # 15 degrees of freedom: P(χ² > 37.7) ≈ 1e-3


# ----------------------------------------------------------------------------- covariance


def _known_cov_source(o: int = 160, i: int = 128, k: int = 3, seed: int = 0):
    """Conv weight (O, I, k, k) whose filters are N(μ, Σ) with a known, strongly correlated Σ."""
    g = torch.Generator().manual_seed(seed)
    d = k * k
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    sigma = 0.01 * (a @ a.T / d + 0.2 * torch.eye(d, dtype=torch.float64))
    mu = 0.05 * torch.randn(d, generator=g, dtype=torch.float64)
    l = torch.linalg.cholesky(sigma)
    x = mu + torch.randn(o * i, d, generator=g, dtype=torch.float64) @ l.T
    return x.reshape(o, i, k, k).float(), mu, sigma


def test_covariance_reproduces_filter_statistics():
    ref, mu_true, sigma_true = _known_cov_source()  # 20480 filters of 3×3
    mu_src, cov_src = filter_moments(ref)
    assert torch.linalg.matrix_norm(cov_src - sigma_true) / torch.linalg.matrix_norm(sigma_true) < 0.05
    out = covariance_tensor(ref, ref, torch.Generator().manual_seed(7))
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    mu_new, cov_new = filter_moments(out)
    rel = float(torch.linalg.matrix_norm(cov_new - cov_src) / torch.linalg.matrix_norm(cov_src))
    assert rel < 0.05
    se = (torch.diagonal(cov_src) / (ref.shape[0] * ref.shape[1])).sqrt()
    assert ((mu_new - mu_src).abs() < 5 * se).all()
    assert abs(_filter_corr(out, ref)) < 0.02
    # seeded
    again = covariance_tensor(ref, ref, torch.Generator().manual_seed(7))
    other = covariance_tensor(ref, ref, torch.Generator().manual_seed(8))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_covariance_rank_deficient_source():
    # fewer filters (6) than dimensions (25): Σ is singular; the draw must stay finite, in the span
    ref = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    out = covariance_tensor(ref, ref, torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()
    mu, _ = filter_moments(ref)
    basis = (ref.double().reshape(6, 25) - mu).T           # columns span the centred filters
    resid = (out.double().reshape(6, 25) - mu).T
    proj = basis @ torch.linalg.lstsq(basis, resid).solution
    torch.testing.assert_close(proj, resid, rtol=0, atol=1e-5)


def test_apply_covariance_on_cbr(cbr_src):
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init(model, "covariance", source=_source("cbr_tiny", cbr_src), seed=0)
    after = model.state_dict()
    for r in report.records:
        if r.kind == "conv":
            assert r.action == "redrawn" and r.note.startswith("N(μ, Σ)"), r.key
        else:
            assert r.action == "default" and torch.equal(after[r.key], before[r.key]), r.key
    key = "block3.0.weight"  # 32768 filters of 5×5
    mu_src, cov_src = filter_moments(cbr_src[key])
    mu_new, cov_new = filter_moments(after[key])
    assert float(torch.linalg.matrix_norm(cov_new - cov_src) / torch.linalg.matrix_norm(cov_src)) < 0.05
    assert float((mu_new - mu_src).norm() / mu_src.norm()) < 0.05
    assert abs(_filter_corr(after[key], cbr_src[key])) < 0.01
    # not a permutation: values differ from the source's
    assert not torch.equal(after[key].flatten().sort().values, cbr_src[key].flatten().sort().values)


def test_covariance_falls_back_to_meanvar_for_1x1_and_linear():
    sd = _structured_source("resnet18")
    sd["fc.weight"] = torch.randn(1000, 512)  # an ImageNet head: replaced, stays default
    sd["fc.bias"] = torch.randn(1000)
    model = create_model("resnet18", num_classes=NUM_CLASSES)
    report = apply_init(model, "covariance", source=_source("resnet18", sd), seed=0)
    recs = report.by_key()
    assert recs["conv1.weight"].note.startswith("N(μ, Σ) of 192 source 7×7")
    assert recs["layer1.0.conv1.weight"].note.startswith("N(μ, Σ)")
    ds = recs["layer2.0.downsample.0.weight"]
    assert ds.action == "redrawn" and ds.note.startswith("Mean-Var fallback")
    ref = sd["layer2.0.downsample.0.weight"].double()
    assert ds.mean_after == pytest.approx(float(ref.mean()), abs=3 * float(ref.std()) / math.sqrt(ref.numel()))
    assert ds.std_after == pytest.approx(float(ref.std()), rel=0.05)
    assert recs["fc.weight"].action == "default" and recs["fc.bias"].action == "default"
    assert any("classifier replaced" in n for n in report.notes)


# ----------------------------------------------------------------------------- combinations


def test_gabor_plus_meanvar(cbr_src):
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    report = apply_init(model, "gabor+meanvar", source=_source("cbr_tiny", cbr_src), seed=0)
    recs = report.by_key()
    first = recs["stem.0.weight"]
    assert first.action == "redrawn" and first.note.startswith("Gabor bank")
    assert "source's first conv" in first.note
    w = model.state_dict()["stem.0.weight"]
    assert float(w.double().std()) == pytest.approx(float(cbr_src["stem.0.weight"].double().std()), rel=1e-4)
    assert _corr(w, gabor_bank(out_channels=32, in_channels=3, kernel_size=5)) == pytest.approx(1.0, abs=1e-6)
    for k in ("block1.0.weight", "block2.0.weight", "block3.0.weight"):
        assert recs[k].action == "redrawn" and recs[k].note.startswith("N("), k
    assert recs["fc.weight"].action == "default"
    assert {r.action for r in report.records if r.kind not in ("conv", "linear")} == {"default"}


def test_transfusion_stem_plus_covariance(cbr_src):
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    report = apply_init(model, "transfusion:stem+covariance", source=_source("cbr_tiny", cbr_src))
    after = model.state_dict()
    for r in report.records:
        if r.stage == "stem" and not r.key.endswith("num_batches_tracked"):
            assert r.action == "loaded" and torch.equal(after[r.key], cbr_src[r.key]), r.key
        elif r.kind == "conv":
            assert r.action == "redrawn" and r.note.startswith("N(μ, Σ)"), r.key
        else:
            assert r.action == "default", r.key


def test_moments_and_covariance_need_a_source():
    model = create_model("cbr_tiny", num_classes=NUM_CLASSES)
    for spec in ("moments", "covariance", "gabor+covariance"):
        with pytest.raises(ConfigError, match="needs pretrained weights"):
            apply_init(model, spec)
    with pytest.raises(ConfigError, match="no argument"):
        apply_init(model, "moments:all", source=_source("cbr_tiny", _structured_source("cbr_tiny")))

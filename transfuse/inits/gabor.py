"""``gabor``: the first convolution set to a synthetic Gabor filter bank, everything else default.

Raghu et al. 2019 (shared/reference/papers.md §1.10) initialise conv1 with synthetic Gabor filters
and the rest at random, and report the convergence benefit of a pretrained conv1. The paper gives
no formula, frequencies or colour handling; the choices below are ours and are documented here
and in docs/INITS.md ("Gabor").

**2D filter** (:func:`gabor_kernel`), on a centred grid — ``x`` is the column offset and ``y``
the row offset (downwards) from the kernel centre, ``x, y ∈ {-(k-1)/2, …, (k-1)/2}``::

    x' =  x cosθ + y sinθ
    y' = -x sinθ + y cosθ
    g(x, y) = exp(-(x'² + γ² y'²) / (2σ²)) · cos(2π x'/λ + ψ)

θ = 0 gives a carrier that varies along the columns (vertical stripes); θ = π/2 is its transpose.

**3D filter** (:func:`gabor_kernel_3d`), on a centred ``(z, y, x)`` grid (depth, row, column
offsets), for a unit direction ``d = (d_z, d_y, d_x)``::

    u     = z d_z + y d_y + x d_x                 (coordinate along d)
    r⊥²   = z² + y² + x² - u²                     (squared distance from the axis through d)
    g(p)  = exp(-(u² + γ² r⊥²) / (2σ²)) · cos(2π u/λ + ψ)

a plane wave along ``d`` under a Gaussian envelope (σ along ``d``, σ/γ across it). With
``d = (0, sinθ, cosθ)`` this is the 2D filter on every depth slice, times ``exp(-γ² z²/(2σ²))``.

**Pseudo-3D** first convolutions (kernel ``1×k_h×k_w``, Wacker et al.'s in-plane U-Nets) get the
2D bank (orientations θ, as in 2D) in their single depth slice: ``w[:, :, 0]`` is exactly the 2D
bank of a ``k_h×k_w`` conv, so each slice of a volume is filtered as a 2D image would be. Full
``k×k×k`` kernels get the 3D bank below.

**The bank** (:func:`gabor_bank`). Kernel size ``k`` (the smallest kernel dimension):

- envelope ``σ = k/4`` (±2σ spans the kernel), aspect ``γ = 0.5`` (elongated along the stripes);
- wavelengths: band ``low`` → ``λ ∈ {k, k/1.5}`` (1 and 1.5 cycles across the kernel), band
  ``high`` → ``λ ∈ {k/2, k/2.5}`` (2 and 2.5 cycles); every ``λ`` is floored at 2.2 px, just
  above the Nyquist limit of 2 px (at λ = 2 an odd filter vanishes on the integer grid). For
  k = 7: low λ = 7, 4.67 px; high λ = 3.5, 2.8 px. For k = 5: low 5, 3.33; high 2.5, 2.2;
- phases ``ψ ∈ {0, π/2}`` (even and odd filters);
- orientations: 2D ``n_θ = max(4, ⌈O / 4⌉)`` angles ``θ_j = jπ/n_θ``; 3D ``n_d = max(8, ⌈O / 4⌉)``
  directions on the upper hemisphere, golden-spiral: ``d_z = 1 - (j + ½)/n_d``,
  ``φ_j = j·π(3 - √5)``, ``d = (d_z, ρ sinφ_j, ρ cosφ_j)``, ``ρ = √(1 - d_z²)``.
  The bank therefore has ``n_θ · 2 · 2 ≥ O`` filters and every out-channel gets a different one;
- order: out-channel ``c`` takes orientation ``c mod n_θ``, wavelength
  ``(c // n_θ) mod 2`` and phase ``(c // (2 n_θ)) mod 2`` (orientation varies fastest, so a
  truncated bank still covers every orientation); channels beyond the bank would cycle.

Each filter is made **zero-mean** (no response to a constant image) and scaled to unit L2 norm
(all filters carry the same energy). The grayscale filter ``g_c`` is repeated over the ``I`` input
channels and divided by ``I`` — ``w[c, i] = g_c / I`` — so a gray image (all channels equal) gets
exactly the response of ``g_c``. Finally the whole tensor is scaled so that its standard deviation
equals the **pretrained first conv's** std when a source is present (as aligned to the model, i.e.
after input-channel adaptation), else the **Kaiming** std ``√(2 / fan_in)``,
``fan_in = I · k^dims``. The framework only passes a source when some part of the spec needs one
(``gabor+meanvar``); ``gabor`` alone uses the Kaiming std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .adapt import Aligned
from .base import Action, InitContext, register_init

__all__ = ["gabor_kernel", "gabor_kernel_3d", "gabor_bank", "gabor_params", "BANDS"]

StateDict = dict[str, torch.Tensor]

#: cycles across the kernel for each band (λ = k / cycles)
BANDS: dict[str, tuple[float, ...]] = {"low": (1.0, 1.5), "high": (2.0, 2.5)}
PHASES = (0.0, math.pi / 2)
GAMMA = 0.5
MIN_WAVELENGTH = 2.2


def _sizes(kernel_size: int | Sequence[int], dims: int) -> tuple[int, ...]:
    ks = (int(kernel_size),) * dims if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
    if len(ks) != dims:
        raise ValueError(f"kernel_size {kernel_size!r} has {len(ks)} dims, expected {dims}")
    return ks


def _axis(k: int) -> torch.Tensor:
    return torch.arange(k, dtype=torch.float64) - (k - 1) / 2


def gabor_kernel(kernel_size: int | Sequence[int], *, theta: float, wavelength: float, sigma: float,
                 gamma: float = GAMMA, psi: float = 0.0) -> torch.Tensor:
    """The raw 2D Gabor formula of the module docstring (no normalisation).

    Args:
        kernel_size: ``k`` or ``(k_rows, k_cols)``.
        theta: orientation θ (radians).
        wavelength: λ in pixels.
        sigma: envelope σ in pixels.
        gamma: aspect ratio γ.
        psi: phase ψ (radians).

    Returns:
        float64 tensor ``(k_rows, k_cols)``; entry ``[r, c]`` is ``g(x=c-(k-1)/2, y=r-(k-1)/2)``.
    """
    kh, kw = _sizes(kernel_size, 2)
    y, x = torch.meshgrid(_axis(kh), _axis(kw), indexing="ij")
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    env = torch.exp(-(xr ** 2 + gamma ** 2 * yr ** 2) / (2 * sigma ** 2))
    return env * torch.cos(2 * math.pi * xr / wavelength + psi)


def gabor_kernel_3d(kernel_size: int | Sequence[int], *, direction: Sequence[float], wavelength: float,
                    sigma: float, gamma: float = GAMMA, psi: float = 0.0) -> torch.Tensor:
    """The raw 3D Gabor formula of the module docstring (no normalisation).

    Args:
        kernel_size: ``k`` or ``(k_d, k_h, k_w)``.
        direction: ``(d_z, d_y, d_x)``, normalised to unit length here.

    Returns:
        float64 tensor ``(k_d, k_h, k_w)``; entry ``[a, r, c]`` is ``g`` at
        ``(z, y, x) = (a, r, c) - (k-1)/2``.
    """
    kd, kh, kw = _sizes(kernel_size, 3)
    d = torch.as_tensor(direction, dtype=torch.float64)
    if d.shape != (3,) or float(d.norm()) == 0:
        raise ValueError(f"direction must be a non-zero 3-vector, got {direction!r}")
    d = d / d.norm()
    z, y, x = torch.meshgrid(_axis(kd), _axis(kh), _axis(kw), indexing="ij")
    u = z * d[0] + y * d[1] + x * d[2]
    perp2 = (z ** 2 + y ** 2 + x ** 2 - u ** 2).clamp_min(0)
    env = torch.exp(-(u ** 2 + gamma ** 2 * perp2) / (2 * sigma ** 2))
    return env * torch.cos(2 * math.pi * u / wavelength + psi)


def _hemisphere(n: int) -> list[tuple[float, float, float]]:
    """``n`` golden-spiral unit directions ``(d_z, d_y, d_x)`` on the upper hemisphere."""
    golden = math.pi * (3 - math.sqrt(5))
    out = []
    for j in range(n):
        dz = 1 - (j + 0.5) / n
        rho = math.sqrt(max(0.0, 1 - dz * dz))
        out.append((dz, rho * math.sin(j * golden), rho * math.cos(j * golden)))
    return out


def gabor_params(*, out_channels: int, kernel_size: int | Sequence[int], spatial_dims: int = 2,
                 band: str = "low") -> dict:
    """The parameters of the bank: ``orientations`` (θ list in 2D, direction list in 3D),
    ``wavelengths``, ``phases``, ``sigma``, ``gamma`` and, per out-channel, ``channels`` =
    ``[(orientation index, wavelength index, phase index), ...]`` (see the module docstring).

    Raises:
        ConfigError: unknown band, unsupported ``spatial_dims`` or a kernel smaller than 3.
    """
    if band not in BANDS:
        raise ConfigError(f"gabor band {band!r} is not one of {', '.join(BANDS)}; write gabor, "
                          "gabor:low or gabor:high")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"gabor supports 2D and 3D convolutions, not {spatial_dims}D")
    ks = _sizes(kernel_size, spatial_dims)
    k = min(ks)
    if k < 3:
        raise ConfigError(f"gabor needs a first convolution with a spatial kernel of at least 3, "
                          f"got {'x'.join(map(str, ks))}")
    wavelengths = [max(k / c, MIN_WAVELENGTH) for c in BANDS[band]]
    per = len(wavelengths) * len(PHASES)
    n_orient = max(4 if spatial_dims == 2 else 8, -(-out_channels // per))
    orientations: list = ([j * math.pi / n_orient for j in range(n_orient)] if spatial_dims == 2
                          else _hemisphere(n_orient))
    total = n_orient * per
    channels = []
    for c in range(out_channels):
        c %= total
        channels.append((c % n_orient, (c // n_orient) % len(wavelengths),
                         (c // (n_orient * len(wavelengths))) % len(PHASES)))
    return {"orientations": orientations, "wavelengths": wavelengths, "phases": list(PHASES),
            "sigma": k / 4, "gamma": GAMMA, "channels": channels, "band": band,
            "kernel_size": ks}


def gabor_bank(*, out_channels: int, in_channels: int, kernel_size: int | Sequence[int],
               spatial_dims: int = 2, band: str = "low", std: float | None = None) -> torch.Tensor:
    """A Gabor filter bank shaped as a conv weight (see the module docstring for every choice).

    Args:
        out_channels: ``O``, number of filters.
        in_channels: ``I``; the grayscale filter is repeated over them and divided by ``I``.
        kernel_size: ``k`` or a tuple of ``spatial_dims`` sizes.
        spatial_dims: 2 or 3.
        band: ``"low"`` or ``"high"``.
        std: standard deviation of the returned tensor; ``None`` gives the Kaiming std
            ``√(2 / (I · ∏k))``.

    Returns:
        float32 tensor ``(O, I, k, k)`` (2D) or ``(O, I, k, k, k)`` (3D): each filter zero-mean,
        ``w[o, i] = w[o, 0]`` for every ``i``, tensor std equal to ``std``. A 3D kernel of depth 1
        (pseudo-3D, ``(1, k_h, k_w)``) gets the 2D bank in its single depth slice.
    """
    if _pseudo3d(kernel_size, spatial_dims):
        return gabor_bank(out_channels=out_channels, in_channels=in_channels,
                          kernel_size=_sizes(kernel_size, 3)[1:], spatial_dims=2, band=band,
                          std=std).unsqueeze(2)
    p = gabor_params(out_channels=out_channels, kernel_size=kernel_size,
                     spatial_dims=spatial_dims, band=band)
    ks = p["kernel_size"]
    filters = []
    for oi, wi, pi in p["channels"]:
        kw = dict(wavelength=p["wavelengths"][wi], sigma=p["sigma"], gamma=p["gamma"],
                  psi=p["phases"][pi])
        g = (gabor_kernel(ks, theta=p["orientations"][oi], **kw) if spatial_dims == 2
             else gabor_kernel_3d(ks, direction=p["orientations"][oi], **kw))
        g = g - g.mean()
        filters.append(g / g.norm().clamp_min(1e-12))
    bank = torch.stack(filters)[:, None].expand(out_channels, in_channels, *ks) / in_channels
    if std is None:
        std = math.sqrt(2.0 / (in_channels * math.prod(ks)))
    cur = float(bank.std()) if bank.numel() > 1 else 0.0
    if cur > 0:
        bank = bank * (std / cur)
    return bank.contiguous().float()


def _pseudo3d(kernel_size: int | Sequence[int], spatial_dims: int) -> bool:
    """A 3D kernel of depth 1 (``1×k×k``, pseudo-3D): Gabor filters are drawn in its plane."""
    return spatial_dims == 3 and not isinstance(kernel_size, int) and len(kernel_size) == 3 \
        and int(kernel_size[0]) == 1


def _describe(p: dict, spatial_dims: int) -> str:
    n = len(p["orientations"])
    what = "orientations" if spatial_dims == 2 else "directions"
    lams = ", ".join(f"{w:.3g}" for w in p["wavelengths"])
    return (f"Gabor bank: {n} {what} × {len(p['wavelengths'])} wavelengths × {len(p['phases'])} "
            f"phases, {p['band']} band (λ = {lams} px, σ = {p['sigma']:.3g} px, γ = {p['gamma']})")


@register_init("gabor", arg="[low|high]",
               description="first conv set to a synthetic Gabor filter bank (low or high "
               "frequency band), rest default; scaled to the source's first-conv std if a "
               "source is given, else Kaiming")
def gabor_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    band = ctx.arg or "low"
    if band not in BANDS:
        raise ConfigError(f"init gabor takes low or high, not {ctx.arg!r} (gabor:low, gabor:high)")
    key = ctx.first_conv
    if key is None:
        raise ConfigError(f"init gabor: model {ctx.model_name} has no convolution to set")
    if key not in ctx.eligible:
        raise ConfigError(f"init gabor: the first convolution {key} was already set by an earlier "
                          "part of the init spec; put gabor first, e.g. gabor+meanvar")
    w = state[key]
    if w.ndim != ctx.spatial_dims + 2:
        raise ConfigError(f"init gabor: first convolution {key} has shape {tuple(w.shape)}, "
                          f"not a {ctx.spatial_dims}D conv weight")
    ref = source.state.get(key) if source is not None else None
    if ref is not None and ref.numel() > 1:
        std, scale = float(ref.double().std()), "std of the source's first conv"
    else:
        std, scale = None, "Kaiming std"
    ks = tuple(w.shape[2:])
    flat = _pseudo3d(ks, ctx.spatial_dims)
    dims = 2 if flat else ctx.spatial_dims
    p = gabor_params(out_channels=w.shape[0], kernel_size=ks[1:] if flat else ks, spatial_dims=dims,
                     band=band)
    bank = gabor_bank(out_channels=w.shape[0], in_channels=w.shape[1], kernel_size=ks,
                      spatial_dims=ctx.spatial_dims, band=band, std=std)
    state[key] = bank.to(w.dtype)
    where = f" in the single depth slice of the {'×'.join(map(str, ks))} kernel" if flat else ""
    return {key: Action("redrawn", f"{_describe(p, dims)}{where}; {scale}")}

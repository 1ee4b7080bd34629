"""Figures (matplotlib, headless: the object API with the Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
import os

import numpy as np
from matplotlib.figure import Figure

from selfnorm._io import atomic_write_bytes
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.theory import fixed_point, g


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Render ``fig`` to PNG in memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def mapping_field_figure(
    mu_range: tuple[float, float] = (-0.5, 0.5),
    nu_range: tuple[float, float] = (0.5, 2.0),
    n: int = 21,
    lam: float = LAMBDA_01,
    alpha: float = ALPHA_01,
) -> Figure:
    r"""The vector field :math:`g(\mu, \nu) - (\mu, \nu)` for :math:`\omega = 0, \tau = 1`, with
    the fixed point marked (the paper's Figure 2)."""
    mu, nu = np.meshgrid(np.linspace(*mu_range, n), np.linspace(*nu_range, n))
    mu_t, nu_t = g(mu, 0.0, nu, 1.0, lam, alpha)
    du, dv = mu_t - mu, nu_t - nu
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    q = ax.quiver(mu, nu, du, dv, np.hypot(du, dv), cmap="viridis", angles="xy")
    fig.colorbar(q, ax=ax, label="step length |g(μ, ν) − (μ, ν)|")
    fp = fixed_point(0.0, 1.0, 0.0, 1.0, lam, alpha)
    fm, fv = (round(v, 4) + 0.0 for v in (fp.mean, fp.var))  # + 0.0 turns -0.0 into 0.0
    ax.plot([fp.mean], [fp.var], "r*", markersize=16, label=f"fixed point ({fm:g}, {fv:g})")
    ax.set_xlabel("μ (mean of the inputs)")
    ax.set_ylabel("ν (variance of the inputs)")
    ax.set_title(f"SELU mean/variance mapping g (ω = 0, τ = 1, λ = {lam:.4f}, α = {alpha:.4f})")
    ax.legend(loc="upper right")
    return fig

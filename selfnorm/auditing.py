r"""Audit a model for the mistakes that silently stop a SELU network from self-normalizing.

:func:`audit` runs the model once, in eval mode and without gradients, on an example input (a
Gaussian batch at the first SELU's fixed point, (0, 1) for the standard SELU, when none is
given), with hooks that record the execution order of the leaf modules and the mean and variance
of every SELU output. It then removes every hook, restores every module's own training flag and
returns a list of :class:`Finding`. "Next to" and "feeding" are decided in execution order
(skipping Identity, Flatten, pooling, and dropout where it says so); when no input can be made it
falls back to registration order (``named_modules``) and says so.

The bands come from the paper's Theorem 1 (Klambauer et al. 2017): on
:math:`\mu, \omega \in [-0.1, 0.1]`, :math:`\nu \in [0.8, 1.5]`, :math:`\tau \in [0.95, 1.1]`
the mean/variance map g is a contraction towards the fixed point (0, 1). Inside that domain the
network is proved to self-normalize; outside it there is no guarantee. Each band is widened by
the sampling error of the estimate (4 standard errors, or the matching chi-square quantiles),
so a correct network is flagged with probability ~6e-5 per check.

====================================  ==========  ===========================================
kind                                  severity    when
====================================  ==========  ===========================================
``weight_init``                       error       Linear/Conv feeding a SELU: mean per-unit
                                                  :math:`\tau = \sum_i w_i^2` outside [0.95,
                                                  1.1] x chi2_N/N quantiles (N weights), or
                                                  mean :math:`\omega = \sum_i w_i` beyond 0.1 +
                                                  4 sqrt(1.1/units). ``looks_like`` names the
                                                  likely culprit (``selu_gain_3/4`` 9/16,
                                                  ``torch_default`` 1/3, ``xavier_glorot``
                                                  2 n_in/(n_in+n_out), ``he_relu`` 2,
                                                  ``unit_normal`` n_in)
``bias_nonzero``                      info/warn/  bias rms of a layer feeding a SELU: > 0
                                      error       info, > 0.1 warning, > 0.5 error
``dropout_with_selu``                 error       plain (p > 0) Dropout next to a SELU
``alpha_dropout_without_selu``        error       alpha dropout next to another activation
``alpha_dropout_mismatch``            warning     alpha dropout whose (mean, var, saturation)
                                                  are not the SELU's fixed point and -λα
``dropout_rate_looks_like_keep_prob`` error/warn  p > 0.5 (error for alpha dropout)
``norm_with_selu``                    warning     BatchNorm/LayerNorm/GroupNorm/... next to a
                                                  SELU
``output_activation``                 warning     an activation after the last Linear/Conv
                                                  (info for LogSoftmax, fine with NLLLoss)
``inplace_op``                        info        ``inplace=True`` (breaks activation hooks)
``no_selu``                           info        no SELU at all (module or ``F.selu``)
``activation_drift``                  error/warn/ the first SELU whose output mean/variance
                                      info        leaves the band; error if the last SELU is
                                                  out of band too, warning if the network
                                                  recovers, info if a finding upstream explains
                                                  it (its fix names that finding)
``input_not_standardized``            warning     a given example input outside the band
``dynamic_check_skipped``             info        no input could be made
``inert_dropout``                     error       a dropout that drops nothing in training
                                                  mode: ``F.alpha_dropout(x, p)`` without
                                                  ``training=True`` in a forward, or a dropout
                                                  module switched to eval
``functional_activation``             info        activation functions called in a forward
                                                  (seen; their outputs are not measured)
====================================  ==========  ===========================================

Why these numbers:

* Biases: at the fixed point a unit's pre-activation is :math:`\mathcal N(b_j, \approx 1)`, so
  biases of rms r add :math:`r^2` to the layer's pre-activation variance and shift unit means
  by :math:`b_j`. r <= 0.1 keeps the means inside Theorem 1's :math:`\mu` domain and adds <= 1%
  (PyTorch's default bias, rms :math:`1/\sqrt{3 n_{in}}`, is there for :math:`n_{in} > 33`);
  r > 0.5 adds > 25%; N(0, 1) biases (the seed example) double it.
* Drop rate 0.5: keep probabilities are conventionally >= 0.5 (TensorFlow 1's ``keep_prob``),
  drop rates <= 0.5 (the paper used 0.05 and 0.1).
* The SELU output band is Theorem 1's :math:`(\mu, \nu)` domain around the SELU's fixed point,
  widened by 4 standard errors taken over units (a layer's statistics are averages over its
  units, so this covers the finite batch and the finite width) and by the variance's random
  walk (each layer's mean :math:`\tau` is :math:`1 \pm \sqrt{2/N}` and each layer passes on its
  own sampling error, damped by :math:`\partial\tilde\nu/\partial\nu \approx 0.78` per
  layer). Networks 8 units wide wander
  to variances of 0.3-3 with a correct init; these terms keep that from being called a bug.
* The audit runs in eval mode: dropout is then the identity and a fresh BatchNorm (running
  statistics (0, 1)) too, so the drift measured is the network's own; dropout and norms are
  judged statically.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from selfnorm import SELU, AlphaDropout, init_snn_
    >>> net = nn.Sequential(nn.Linear(64, 128), SELU(), AlphaDropout(0.7), nn.Linear(128, 10))
    >>> net = init_snn_(net, torch.Generator().manual_seed(0))
    >>> [(f.severity, f.layer, f.kind) for f in audit(net)]
    [('error', '2', 'dropout_rate_looks_like_keep_prob')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.special import chdtri
from torch import nn

from selfnorm import taxonomy
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.findings import INPUT, KINDS, MODEL, SEVERITIES, Finding, Severity, Value
from selfnorm.theory import _THEOREM_DOMAINS, fixed_point, jacobian
from selfnorm.tracing import (
    FunctionalCall,
    Moments,
    Trace,
    call_findings,
    check_dropout_modes,
    evaluating,
    registration_trace,
    run_trace,
    trace_calls,
)

__all__ = [
    "DEFAULT_BATCH",
    "KINDS",
    "SEVERITIES",
    "Finding",
    "audit",
    "infer_input_shape",
]


DEFAULT_BATCH = 256
"""Rows of the standardized Gaussian input made when none is given."""


_THEOREM1 = _THEOREM_DOMAINS["theorem1"]
_MEAN_HALF_WIDTH = _THEOREM1["mu"][1]  # 0.1: |mean| band around the fixed-point mean
_VAR_BAND = _THEOREM1["nu"]  # (0.8, 1.5): variance band, relative to the fixed-point variance
_TAU_BAND = _THEOREM1["tau"]  # (0.95, 1.1)
_OMEGA_HALF_WIDTH = _THEOREM1["omega"][1]  # 0.1
_Z = 4.0
"""Standard errors added to each band (a 4-sigma tail has probability 3.2e-5 per side)."""
_BIAS_WARNING_RMS = 0.1
_BIAS_ERROR_RMS = 0.5
_KEEP_PROB_RATE = 0.5

_SHAPE_ONLY = taxonomy.SHAPE_ONLY_TYPES
"""Skipped when looking for a module's neighbour: they move values, not which unit made them."""

_INIT_FIX = "selfnorm.init_snn_(model) or torch.nn.init.normal_(w, 0, 1/sqrt(fan_in))"
_DRIFT_CAUSES = ("weight_init", "bias_nonzero", "input_not_standardized", "norm_with_selu")
"""Findings that explain a drift downstream of them (it is then reported as info). A norm counts
because the audit runs in eval mode, where a fresh BatchNorm's running statistics (0, 1) make it
the identity, so whatever it would normalize in training shows up as drift."""


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]  # NaN is never inside


def _band(
    m: Moments, mean0: float, var0: float, walk: float = 0.0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Theorem 1's (mean, var) domain around the fixed point ``(mean0, var0)``, widened by
    _Z standard errors of ``m``; ``walk`` is the relative sd of the variance that finite-width
    weights upstream add (see :func:`_variance_walk`)."""
    half = _MEAN_HALF_WIDTH + _Z * _finite(m.se_mean)
    se_var = math.hypot(_finite(m.se_var), var0 * walk)
    lo = max(_VAR_BAND[0] * var0 - _Z * se_var, 0.0)
    return (mean0 - half, mean0 + half), (lo, _VAR_BAND[1] * var0 + _Z * se_var)


def _r(x: float) -> float:
    """Round to 6 significant digits for readable, stable output."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else x


# ---------------------------------------------------------------------------------------------
# Input: given, made from a shape, or inferred from the first Linear.
# ---------------------------------------------------------------------------------------------


_FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
"""What a forward on a wrongly shaped input raises (shape mismatches are RuntimeErrors)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _infer(model: nn.Module, batch_size: int) -> tuple[tuple[int, ...] | None, str]:
    tried = []
    for m in model.modules():
        if taxonomy.is_weight_layer(m) and not isinstance(m, nn.Linear) and not tried:
            return None, "the first Linear/Conv is a Conv, whose spatial input size is unknown"
        if isinstance(m, nn.Linear) and m.in_features not in (t for t, _ in tried):
            try:
                with evaluating(model):
                    model(_standard_gaussian(model, (2, m.in_features), None))
            except _FORWARD_ERRORS as exc:
                tried.append((m.in_features, _first_line(exc)))
                continue
            return (batch_size, m.in_features), ""
    if not tried:
        return None, "no Linear or Conv layer to take an input size from"
    return None, "; ".join(f"(N, {n}) failed: {why}" for n, why in tried)


def infer_input_shape(model: nn.Module, batch_size: int = DEFAULT_BATCH) -> tuple[int, ...] | None:
    """``(batch_size, in_features)`` of the first Linear, in registration order, whose
    ``in_features`` the model accepts (tried on 2 rows, in eval mode, without gradients), or
    ``None`` when there is none or the first Linear/Conv is a Conv (its spatial size is
    unknown).

    Example:
        >>> infer_input_shape(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
        (256, 784)
    """
    return _infer(model, batch_size)[0]


def _standard_gaussian(
    model: nn.Module, shape: Sequence[int], generator: torch.Generator | None
) -> torch.Tensor:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float64, device="cpu")
    mean0, var0 = _input_fixed_point(model)
    return (mean0 + math.sqrt(var0) * x).to(device=device, dtype=dtype)


def _input_fixed_point(model: nn.Module) -> tuple[float, float]:
    """(mean, var) the input should have: the fixed point of the first SELU in registration
    order, (0, 1) for the standard SELU (and for a model without SELU)."""
    first = next((m for m in model.modules() if taxonomy.is_selu(m)), None)
    return (0.0, 1.0) if first is None else _selu_fixed_point(first)


def _shape_of(args: tuple) -> str:
    return ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else "?" for a in args)


# ---------------------------------------------------------------------------------------------
# Static checks.
# ---------------------------------------------------------------------------------------------


def _neighbour(trace: Trace, i: int, step: int, skip: tuple) -> int | None:
    j = i + step
    while 0 <= j < len(trace.modules) and isinstance(trace.modules[j], skip):
        j += step
    return j if 0 <= j < len(trace.modules) else None


def _is_activation(m: nn.Module) -> bool:
    return taxonomy.is_activation(m)


def _selu_params(m: nn.Module) -> tuple[float, float]:
    """(scale, alpha) of a SELU module."""
    alpha, scale = taxonomy.selu_parameters(m)
    return scale, alpha


def _selu_fixed_point(m: nn.Module) -> tuple[float, float]:
    lam, alpha = _selu_params(m)
    if (lam, alpha) == (LAMBDA_01, ALPHA_01):
        return 0.0, 1.0
    fp = fixed_point(0.0, 1.0, lam=lam, alpha=alpha)
    return (fp.mean, fp.var) if fp.converged else (0.0, 1.0)


def _wrong_inits(fan_in: int, fan_out: int) -> dict[str, tuple[float, str]]:
    """id -> (mean tau, description) of the common wrong inits, to name the likely culprit."""
    out = {
        "selu_gain_3/4": (9 / 16, "calculate_gain('selu') = 3/4 (kaiming_normal_(nonlinearity="
        "'selu')), which does not self-normalize"),
        "torch_default": (1 / 3, "PyTorch's default init (uniform, kaiming_uniform_(a=sqrt(5)))"),
        "xavier_glorot": (2 * fan_in / (fan_in + fan_out), "Xavier/Glorot (Keras' default)"),
        "he_relu": (2.0, "He/Kaiming for ReLU (gain sqrt(2))"),
    }  # fmt: skip
    if fan_in > 4:
        out["unit_normal"] = (float(fan_in), "N(0, 1) weights (no 1/sqrt(fan_in) scaling)")
    return out


def _tau_band(n_weights: int, band: tuple[float, float] = _TAU_BAND) -> tuple[float, float]:
    r"""Where the mean :math:`\tau` of a layer of ``n_weights`` normal weights falls when its
    true value lies in ``band`` (Theorem 1's [0.95, 1.1]): the measured mean is the true one times
    :math:`\chi^2_N / N`, so the band is widened by that distribution's quantiles at the
    probability of a 4-sigma Gaussian tail (exact also for small N, where it is skewed)."""
    tail = 0.5 * math.erfc(_Z / math.sqrt(2.0))
    lo = float(chdtri(n_weights, 1.0 - tail)) / n_weights
    hi = float(chdtri(n_weights, tail)) / n_weights
    return band[0] * lo, band[1] * hi


def _check_weight(name: str, m: nn.Module) -> Finding | None:
    w = taxonomy.unit_weights(m).to(torch.float64)
    units, n = w.shape
    fan_out = units * math.prod(m.weight.shape[2:])
    tau = (w * w).sum(1)
    omega = w.sum(1)
    tau_mean, omega_mean = float(tau.mean()), float(omega.mean())
    tau_band = _tau_band(w.numel())
    # omega_j ~ N(0, tau) under a zero-mean normal init, so mean omega ~ N(0, tau / units)
    omega_half = _OMEGA_HALF_WIDTH + _Z * math.sqrt(_TAU_BAND[1] / units)
    if _inside(tau_mean, tau_band) and abs(omega_mean) <= omega_half:
        return None
    measured: dict[str, Value] = {
        "weight_std": _r(w.std(unbiased=False)),
        "tau_mean": _r(tau_mean),
        "tau_min": _r(tau.min()),
        "tau_max": _r(tau.max()),
        "omega_mean": _r(omega_mean),
        "omega_sd": _r(omega.std(unbiased=False)),
        "fan_in": n,
        "weights": w.numel(),
    }
    fix = _INIT_FIX + " (LeCun normal)"
    guesses = {}
    for key, (c, text) in _wrong_inits(n, fan_out).items():
        lo, hi = _tau_band(w.numel(), (c, c))
        if lo <= tau_mean <= hi:
            guesses[key] = (abs(tau_mean - c), text)
    if guesses:
        key = min(guesses, key=lambda k: guesses[k][0])
        measured["looks_like"] = key
        fix += f"; it looks like {guesses[key][1]}"
    return Finding(
        "error",
        name,
        "weight_init",
        measured,
        {
            "weight_std": _r(1.0 / math.sqrt(n)),
            "tau_mean": [_r(tau_band[0]), _r(tau_band[1])],
            "omega_mean": [_r(-omega_half), _r(omega_half)],
        },
        fix,
    )


def _check_bias(name: str, m: nn.Module) -> Finding | None:
    if m.bias is None:
        return None
    b = m.bias.detach().to(torch.float64)
    rms = float(b.square().mean().sqrt())
    if rms == 0.0:
        return None
    if rms > _BIAS_ERROR_RMS:
        severity: Severity = "error"
    elif rms > _BIAS_WARNING_RMS:
        severity = "warning"
    else:
        severity = "info"
    return Finding(
        severity,
        name,
        "bias_nonzero",
        {"bias_rms": _r(rms), "bias_mean": _r(b.mean()), "bias_max_abs": _r(b.abs().max())},
        {"bias_rms": 0.0},
        "torch.nn.init.zeros_(layer.bias) (selfnorm.init_snn_ zeroes every bias)",
    )


def _check_dropout(trace: Trace, i: int, name: str, m: nn.Module) -> list[Finding]:
    found = []
    alpha = isinstance(m, taxonomy.ALPHA_DROPOUT_TYPES)
    p = float(m.p)
    if p > _KEEP_PROB_RATE:
        found.append(
            Finding(
                "error" if alpha else "warning",
                name,
                "dropout_rate_looks_like_keep_prob",
                {"p": p, "module": type(m).__name__},
                {"p": [0.0, _KEEP_PROB_RATE]},
                f"p is the drop rate: if {p:g} is a keep probability pass p={1 - p:.4g}"
                + (" (SNNs use 0.05-0.1)" if alpha else ""),
            )
        )
    if p == 0.0:
        return found
    before = _neighbour(trace, i, -1, _SHAPE_ONLY)
    after = _neighbour(trace, i, +1, _SHAPE_ONLY)
    if not alpha:
        selu = next((j for j in (before, after) if j is not None and _is_selu(trace, j)), None)
        if selu is not None:
            found.append(
                Finding(
                    "error",
                    name,
                    "dropout_with_selu",
                    {"dropout": type(m).__name__, "next_to": trace.names[selu]},
                    {"dropout": "AlphaDropout"},
                    "replace it with selfnorm.AlphaDropout(p) (FeatureAlphaDropout for conv "
                    "maps): plain dropout changes the variance SELU converges to",
                )
            )
        return found
    act = next(
        (j for j in (before, after) if j is not None and _is_activation(trace.modules[j])), None
    )
    if act is None:
        return found
    am = trace.modules[act]
    if not taxonomy.is_selu(am):
        found.append(
            Finding(
                "error",
                name,
                "alpha_dropout_without_selu",
                {
                    "dropout": type(m).__name__,
                    "next_to": f"{trace.names[act]} ({type(am).__name__})",
                },
                {"next_to": "SELU"},
                f"use nn.Dropout with {type(am).__name__}, or make the activation selfnorm.SELU "
                "(alpha dropout sets units to SELU's saturation value)",
            )
        )
        return found
    lam, a = _selu_params(am)
    mean0, var0 = _selu_fixed_point(am)
    drop_mean = float(getattr(m, "mean", 0.0))
    drop_var = float(getattr(m, "var", 1.0))
    drop_sat = float(getattr(m, "saturation", -LAMBDA_01 * ALPHA_01))
    want = (mean0, var0, -lam * a)
    got = (drop_mean, drop_var, drop_sat)
    if any(abs(x - y) > 1e-3 * max(1.0, abs(y)) for x, y in zip(got, want, strict=True)):
        found.append(
            Finding(
                "warning",
                name,
                "alpha_dropout_mismatch",
                {"mean": _r(drop_mean), "var": _r(drop_var), "saturation": _r(drop_sat)},
                {"mean": _r(mean0), "var": _r(var0), "saturation": _r(-lam * a)},
                f"selfnorm.AlphaDropout(p, mean={mean0:.4g}, var={var0:.4g}, "
                f"saturation={-lam * a:.4g}) to match {trace.names[act]}",
            )
        )
    return found


def _is_selu(trace: Trace, j: int) -> bool:
    return taxonomy.is_selu(trace.modules[j])


def _static(trace: Trace) -> list[Finding]:
    found: list[Finding] = []
    seen: set[str] = set()
    last_affine = max(
        (i for i, m in enumerate(trace.modules) if taxonomy.is_weight_layer(m)), default=None
    )
    for i, (name, m) in enumerate(zip(trace.names, trace.modules, strict=True)):
        if name in seen:
            continue
        seen.add(name)
        if taxonomy.is_weight_layer(m):
            nxt = _neighbour(trace, i, +1, _SHAPE_ONLY + taxonomy.DROPOUT_TYPES)
            if nxt is not None and _is_selu(trace, nxt):
                found += [f for f in (_check_weight(name, m), _check_bias(name, m)) if f]
        elif isinstance(m, taxonomy.DROPOUT_TYPES):
            found += _check_dropout(trace, i, name, m)
        elif taxonomy.is_norm(m):
            skip = _SHAPE_ONLY + taxonomy.DROPOUT_TYPES
            near = [j for j in (_neighbour(trace, i, -1, skip), _neighbour(trace, i, +1, skip))]
            selu = next((j for j in near if j is not None and _is_selu(trace, j)), None)
            if selu is not None:
                found.append(
                    Finding(
                        "warning",
                        name,
                        "norm_with_selu",
                        {"norm": type(m).__name__, "next_to": trace.names[selu]},
                        {"norm": "none"},
                        f"remove the {type(m).__name__}: SELU with LeCun init normalizes by "
                        "itself (or use ReLU with the norm instead of SELU)",
                    )
                )
        if _is_activation(m) and last_affine is not None and i > last_affine:
            if not any(f.kind == "output_activation" for f in found):
                log_softmax = isinstance(m, nn.LogSoftmax)
                found.append(
                    Finding(
                        "info" if log_softmax else "warning",
                        name,
                        "output_activation",
                        {
                            "after_output_layer": trace.names[last_affine],
                            "module": type(m).__name__,
                        },
                        {"module": "none (logits)"},
                        "fine with nn.NLLLoss; with nn.CrossEntropyLoss remove it"
                        if log_softmax
                        else f"return logits: remove the {type(m).__name__} after the last layer "
                        "and use a loss that takes logits (nn.CrossEntropyLoss, "
                        "BCEWithLogitsLoss)",
                    )
                )
        if getattr(m, "inplace", False) is True:
            found.append(
                Finding(
                    "info",
                    name,
                    "inplace_op",
                    {"module": type(m).__name__, "inplace": True},
                    {"inplace": False},
                    "pass inplace=False: an in-place op overwrites the tensor a forward hook "
                    "recorded (activation recorders) and breaks backward hooks",
                )
            )
    if not any(taxonomy.is_selu(m) for m in trace.modules):
        found.append(
            Finding(
                "info",
                MODEL,
                "no_selu",
                {"selu_modules": 0},
                {"selu_modules": ">= 1"},
                "self-normalization needs SELU: selfnorm.SELU / nn.SELU modules (or F.selu "
                "calls in forward, which the audit sees but does not measure)",
            )
        )
    return found


# ---------------------------------------------------------------------------------------------
# Dynamic checks.
# ---------------------------------------------------------------------------------------------


def _check_inputs(args: tuple, mean0: float, var0: float) -> list[Finding]:
    found = []
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for k, x in enumerate(tensors):
        mom = Moments.of(x.reshape(-1))  # elements, not features: spread is the finding
        mean_band, var_band = _band(mom, mean0, var0)
        if _inside(mom.mean, mean_band) and _inside(mom.var, var_band):
            continue
        found.append(
            Finding(
                "warning",
                INPUT if len(tensors) == 1 else f"{INPUT}[{k}]",
                "input_not_standardized",
                {"mean": _r(mom.mean), "var": _r(mom.var), "std": _r(math.sqrt(mom.var))},
                {"mean": [_r(b) for b in mean_band], "var": [_r(b) for b in var_band]},
                "standardize every feature with the training set's statistics: (x - mean) / std",
            )
        )
    return found


def _variance_walk(trace: Trace, order: list[int]) -> dict[int, float]:
    r"""Relative sd of each SELU's output variance that a correct but finite network wanders by.

    Two sources, both real inputs to the next layer rather than errors of the estimate: a layer
    of N LeCun-normal weights multiplies the variance by its mean :math:`\tau`, which is
    :math:`1 \pm \sqrt{2/N}`, and the previous SELU's output variance itself is off its
    expectation by its (relative) standard error (a batch of one sample across 64 units is far
    from its population). g damps a deviation of the variance by
    :math:`\rho = \partial\tilde\nu/\partial\nu \approx 0.78` per layer (its Jacobian at
    the fixed point), so :math:`a_l = \rho^2 (a_{l-1} + (se_{l-1}/\nu_0)^2) + 2/N_l`.
    """
    walk, a, prev_rel_se = {}, 0.0, 0.0
    skip = _SHAPE_ONLY + taxonomy.DROPOUT_TYPES
    for i in order:
        m = trace.modules[i]
        lam, alpha = _selu_params(m)
        mean0, var0 = _selu_fixed_point(m)
        rho = float(jacobian(mean0, 0.0, var0, 1.0, lam, alpha)[1][1])
        a = rho * rho * (a + prev_rel_se**2)
        j = _neighbour(trace, i, -1, skip)
        if j is not None and taxonomy.is_weight_layer(trace.modules[j]):
            a += 2.0 / trace.modules[j].weight.numel()
        walk[i] = math.sqrt(a)
        prev_rel_se = _finite(trace.selu[i].se_var) / var0
    return walk


def _check_drift(trace: Trace, earlier: list[Finding]) -> list[Finding]:
    order = sorted(trace.selu)
    if not order:
        return []
    walk = _variance_walk(trace, order)
    first_out = None
    bands = {}
    for i in order:
        mean0, var0 = _selu_fixed_point(trace.modules[i])
        bands[i] = _band(trace.selu[i], mean0, var0, walk[i])
        mb, vb = bands[i]
        if first_out is None and not (
            _inside(trace.selu[i].mean, mb) and _inside(trace.selu[i].var, vb)
        ):
            first_out = i
    if first_out is None:
        return []
    last = order[-1]
    last_in = _inside(trace.selu[last].mean, bands[last][0]) and _inside(
        trace.selu[last].var, bands[last][1]
    )
    first_pos = {}
    for j, n in enumerate(trace.names):
        first_pos.setdefault(n, j)
    causes = [
        f
        for f in earlier
        if f.kind in _DRIFT_CAUSES
        and f.severity != "info"
        and first_pos.get(f.layer, -1) <= first_out
    ]
    s, sl = trace.selu[first_out], trace.selu[last]
    mb, vb = bands[first_out]
    if causes:
        severity: Severity = "info"
        fix = (
            "caused by " + ", ".join(f"{f.kind} on {f.layer}" for f in causes) + ": fix that first"
        )
    else:
        severity = "warning" if last_in and last != first_out else "error"
        fix = (
            "find what feeds this SELU off its fixed point (a scaling module, a skip connection, "
            "trained weights far from tau = 1); " + _INIT_FIX
        )
    return [
        Finding(
            severity,
            trace.names[first_out],
            "activation_drift",
            {
                "mean": _r(s.mean),
                "var": _r(s.var),
                "selu_index": order.index(first_out) + 1,
                "selu_count": len(order),
                "last_layer": trace.names[last],
                "last_mean": _r(sl.mean),
                "last_var": _r(sl.var),
                "last_in_band": last_in,
            },
            {"mean": [_r(b) for b in mb], "var": [_r(b) for b in vb]},
            fix,
        )
    ]


# ---------------------------------------------------------------------------------------------
# The audit.
# ---------------------------------------------------------------------------------------------


def _functional_selu_layers(
    model: nn.Module, calls: Sequence[FunctionalCall], found: Sequence[Finding]
) -> list[Finding]:
    """The weight and bias checks of every weight layer that feeds a functional SELU
    (``F.selu(self.fc(x))`` in a forward), as a SELU module after it gets them."""
    modules = dict(model.named_modules())
    have = {(f.layer, f.kind) for f in found}
    feeders = [c.after for c in calls if c.function == "selu" and not c.in_module and c.after]
    out = []
    for name in dict.fromkeys(feeders):
        for f in (_check_weight(name, modules[name]), _check_bias(name, modules[name])):
            if f is not None and (f.layer, f.kind) not in have:
                out.append(f)
    return out


def audit(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[Finding]:
    r"""Check ``model`` for what stops it from self-normalizing; return the findings.

    The model runs once, in eval mode, without gradients, on ``example_input`` (a tensor or a
    tuple of positional arguments; it is cloned first, so in-place modules cannot change it),
    or on a standardized Gaussian batch of shape ``input_shape``, or, when both are ``None``, of
    shape :func:`infer_input_shape`. Every hook is removed and every module's training flag
    restored afterwards. Without an input (a CNN without ``input_shape``), or when the inferred
    one does not fit, the static checks use registration order and a ``dynamic_check_skipped``
    info says so.

    Args:
        model: the network.
        example_input: a batch of real, standardized data; its own mean/variance is checked.
        input_shape: full shape of a made-up input, batch first (e.g. ``(256, 784)``); use a
            batch of 100+ rows for tight statistics. Only with ``example_input=None``.
        generator: draws the made-up input. Default ``torch.Generator().manual_seed(0)``.

    Returns:
        Findings ordered by where they occur in the network (input first), then by
        :data:`KINDS`. The network is fine when none has severity ``"error"``.

    Raises:
        ValueError: both ``example_input`` and ``input_shape`` given, a bad ``input_shape``, or
            the model raised on a given input or shape (the message names the shape).

    Functional calls (``F.selu``, ``F.alpha_dropout``, ... inside a ``forward``) are seen by a
    second forward in training mode (:func:`selfnorm.tracing.trace_calls`): a dropout call that
    drops nothing there is an ``inert_dropout`` error, functional activations an info (their
    outputs are not measured: only SELU modules' are), and a weight layer whose output goes
    straight into ``F.selu`` gets the weight and bias checks of one followed by a SELU module.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(100, 100), nn.SELU(), nn.Linear(100, 10))
        >>> found = audit(net)  # PyTorch's default init
        >>> for f in found:
        ...     print(f.severity, f.layer, f.kind)
        error 0 weight_init
        info 0 bias_nonzero
        info 1 activation_drift
        >>> found[0].measured["looks_like"], round(found[0].measured["tau_mean"], 1)
        ('torch_default', 0.3)
    """
    if example_input is not None and input_shape is not None:
        raise ValueError(
            "pass example_input or input_shape, not both (input_shape only shapes a made-up "
            "standardized Gaussian input)"
        )
    found: list[Finding] = []
    given = example_input is not None
    why = ""
    if given:
        args = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    else:
        if input_shape is None:
            input_shape, why = _infer(model, DEFAULT_BATCH)
        else:
            input_shape = tuple(input_shape)
            if not input_shape or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape
            ):
                raise ValueError(
                    f"input_shape={input_shape!r} must be positive integers, batch first, "
                    "e.g. (256, 784)"
                )
        args = None if input_shape is None else (_standard_gaussian(model, input_shape, generator),)

    trace = None
    if args is None:
        found.append(
            Finding(
                "info",
                MODEL,
                "dynamic_check_skipped",
                {"input": f"none: {why}"},
                {"input": "a batch the model accepts, e.g. shape (256, C, H, W)"},
                "pass example_input= or input_shape= (CLI: --input-shape 256,C,H,W); "
                "neighbours were taken in registration order",
            )
        )
    else:
        try:
            trace = run_trace(model, args)
        except _FORWARD_ERRORS as exc:
            raise ValueError(
                f"model(x) failed on the example input of shape {_shape_of(args)}: "
                f"{_first_line(exc)}; pass an input the model accepts"
            ) from exc
    if trace is None:
        trace = registration_trace(model)
    if given:
        found += _check_inputs(args, *_input_fixed_point(model))
    found += _static(trace)
    found += check_dropout_modes(model)
    if args is not None:
        try:
            calls = trace_calls(model, *args)
        except _FORWARD_ERRORS:  # the eval-mode forward worked; this one is extra
            calls = []
        found = call_findings(calls, found)
        found += _functional_selu_layers(model, calls, found)
    if trace.executed:
        found += _check_drift(trace, found)
    position = {INPUT: -2, MODEL: -1}
    for j, name in enumerate(trace.names):
        position.setdefault(name, j)

    def key(f: Finding) -> tuple[int, int]:
        pos = position.get(f.layer, position.get(INPUT) if f.layer.startswith(INPUT) else -1)
        return pos, KINDS.index(f.kind)

    return sorted(found, key=key)

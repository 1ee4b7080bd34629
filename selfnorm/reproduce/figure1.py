r"""The paper's Figure 1, reproduced (``selfnorm reproduce figure1``).

Klambauer et al. (2017), Figure 1: training loss against update steps for SNNs and ReLU
networks with BatchNorm of depth 8, 16 and 32, plain SGD, width equal to the input
dimension, on MNIST. The paper trained with learning rate 1e-5 for 2000 epochs; the default
here (lr 0.01, 2 epochs over 10,000 training images, batch 128) finishes on 2 CPU cores in
minutes and says so in its report; ``paper=True`` restores the paper's settings. Each curve
gets a number for its step-to-step variability, the standard deviation of
:math:`\Delta_t = \log L_t - \log L_{t-1}` (``roughness``), to test the claim that SNN
curves are smoother, and the mean log-loss over the run (``mean_log_loss``: lower means it
fell faster).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfnorm import _validate
from selfnorm._io import atomic_write_json, atomic_write_text
from selfnorm.data import DataConfig, load_dataset
from selfnorm.models import build_mlp
from selfnorm.report.html import figure, figures_html, render_page
from selfnorm.report.plots import figure1_figure
from selfnorm.specs import get_spec
from selfnorm.tables import render
from selfnorm.training import (
    batch_bounds,
    epoch_permutation,
    resolve_device,
    train_epoch,
)

__all__ = ["Figure1Config", "run_figure1", "roughness"]


def roughness(losses: np.ndarray) -> float:
    r"""Step-to-step variability of a loss curve: :math:`\operatorname{std}_t(\log L_t -
    \log L_{t-1})` (0 for a curve falling by the same factor every step).

    Example:
        >>> round(roughness(np.array([1.0, 0.5, 0.25, 0.125])), 12)
        0.0
    """
    logs = np.log(np.asarray(losses, dtype=float))
    return float(np.std(np.diff(logs)))


@dataclass(frozen=True)
class Figure1Config:
    """Settings of the Figure 1 reproduction (defaults: minutes on 2 CPU cores)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    depths: tuple[int, ...] = (8, 16, 32)
    variants: tuple[str, ...] = ("selu", "relu+bn")
    lr: float = 0.01
    """The paper: 1e-5."""
    epochs: int = 2
    """The paper: 2000."""
    batch_size: int = 128
    train_samples: int | None = 10_000
    """First N training images (None: all); the paper used all."""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for v in self.variants:
            get_spec(v)
        for d in self.depths:
            _validate.positive_int("depth", d)
        if _validate.finite("lr", self.lr) <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        _validate.positive_int("epochs", self.epochs)
        _validate.positive_int("batch_size", self.batch_size)
        if self.train_samples is not None:
            _validate.positive_int("train_samples", self.train_samples)

    @classmethod
    def paper(cls, **over: Any) -> Figure1Config:
        """The paper's settings: lr 1e-5, 2000 epochs, all training images (days on a CPU)."""
        return cls(**{"lr": 1e-5, "epochs": 2000, "train_samples": None, **over})


def run_figure1(config: Figure1Config, out: str | Path, progress: bool = True) -> dict:
    """Train every (variant, depth) with plain SGD, log the loss of every step; write
    ``figure1.json``, ``figure1.png``, ``report.html`` and ``summary.md`` into ``out``."""
    from tqdm.auto import tqdm

    out = Path(out)
    device = resolve_device(config.device)
    ds = load_dataset(
        DataConfig(config.dataset, data_dir=config.data_dir, standardize="global"),
        progress=progress,
    )
    n = len(ds.y_train) if config.train_samples is None else config.train_samples
    x = torch.from_numpy(ds.x_train[:n]).flatten(1).to(device)
    y = torch.from_numpy(ds.y_train[:n]).to(device)
    width = x.shape[1]
    bounds = batch_bounds(len(x), config.batch_size)
    steps_per_epoch = len(bounds)
    # A partial last batch (fewer samples) has a noisier loss: an outlier at every epoch's end
    # that would also inflate the roughness. Curves and numbers use the full batches only.
    full = np.tile([j - i >= config.batch_size for i, j in bounds], config.epochs)
    curves: dict[str, dict[str, Any]] = {}
    for variant in config.variants:
        for depth in config.depths:
            key = f"{variant} depth {depth}"
            gen = torch.Generator().manual_seed(config.seed)
            model = build_mlp(width, ds.num_classes, depth, width, variant, generator=gen)
            model = model.to(device)
            opt = torch.optim.SGD(model.parameters(), lr=config.lr)
            torch.manual_seed(config.seed)
            losses = torch.empty(config.epochs * steps_per_epoch, device=device)
            t0 = time.perf_counter()
            bar = tqdm(range(1, config.epochs + 1), desc=f"{key:>18}", disable=not progress)
            for epoch in bar:
                lo = (epoch - 1) * steps_per_epoch
                perm = epoch_permutation(len(x), config.seed, epoch).to(device)
                train_epoch(
                    model, opt, x, y, perm, config.batch_size,
                    step_losses=losses[lo : lo + steps_per_epoch],
                )  # fmt: skip
            curve = losses.cpu().numpy().astype(float)[full]
            finite = bool(np.isfinite(curve).all())
            curves[key] = {
                "variant": variant,
                "depth": depth,
                "step": (np.flatnonzero(full) + 1).tolist(),
                "loss": curve.tolist() if finite else [v if math.isfinite(v) else None
                                                       for v in curve.tolist()],
                "roughness": roughness(curve) if finite else None,
                "mean_log_loss": float(np.mean(np.log(curve))) if finite else None,
                "final_loss": float(np.mean(curve[-max(1, len(curve) // 10) :]))
                if finite
                else None,
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
    result = {
        "config": {**dataclasses.asdict(config), "width": width, "train_samples_used": len(x),
                   "steps_per_epoch": steps_per_epoch, "device": str(device),
                   "partial_steps_left_out": int((~full).sum())},
        "curves": curves,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "figure1.json", result)
    _figure1_report(result, out)
    return result


def _figure1_report(result: dict, out: Path) -> None:
    cfg, curves = result["config"], result["curves"]
    fig = figure(
        "figure1",
        "Training loss (log scale) against update steps; solid: SNN (SELU), dashed: "
        "ReLU + BatchNorm; darker = deeper. Full batches only: each epoch's partial last batch "
        f"({cfg['partial_steps_left_out']} steps in all) is left out of the curves and numbers.",
        figure1_figure(curves),
    )
    (out / "figure1.png").write_bytes(fig.png)
    changed = (
        f"The paper used SGD with learning rate 1e-5 for 2000 epochs; this run used lr "
        f"{cfg['lr']} for {cfg['epochs']} epoch(s) over {cfg['train_samples_used']} training "
        f"images (batch {cfg['batch_size']}) so that it finishes on a CPU in minutes. "
        "`selfnorm reproduce figure1 --paper` restores the paper's settings."
        if (cfg["lr"], cfg["epochs"], cfg["train_samples"]) != (1e-5, 2000, None)
        else "Run with the paper's settings (lr 1e-5, 2000 epochs, all training images)."
    )
    table = render(
        [
            "curve",
            "roughness (std of step-to-step change of log loss)",
            "mean log loss",
            "final loss (last 10% of steps)",
            "seconds",
        ],
        [
            [
                k,
                _fmt(c["roughness"], ".4f"),
                _fmt(c["mean_log_loss"], ".3f"),
                _fmt(c["final_loss"], ".4f"),
                f"{c['seconds']:.1f}",
            ]
            for k, c in curves.items()
        ],
        "html",
        html_id="comparison",
    )
    verdict = _figure1_verdict(curves)
    body = (
        f"<p class=intro>{changed}</p>"
        f"{table}"
        f"<p class=verdict id=verdict>{verdict}</p><h2>Figures</h2>{figures_html([fig])}"
    )
    sub = (
        f"{cfg['dataset']}, width {cfg['width']}, depths {cfg['depths']}, plain SGD, "
        f"{cfg['steps_per_epoch'] * cfg['epochs']} update steps per curve, device {cfg['device']}"
    )
    title = "Reproduction: Figure 1 of Klambauer et al. (2017)"
    atomic_write_text(out / "report.html", render_page(title, sub, body))
    md_rows = "\n".join(
        f"| {k} | {_fmt(c['roughness'], '.4f')} | {_fmt(c['mean_log_loss'], '.3f')} | "
        f"{_fmt(c['final_loss'], '.4f')} |"
        for k, c in curves.items()
    )
    atomic_write_text(
        out / "summary.md",
        f"# {title}\n\n{sub}\n\n{changed}\n\n| curve | roughness | mean log loss | final loss |"
        f"\n|---|---|---|---|\n{md_rows}\n\n{verdict}\n",
    )


def _fmt(v: float | None, spec: str) -> str:
    return "diverged" if v is None else format(v, spec)


def _figure1_verdict(curves: dict[str, dict]) -> str:
    parts = []
    depths = sorted({c["depth"] for c in curves.values()})
    variants = list(dict.fromkeys(c["variant"] for c in curves.values()))
    if len(variants) != 2:
        return ""
    a, b = variants
    smoother = faster = 0
    for d in depths:
        ca, cb = curves[f"{a} depth {d}"], curves[f"{b} depth {d}"]
        if None in (ca["roughness"], cb["roughness"]):
            parts.append(f"At depth {d} a run diverged.")
            continue
        smoother += ca["roughness"] < cb["roughness"]
        faster += ca["mean_log_loss"] < cb["mean_log_loss"]
    parts.insert(
        0,
        f"{a} was smoother than {b} at {smoother} of {len(depths)} depths and its loss fell "
        f"faster (lower mean log loss) at {faster} of {len(depths)}.",
    )
    return " ".join(parts)

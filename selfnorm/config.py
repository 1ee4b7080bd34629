"""Experiment configuration: frozen dataclasses, one per concern, validated on construction.

An experiment is resolved in layers: defaults < ``--preset`` < ``--config FILE.toml`` < explicit
command-line flags. The resolved :class:`ExperimentConfig` is written to the run directory as
``config.json`` next to the results it produced, and :func:`experiment_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfnorm import _validate
from selfnorm.data import STANDARDIZE_MODES, DataConfig
from selfnorm.factory import absolute_target
from selfnorm.recording.config import RecordConfig
from selfnorm.specs import get_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PRESETS",
    "ExperimentConfig",
    "AvhConfig",
    "CnnConfig",
    "FactoryConfig",
    "MODEL_KINDS",
    "MlpConfig",
    "ModelConfig",
    "model_from_dict",
    "model_keys",
    "RecordConfig",
    "TrainConfig",
    "experiment_from_dict",
    "load_toml",
    "merge",
]


@dataclass(frozen=True)
class MlpConfig:
    """A fully connected network: ``depth`` hidden layers (``--model mlp``, the default).

    Example:
        >>> MlpConfig(depth=2).kind, MlpConfig(depth=2).depth
        ('mlp', 2)
    """

    kind: str = field(default="mlp", init=False)
    """``mlp`` (fixed: the kind of this config)."""
    depth: int = 4
    """Hidden layers."""
    width: int = 512
    """Hidden units per layer (the first layer's for ``conic``)."""
    shape: str = "rect"
    """``rect`` (equal widths) or ``conic`` (geometrically shrinking)."""

    def __post_init__(self) -> None:
        _validate.positive_int("depth", self.depth)
        _validate.positive_int("width", self.width)
        if self.shape not in ("rect", "conic"):
            raise ValueError(f"shape={self.shape!r}; choose 'rect' or 'conic'")


@dataclass(frozen=True)
class CnnConfig:
    """A small convolutional network for image data (``--model cnn``): one conv block per entry
    of ``channels``, then a linear classifier.

    Example:
        >>> CnnConfig(channels=(8, 16)).kind
        'cnn'
    """

    kind: str = field(default="cnn", init=False)
    """``cnn`` (fixed: the kind of this config)."""
    channels: tuple[int, ...] = (32, 64, 128)
    """Conv channels, one block each."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.channels:
            raise ValueError("channels is empty; pass e.g. --channels 32,64")
        for c in self.channels:
            _validate.positive_int("channels", c)


@dataclass(frozen=True)
class AvhConfig:
    """The network of the Activation-Visualization-Histogram project (``reproduce
    activation-histograms``): three 5x5 stride-2 convolutions, each followed by dropout, then
    fully connected ``16 n -> 4 n -> n`` (n classes); :func:`selfnorm.models.build_avh`. The
    four flags are the project's choices, all on as it ran, all off corrected.

    Example:
        >>> AvhConfig().channels, AvhConfig.corrected().activated_logits
        ((32, 64, 128), False)
    """

    kind: str = field(default="avh", init=False)
    """``avh`` (fixed: the kind of this config)."""
    channels: tuple[int, ...] = (32, 64, 128)
    """Conv channels (the project: 32, 64, 128 on MNIST; 64, 128, 256 on SVHN and CIFAR-10)."""
    project_init: bool = True
    """Truncated-normal std 0.02 conv and Glorot uniform fc weights for every activation
    (else each activation's own init)."""
    bn_after_relus: bool = True
    """A BatchNorm after the activation for every activation but SELU."""
    plain_dropout: bool = True
    """Plain dropout for every activation (else the activation's kind: alpha for SELU)."""
    activated_logits: bool = True
    """The activation applied to the logits too."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if len(self.channels) != 3:
            raise ValueError(f"channels={list(self.channels)}: the network has 3 conv layers")
        for c in self.channels:
            _validate.positive_int("channels", c)
        for name in AVH_FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}; pass true or false")

    @classmethod
    def corrected(cls, **over: Any) -> AvhConfig:
        """Every flag off: each activation's own init and dropout, no BatchNorm, linear logits."""
        return cls(**{**{name: False for name in AVH_FLAGS}, **over})

    @property
    def as_written(self) -> bool:
        """Every flag on: the network as the project ran it."""
        return all(getattr(self, name) for name in AVH_FLAGS)


AVH_FLAGS = ("project_init", "bn_after_relus", "plain_dropout", "activated_logits")
"""The project's choices that :class:`AvhConfig` can switch off one by one."""


@dataclass(frozen=True)
class FactoryConfig:
    """Your own network (``--model FILE:FACTORY``), built for each variant by the factory and
    initialized by the variant's spec (:func:`selfnorm.models.build_factory`). A file's path is
    stored absolute, so ``--resume`` from another working directory builds the same model; a
    module name must be importable where the run resumes.

    Example:
        >>> cfg = FactoryConfig("nets/resmlp.py:make")
        >>> cfg.kind, cfg.factory.endswith("/nets/resmlp.py:make"), cfg.factory[0] == "/"
        ('factory', True, True)
        >>> FactoryConfig("mypkg.models:make").factory
        'mypkg.models:make'
    """

    kind: str = field(default="factory", init=False)
    """``factory`` (fixed: the kind of this config)."""
    factory: str = ""
    """``FILE.py:NAME`` or ``MODULE:NAME``: the callable that returns the model."""

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory:
            raise ValueError(
                f"[model] factory = {self.factory!r}; kind = 'factory' needs the callable that "
                "builds the model, e.g. factory = 'models.py:make' (or --model models.py:make)"
            )
        object.__setattr__(self, "factory", absolute_target(self.factory))


ModelConfig = MlpConfig | CnnConfig | AvhConfig | FactoryConfig
"""The architecture shared by every variant: one config per model kind."""

MODEL_KINDS: dict[str, type] = {
    "mlp": MlpConfig, "cnn": CnnConfig, "avh": AvhConfig, "factory": FactoryConfig,
}  # fmt: skip


def model_keys(kind: str) -> tuple[str, ...]:
    """The settings of a model kind (``kind`` itself excluded).

    Example:
        >>> model_keys("mlp"), model_keys("cnn")
        (('depth', 'width', 'shape'), ('channels',))
    """
    return tuple(f.name for f in dataclasses.fields(_model_class(kind)) if f.init)


def _model_class(kind: Any) -> type:
    cls = MODEL_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"model kind={kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return cls


def model_from_dict(section: Mapping[str, Any]) -> ModelConfig:
    """The model config of a ``[model]`` table: its ``kind`` (default ``mlp``) picks the class;
    a key of another kind is an error naming the key and the kind.

    Example:
        >>> model_from_dict({"kind": "cnn", "channels": [8]})
        CnnConfig(kind='cnn', channels=(8,))
        >>> model_from_dict({"kind": "cnn", "depth": 3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: [model] depth does not apply to model kind 'cnn' (its settings: channels); ...
    """
    section = dict(section)
    kind = section.pop("kind", "mlp")
    cls = _model_class(kind)
    keys = model_keys(kind)
    for key in section:
        if key in keys:
            continue
        owner = next((k for k in MODEL_KINDS if key in model_keys(k)), None)
        if owner is None:
            raise ValueError(f"unknown key {key!r} in [model]; valid keys: kind, {', '.join(keys)}")
        raise ValueError(
            f"[model] {key} does not apply to model kind {kind!r} (its settings: "
            f'{", ".join(keys)}); drop it or use kind = "{owner}"'
        )
    if "channels" in section:
        section["channels"] = tuple(section["channels"])
    return cls(**section)


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, identical for every variant."""

    optimizer: str = "adam"
    """``adam``, ``sgd`` or ``rmsprop``."""
    lr: float = 1e-3
    """Learning rate, > 0."""
    momentum: float = 0.0
    """Momentum for sgd/rmsprop, in [0, 1)."""
    weight_decay: float = 0.0
    """L2 weight decay, >= 0."""
    rmsprop_alpha: float = 0.99
    """RMSprop's smoothing constant in [0, 1): PyTorch's default 0.99; Keras' ``rho`` is 0.9."""
    batch_size: int = 128
    """Mini-batch size, >= 1."""
    epochs: int = 30
    """Passes over the training split, >= 1."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    clip_grad_norm: float = 0.0
    """Rescale the gradient to this global L2 norm where it is larger (0: off), as
    TensorFlow's ``clip_gradients``."""
    stack: str | int = "auto"
    """Train a variant's seeds as one stacked model (:mod:`selfnorm.stacked`): ``auto``
    (where measured faster: a GPU, or 8+ runs on a CPU, and the model can be stacked), ``off``
    (one run after another), or the most runs per stack, >= 2."""
    test_every_epoch: bool = False
    """Also score the test split after every epoch (``test_loss``, ``test_accuracy`` in each
    metrics row), to show what picking an epoch on the test set would report; the reported test
    score stays the last epoch's."""

    def __post_init__(self) -> None:
        if _validate.finite("clip_grad_norm", self.clip_grad_norm) < 0:
            raise ValueError(f"clip_grad_norm={self.clip_grad_norm!r} must be >= 0 (0: off)")
        if not isinstance(self.test_every_epoch, bool):
            raise ValueError(f"test_every_epoch={self.test_every_epoch!r}; pass true or false")
        stack = self.stack
        if isinstance(stack, str) and stack.strip().isdigit():
            stack = int(stack)
        if isinstance(stack, str):
            stack = stack.strip().lower()
        ok = stack in ("auto", "off") or (
            isinstance(stack, int) and not isinstance(stack, bool) and stack >= 2
        )
        if not ok:
            raise ValueError(
                f"stack={self.stack!r}; choose auto, off, or the most runs per stack (>= 2)"
            )
        object.__setattr__(self, "stack", stack)
        if self.optimizer not in ("adam", "sgd", "rmsprop"):
            raise ValueError(f"optimizer={self.optimizer!r}; choose one of adam, sgd, rmsprop")
        lr = _validate.finite("lr", self.lr)
        if lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0, e.g. 1e-3 for adam, 0.01 for sgd")
        m = _validate.finite("momentum", self.momentum)
        if not 0 <= m < 1:
            raise ValueError(f"momentum={self.momentum!r} must be in [0, 1), e.g. 0.9")
        a = _validate.finite("rmsprop_alpha", self.rmsprop_alpha)
        if not 0 <= a < 1:
            raise ValueError(f"rmsprop_alpha={self.rmsprop_alpha!r} must be in [0, 1), e.g. 0.9")
        if self.optimizer == "adam" and m != 0:
            raise ValueError(
                f"momentum={self.momentum!r} does nothing with adam (it has its own betas); "
                "use --optimizer sgd or rmsprop, or drop --momentum"
            )
        if self.optimizer != "rmsprop" and a != 0.99:
            raise ValueError(
                f"rmsprop_alpha={self.rmsprop_alpha!r} only applies to --optimizer rmsprop, "
                f"not {self.optimizer}; drop --rmsprop-alpha"
            )
        if _validate.finite("weight_decay", self.weight_decay) < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        _validate.positive_int("batch_size", self.batch_size)
        _validate.positive_int("epochs", self.epochs)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose auto, cpu or cuda")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole comparison: data, model, training, the variants and the seeds."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=MlpConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    activations: tuple[str, ...] = ("selu", "relu", "lrelu")
    """Variants to compare: names from the activation registry (``selu``, ``relu+bn``, ...)."""
    dropout: float = 0.0
    """Drop rate of every variant, each with its proper kind (alpha dropout for SELU)."""
    dropout_by_activation: Mapping[str, float] = field(default_factory=dict)
    """Per-variant drop rates that override ``dropout`` (e.g. selu 0.1, relu 0.2)."""
    standardize_by_activation: Mapping[str, str] = field(default_factory=dict)
    """Per-variant input scaling that overrides ``data.standardize`` (e.g. ``none`` for a
    variant that sees pixels in [0, 1] as an example as written did); the statistics are fitted
    on the same training split."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One run per seed and variant; a seed fixes init, data order and dropout masks."""
    record: RecordConfig = field(default_factory=RecordConfig)
    """Activation recording during training (statistics and histograms per layer)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, (MlpConfig, CnnConfig, AvhConfig, FactoryConfig)):
            raise TypeError(
                "model must be an MlpConfig, CnnConfig, AvhConfig or FactoryConfig, got "
                f"{self.model!r}"
            )
        acts = tuple(a.strip().lower() for a in self.activations)
        if not acts:
            raise ValueError("activations is empty; name at least one, e.g. selu,relu")
        if len(set(acts)) != len(acts):
            raise ValueError(f"activations {list(acts)} name a variant twice")
        for a in acts:
            get_spec(a)  # raises with the list of valid names
        object.__setattr__(self, "activations", acts)
        _validate.drop_rate("dropout", self.dropout)
        by_act = {k.strip().lower(): float(v) for k, v in dict(self.dropout_by_activation).items()}
        for k, v in by_act.items():
            if k not in acts:
                raise ValueError(
                    f"dropout is set for {k!r}, which is not among the activations {list(acts)}"
                )
            _validate.drop_rate(f"dropout[{k}]", v)
        object.__setattr__(self, "dropout_by_activation", by_act)
        scaling = {k.strip().lower(): v for k, v in dict(self.standardize_by_activation).items()}
        for k, v in scaling.items():
            if k not in acts:
                raise ValueError(
                    f"standardize is set for {k!r}, which is not among the activations {list(acts)}"
                )
            if v not in STANDARDIZE_MODES:
                raise ValueError(
                    f"standardize[{k}]={v!r} is not one of {', '.join(STANDARDIZE_MODES)}; "
                    "e.g. none for pixels in [0, 1]"
                )
        object.__setattr__(self, "standardize_by_activation", scaling)
        seeds = tuple(self.seeds)
        if not seeds:
            raise ValueError("seeds is empty; pass e.g. --seeds 0,1,2")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seed {s!r} must be an integer >= 0")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {list(seeds)} repeat a seed")
        object.__setattr__(self, "seeds", seeds)

    def dropout_for(self, activation: str) -> float:
        """The drop rate of one variant."""
        return self.dropout_by_activation.get(activation, self.dropout)

    def standardize_for(self, activation: str) -> str:
        """The input scaling of one variant (``feature``, ``global`` or ``none``).

        Example:
            >>> cfg = ExperimentConfig(activations=("a=selu", "b=selu"),
            ...                        standardize_by_activation={"a=selu": "none"})
            >>> cfg.standardize_for("a=selu"), cfg.standardize_for("b=selu")
            ('none', 'feature')
        """
        return self.standardize_by_activation.get(activation, self.data.standardize)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "record": RecordConfig,
}


def _check_keys(where: str, given: Mapping[str, Any], cls: type) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(names))}"
        )


def experiment_from_dict(d: Mapping[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a nested dict (TOML file, config.json, preset).

    Example:
        >>> cfg = experiment_from_dict({"activations": ["selu"], "train": {"epochs": 2}})
        >>> cfg.train.epochs, cfg.activations
        (2, ('selu',))
    """
    _check_keys("the experiment config", d, ExperimentConfig)
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key == "model":
            if not isinstance(value, Mapping):
                raise ValueError(f"[model] must be a table of settings, got {value!r}")
            kwargs[key] = model_from_dict(value)
        elif key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ValueError(f"[{key}] must be a table of settings, got {value!r}")
            _check_keys(f"[{key}]", value, _SECTIONS[key])
            section = dict(value)
            if key == "record" and "range" in section:
                section["range"] = tuple(section["range"])
            kwargs[key] = _SECTIONS[key](**section)
        elif key in ("activations", "seeds"):
            if isinstance(value, (str, bytes, int, float)) or not isinstance(value, Sequence):
                example = '["selu", "relu"]' if key == "activations" else "[0, 1, 2]"
                raise ValueError(f"{key} = {value!r} must be a list, e.g. {key} = {example}")
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return ExperimentConfig(**kwargs)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested config dicts; ``override`` wins. A ``model`` table that names
    another kind than the one below it replaces that table (the settings of one kind do not
    apply to another).

    Example:
        >>> merge({"train": {"lr": 1, "epochs": 2}}, {"train": {"lr": 3}})
        {'train': {'lr': 3, 'epochs': 2}}
        >>> merge({"model": {"kind": "mlp", "depth": 2}}, {"model": {"kind": "cnn"}})
        {'model': {'kind': 'cnn'}}
    """
    out = dict(base)
    for k, v in override.items():
        if k == "model" and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            if v.get("kind", out[k].get("kind", "mlp")) != out[k].get("kind", "mlp"):
                out[k] = dict(v)
                continue
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment TOML file (same structure as :func:`experiment_from_dict`)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {str(path)!r} is a folder; pass the TOML file in it")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The Keras seed example: 784-512-512-10, SELU + alpha dropout 0.1 vs ReLU + dropout 0.2.
    "seed-keras": {
        "data": {"dataset": "mnist", "standardize": "global", "val_fraction": 1 / 12},
        "model": {"kind": "mlp", "depth": 2, "width": 512},
        "train": {
            "optimizer": "rmsprop",
            "lr": 1e-3,
            "rmsprop_alpha": 0.9,
            "batch_size": 128,
            "epochs": 20,
        },
        "activations": ["selu", "relu"],
        "dropout_by_activation": {"selu": 0.1, "relu": 0.2},
    },
    # The TensorFlow seed example, with its bug fixed: keep probability 0.7 -> drop rate 0.3.
    "seed-tf": {
        "data": {"dataset": "mnist", "standardize": "global", "val_fraction": 1 / 12},
        "model": {"kind": "mlp", "depth": 4, "width": 512},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "epochs": 50},
        "activations": ["selu", "relu", "lrelu"],
        "dropout": 0.3,
    },
}
"""Named experiments; ``--preset NAME``."""

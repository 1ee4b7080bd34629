r"""A Keras 3 callback that records a ``fit`` into a selfnorm run directory (torch backend).

:class:`SelfnormCallback` records, during ``model.fit``, the post-activations (and the
pre-activations) of the model's activation layers with the one recorder
(:class:`~selfnorm.recording.ActivationRecorder`) into the run directory of
:class:`~selfnorm.integrations.run.TrainingRun`, which ``selfnorm report OUT`` turns into the
usual report. It walks ``model.layers`` (and the layers of nested models) and records:

* ``Dense(activation=f)``: ``f``'s output, as ``<dense>.activation`` (its input, the layer's
  pre-activation, as the record's pre);
* ``Activation(f)`` and the activation layers ``ReLU``, ``LeakyReLU``, ``ELU``, ``PReLU``;
* ``AlphaDropout``: what it outputs (its input as the pre).

Activations across units (``softmax``, ``log_softmax``, ``glu``, ``sparsemax``) and ``linear``
are not recorded; an element-wise activation selfnorm has no family for (a custom function,
``exponential``, ...) is recorded as family ``other``. Only the training passes are recorded:
validation, ``evaluate`` and ``predict`` run with ``training=False``.

How: on the torch backend a Keras layer is a ``torch.nn.Module``, but what a Keras activation
applies is a plain function, which a torch hook cannot see. While ``fit`` runs, the callback
replaces each recorded function by a wrapper that calls a small torch module, a *probe*, which
applies the same function (``Dense.activation``, ``Activation.activation``; ``call`` of the
dropout and activation layers); the recorder hooks the probes. A probe's class derives from
the torch module of the same family (the probe of a SELU derives from ``nn.SELU``), so
:func:`selfnorm.taxonomy.activation_kind` gives records the right family (``selu``: the fixed
point view, the saturation statistic). Keras' ``AlphaDropout`` is SELU's (its dropped value
is SELU's saturation value :math:`-\lambda\alpha`, fixed), so its probe counts as ``selu``
too: the report's fixed-point views then show the dropout's output beside the SELU layers'
(its ``saturation_frac`` counts values near :math:`-\lambda\alpha`, which the dropout's affine
correction moves away from). The probes hang, named after the Keras layers, under one root
module, and the model's ``call`` runs inside the root's, so each Keras forward pass is one
recorder pass, in training mode where Keras passes ``training=True``. Each Dense layer also
gets a torch ``Linear`` view of its kernel (the kernel tensor itself), so the records hold the
weight sums :math:`\omega, \tau`, the weights' and their gradients' histograms per Dense layer
(other Keras weight layers get none). Recording changes nothing in the training: the same seed
gives the same losses to the bit with and without the callback. At the end of ``fit`` every
replaced attribute is put back as it was; a ``fit`` that raises leaves the probes in place
(they compute what the layers computed) until :meth:`SelfnormCallback.close`, or the end of a
``with`` block.

Needs ``pip install 'selfnorm[keras]'`` (after torch) and the torch backend: set
``KERAS_BACKEND=torch`` before anything imports keras.

Example (the seed's MLP on ``x``, ``(N, 784)`` float32, and one-hot ``y``, ``(N, 10)``; not
run as a doctest, it needs the torch backend chosen first)::

    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from selfnorm.integrations.keras import SelfnormCallback
    from selfnorm.recording.config import RecordConfig

    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(512), keras.layers.Activation("selu"), keras.layers.AlphaDropout(0.1),
        keras.layers.Dense(512), keras.layers.Activation("selu"), keras.layers.AlphaDropout(0.1),
        keras.layers.Dense(10), keras.layers.Activation("softmax"),
    ])
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    with SelfnormCallback("runs/keras-mlp", record=RecordConfig(every=10)) as rec:
        model.fit(x, y, batch_size=128, epochs=2, validation_split=0.1, callbacks=[rec])
    print(rec.report_path)  # runs/keras-mlp/report.html (`selfnorm report` rebuilds it)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from selfnorm import taxonomy
from selfnorm.integrations.run import TrainingRun
from selfnorm.recording.config import RecordConfig

_FIX = (
    "pip install 'selfnorm[keras]' (after torch) and set KERAS_BACKEND=torch before keras is "
    "imported"
)
# the one backend this module works on; a keras imported earlier keeps its own (checked at use)
os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
except ImportError as exc:  # keras missing, or its backend (tensorflow by default) missing
    raise ImportError(
        f"selfnorm.integrations.keras needs Keras 3 on the torch backend ({exc}): {_FIX}"
    ) from exc
if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(
        f"selfnorm.integrations.keras needs Keras 3, found keras {keras.__version__}: {_FIX}"
    )

__all__ = ["SelfnormCallback", "require_torch_backend"]

_NOT_RECORDED = ("linear", "softmax", "log_softmax", "glu", "sparsemax")
"""Keras activations that are no activation (``linear``) or act across units."""

_ACTIVATION_LAYERS = {
    keras.layers.ReLU: nn.ReLU, keras.layers.LeakyReLU: nn.LeakyReLU,
    keras.layers.ELU: nn.ELU, keras.layers.PReLU: nn.PReLU,
}  # fmt: skip
"""Keras activation layers (their ``call`` is the activation) and their torch families."""

_ACCURACY_KEYS = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy")
"""Names Keras gives an accuracy metric in ``logs`` (the first one present is stored)."""


def require_torch_backend(backend: str | None = None) -> None:
    """Refuse a Keras backend other than torch (default: the one Keras runs on).

    Raises:
        RuntimeError: one line naming the backend and the fix.
    """
    name = keras.config.backend() if backend is None else backend
    if name != "torch":
        raise RuntimeError(
            f"SelfnormCallback needs Keras' torch backend (its layers are torch modules only "
            f"there), but Keras runs on {name!r}: set KERAS_BACKEND=torch before keras is "
            "imported"
        )


class _Probe(nn.Module):
    """A torch module that applies ``fn``, standing in for what a Keras layer applies, so the
    recorder can hook it: its input is the record's pre-activation, its output the post."""

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        super().__init__()
        self.fn = fn
        self.label = label

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self.fn(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return self.label


@functools.cache
def _probe_type(family: type[nn.Module]) -> type[_Probe]:
    """The probe class of one torch activation type: a subclass of both, so the taxonomy,
    which goes by the class's MRO, gives its records that type's family."""
    return type(f"Keras{family.__name__}", (_Probe, family), {"__module__": __name__})


class _AlphaDropoutProbe(_Probe, nn.SELU):
    """Keras' AlphaDropout, family ``selu``: it is SELU's dropout (see the module docstring)."""


class KerasProbes(nn.Module):
    """The root given to the recorder: the probes of one Keras model, named after its layers.
    Calling it runs the model's own ``call`` (one Keras forward pass = one recorder pass)."""

    def forward(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return call(*args, **kwargs)


class _DenseWeights(nn.Linear):
    """A Keras Dense layer's kernel as the weight of a torch Linear, for the recorder's weight
    statistics: the kernel tensor itself, ``(fan_in, units)``, which the taxonomy reads as a
    transposed layer's weight (:func:`selfnorm.taxonomy.is_transposed`, ConvTranspose's
    ``(in, out)`` layout), so a weight gradient reaches it. Holds nothing; not callable."""

    transposed = True

    def __init__(self, layer: keras.layers.Dense) -> None:
        nn.Module.__init__(self)  # no weight of its own: ``weight`` reads the Keras kernel
        object.__setattr__(self, "_layer", layer)  # not a submodule (Keras layers are modules)

    @property
    def weight(self):
        return keras.ops.convert_to_tensor(self._layer.kernel)

    def forward(self, *args: Any) -> Any:
        raise TypeError(f"a view of Keras layer {self._layer.name!r}: call that layer")

    def extra_repr(self) -> str:
        return f"Keras {self._layer.name}"


@functools.cache
def _activation_names() -> dict[Callable[..., Any], str]:
    """The name of each Keras activation function this module knows (``swish`` is ``silu``);
    a Keras version without one of them leaves it out."""
    names = (*taxonomy.FUNCTION_TYPES, *_NOT_RECORDED)
    return {getattr(keras.activations, n): n for n in names if hasattr(keras.activations, n)}


def _activation_probe(fn: Callable[..., Any], label: str) -> _Probe | None:
    """The probe of a Keras activation function, None for one that is not recorded."""
    name = _activation_names().get(fn)
    if name in _NOT_RECORDED:
        return None
    cls = _probe_type(taxonomy.FUNCTION_TYPES[name]) if name is not None else _Probe
    return cls(fn, f"{label}: keras.activations.{getattr(fn, '__name__', fn)}")


def _replace(obj: Any, attr: str, value: Any, undo: list[Callable[[], None]]) -> None:
    """``obj.attr = value`` past Keras' and torch's attribute tracking; ``undo`` gets the step
    that puts back exactly what was there (the instance's own value, or none)."""
    own = vars(obj)
    if attr in own:
        old = own[attr]
        undo.append(lambda: object.__setattr__(obj, attr, old))
    else:
        undo.append(lambda: object.__delattr__(obj, attr))
    object.__setattr__(obj, attr, value)


def _through(probe: nn.Module, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function that calls ``probe`` where Keras called ``fn``, and looks like ``fn`` (its
    name and module: a model saved during ``fit`` serializes the activation as before)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return probe(*args, **kwargs)

    return call


def _through_root(root: KerasProbes, model: keras.Model) -> Callable[..., Any]:
    """The model's ``call``, run inside ``root`` in the mode Keras asks for (``training``, or
    where the model's ``call`` takes none, the torch module's mode that Keras' trainer sets)."""
    call = model.call

    @functools.wraps(call)
    def forward(*args: Any, **kwargs: Any) -> Any:
        training = kwargs.get("training")
        root.training = model.training if training is None else bool(training)
        return root(call, args, kwargs)

    return forward


def _add(parent: nn.Module, name: str, module: nn.Module) -> None:
    try:
        parent.add_module(name, module)
    except KeyError as exc:  # a '.', or the name of a torch Module attribute ('forward', ...)
        raise ValueError(
            f"Keras layer name {name!r} cannot name a torch module ({exc.args[0]}); give the "
            "layer another name (name=...)"
        ) from None


def _attach(parent: nn.Module, layers: list, undo: list, seen: set[int]) -> None:
    """Put the probes of ``layers`` under ``parent`` (a nested model's under a module named
    after it) and route the layers through them; a layer shared by two models is done once."""
    for layer in layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            sub = nn.Module()
            _add(parent, layer.name, sub)
            _attach(sub, layer.layers, undo, seen)
        elif isinstance(layer, keras.layers.Dense):
            view = _DenseWeights(layer)
            _add(parent, layer.name, view)
            _route_activation(view, "activation", layer, undo)
        elif isinstance(layer, keras.layers.Activation):
            _route_activation(parent, layer.name, layer, undo)
        else:
            _route_call(parent, layer, undo)


def _route_activation(parent: nn.Module, name: str, layer: Any, undo: list) -> None:
    """Route ``layer.activation`` through a probe ``name`` under ``parent`` (where recorded)."""
    probe = _activation_probe(layer.activation, layer.name)
    if probe is not None:
        _add(parent, name, probe)
        _replace(layer, "activation", _through(probe, layer.activation), undo)


def _route_call(parent: nn.Module, layer: Any, undo: list) -> None:
    """Route the ``call`` of an AlphaDropout or a Keras activation layer through a probe named
    after the layer; any other layer is left alone."""
    if isinstance(layer, keras.layers.AlphaDropout):
        kind = _AlphaDropoutProbe
    else:
        family = next((t for k, t in _ACTIVATION_LAYERS.items() if isinstance(layer, k)), None)
        if family is None:
            return
        kind = _probe_type(family)
    probe = kind(layer.call, f"{layer.name}: keras.layers.{type(layer).__name__}")
    _add(parent, layer.name, probe)
    _replace(layer, "call", _through(probe, layer.call), undo)


def _has_probes(root: nn.Module) -> bool:
    return any(isinstance(m, _Probe) for m in root.modules())


class SelfnormCallback(keras.callbacks.Callback):
    """Record a Keras 3 ``fit`` (torch backend) into the run directory ``out``.

    On ``fit``'s start it creates a :class:`~selfnorm.integrations.run.TrainingRun` (refused
    where ``out`` holds anything but an earlier selfnorm run to ``overwrite``), records the
    training batches on the schedule of ``record``, closes an epoch with Keras' logs (loss,
    accuracy, and the validation ones where ``fit`` validates) and at the end writes the summary
    and the report (:attr:`report`). One callback records one ``fit``.

    Args:
        out: the run directory.
        name: the variant name in the report (default: the Keras model's name).
        seed: the run's seed, a label (``runs/<name>/seed<k>``); pass the one given to
            ``keras.utils.set_random_seed``.
        record: what to record and how often (:class:`~selfnorm.recording.RecordConfig`);
            ``every=None`` resolves to a quarter epoch (at most 50 steps).
        dataset: ``name`` and the sizes ``train``/``val``/``test`` for the report's header.
        settings: more to keep in ``config.json`` (JSON-serializable), besides the Keras
            version, the model's and the optimizer's class and the epochs.
        overwrite: replace an earlier selfnorm run at ``out``.
        report: write ``report.html`` at the end of ``fit`` (else only the summary; ``selfnorm
            report OUT`` builds the report later).

    Raises:
        RuntimeError: Keras runs on another backend than torch.

    Warning:
        ``jit_compile=True`` (``torch.compile``) works, but compiles through the probes and
        the recorder's hooks: a small model's first 4 steps took 88 s against 47 s without
        the callback. Record uncompiled.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        name: str | None = None,
        seed: int = 0,
        record: RecordConfig | None = None,
        dataset: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        report: bool = True,
    ) -> None:
        super().__init__()
        require_torch_backend()
        self.out = Path(out)
        self.name, self.seed, self.record = name, seed, record
        self.dataset, self.settings = dict(dataset or {}), dict(settings or {})
        self.overwrite, self.write_report = overwrite, report
        self.run: TrainingRun | None = None
        self.report_path: Path | None = None
        """Once ``fit`` has ended: ``report.html`` (``summary.json`` with ``report=False``)."""
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> SelfnormCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def on_train_begin(self, logs=None) -> None:
        if self.run is not None or self.report_path is not None:
            raise RuntimeError(
                f"this SelfnormCallback recorded a fit into {self.out} already; create a new "
                "one (with another out, or overwrite=True) for each fit"
            )
        model = self.model
        root = KerasProbes()
        try:
            _attach(root, model.layers, self._undo, set())
            if not _has_probes(root):
                raise ValueError(
                    f"{type(model).__name__} {model.name!r} has no layer to record: it needs "
                    "Dense(activation=...) with an element-wise activation, Activation, "
                    "AlphaDropout, ReLU, LeakyReLU, ELU or PReLU layers"
                )
            _replace(model, "call", _through_root(root, model), self._undo)
            self.run = TrainingRun(
                self.out,
                root,
                name=self.name or model.name,
                seed=self.seed,
                record=self.record,
                steps_per_epoch=self.params.get("steps"),
                source="keras",
                model_label=type(model).__name__,
                settings=self._settings(),
                dataset=self.dataset,
                overwrite=self.overwrite,
                activation_types=(_Probe,),
                functional=False,  # the probes are the layers; Keras ops are no torch layers
            )
        except BaseException:
            self._restore()
            raise

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self.run.step()

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        acc = next((k for k in _ACCURACY_KEYS if k in logs), None)
        self.run.end_epoch(
            train_loss=logs.get("loss"),
            train_accuracy=logs.get(acc),
            val_loss=logs.get("val_loss"),
            val_accuracy=logs.get(f"val_{acc}"),
        )

    def on_train_end(self, logs=None) -> None:
        loss = (logs or {}).get("loss")
        diverged = None if loss is None or math.isfinite(loss) else f"training loss {loss}"
        try:
            self.report_path = self.run.finish(diverged_reason=diverged, report=self.write_report)
        finally:
            self.close()

    def close(self) -> None:
        """Put every layer back as it was and release the run directory (without writing the
        summary, where ``fit`` did not end). Idempotent; the end of ``fit`` calls it."""
        try:
            self._restore()
        finally:
            if self.run is not None:
                self.run.close(flush=False)

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _settings(self) -> dict[str, Any]:
        model = self.model
        return {
            "keras": keras.__version__,
            "keras_model": type(model).__name__,
            "optimizer": type(model.optimizer).__name__,
            "epochs": self.params.get("epochs"),
        } | self.settings

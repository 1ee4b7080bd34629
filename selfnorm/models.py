r"""Model builders: an MLP, a small CNN, or your own factory's network, from one
:class:`~selfnorm.specs.ActivationSpec`.

Every layer gets its own fresh, named module (``fc1``, ``bn1``, ``act1``, ``drop1``, ..., ``out``)
so recorders and results are keyed by layer name. Weights get the spec's proper init (LeCun
normal for SELU, He normal for ReLU, ...) from an explicit ``torch.Generator``; biases start at 0.
Normalization sits between the affine layer and the activation. Linear layers are
:class:`selfnorm.linear.Linear` (an ``nn.Linear`` with a oneDNN fast path on the CPU).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from selfnorm import _validate, taxonomy
from selfnorm.factory import cause, load_factory
from selfnorm.init import glorot_uniform_, init_model_
from selfnorm.linear import Linear
from selfnorm.specs import NORMS, ActivationSpec, get_spec
from selfnorm.tracing import evaluating

if TYPE_CHECKING:
    from selfnorm.config import AvhConfig

__all__ = [
    "FACTORY_KEYWORDS",
    "build_cnn",
    "build_factory",
    "build_mlp",
    "count_parameters",
    "layer_widths",
]


def layer_widths(
    depth: int, width: int, out_features: int, shape: Literal["rect", "conic"] = "rect"
) -> list[int]:
    r"""Hidden widths. ``rect``: all ``width``. ``conic``: geometric decrease from ``width``
    towards ``out_features``, :math:`w_i = \text{width}\cdot(\text{out}/\text{width})^{i/depth}`,
    :math:`i = 0..depth-1` (the paper's "conic" layers), never below ``out_features``.

    Example:
        >>> layer_widths(4, 512, 10, "conic")
        [512, 191, 72, 27]
    """
    _validate.positive_int("depth", depth)
    _validate.positive_int("width", width)
    if shape == "rect":
        return [width] * depth
    if shape == "conic":
        ratio = min(out_features / width, 1.0)
        return [max(out_features, round(width * ratio ** (i / depth))) for i in range(depth)]
    raise ValueError(f"shape={shape!r}; choose 'rect' or 'conic'")


def _resolve(spec: ActivationSpec | str) -> ActivationSpec:
    return get_spec(spec) if isinstance(spec, str) else spec


def _init_(model: nn.Module, spec: ActivationSpec, generator: torch.Generator | None) -> None:
    init_model_(model, spec.init_weight_, generator, spec.init_bias_)


def build_mlp(
    in_features: int,
    out_features: int,
    depth: int,
    width: int,
    spec: ActivationSpec | str,
    dropout: float = 0.0,
    shape: Literal["rect", "conic"] = "rect",
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A fully connected network: flatten, ``depth`` hidden blocks, a linear output layer.

    Each hidden block ``i`` is ``fc{i}`` -> [``bn{i}`` | ``ln{i}``] -> ``act{i}`` ->
    [``drop{i}``], with the spec's dropout kind (alpha dropout for SELU) when ``dropout > 0``.

    Args:
        in_features: input size (inputs of any shape are flattened).
        out_features: number of outputs (classes).
        depth: number of hidden layers, >= 1.
        width: hidden width (the first layer's for ``conic``).
        spec: an :class:`ActivationSpec` or a name such as ``"selu"`` or ``"relu+bn"``.
        dropout: drop rate in [0, 1) for every hidden block.
        shape: ``rect`` or ``conic`` (see :func:`layer_widths`).
        generator: ``torch.Generator`` for the weights.

    Example:
        >>> net = build_mlp(64, 10, depth=2, width=32, spec="selu", dropout=0.05)
        >>> [name for name, _ in net.named_children()]
        ['flatten', 'fc1', 'act1', 'drop1', 'fc2', 'act2', 'drop2', 'out']
    """
    spec = _resolve(spec)
    _validate.positive_int("in_features", in_features)
    _validate.positive_int("out_features", out_features)
    dropout = _validate.drop_rate("dropout", dropout)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    prev = in_features
    for i, w in enumerate(layer_widths(depth, width, out_features, shape), start=1):
        layers[f"fc{i}"] = Linear(prev, w)
        if spec.norm == "bn":
            layers[f"bn{i}"] = nn.BatchNorm1d(w)
        elif spec.norm == "ln":
            layers[f"ln{i}"] = nn.LayerNorm(w)
        layers[f"act{i}"] = spec.activation()
        if dropout > 0:
            layers[f"drop{i}"] = spec.dropout(dropout)
        prev = w
    layers["out"] = Linear(prev, out_features)
    model = nn.Sequential(layers)
    _init_(model, spec, generator)
    return model


def build_cnn(
    input_shape: Sequence[int],
    out_features: int,
    spec: ActivationSpec | str,
    channels: Sequence[int] = (32, 64, 128),
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A small CNN: 3x3 convolutions (stride 2 after the first), flatten, linear.

    Block ``i``: ``conv{i}`` -> [``bn{i}`` | ``ln{i}``] -> ``act{i}`` -> [``drop{i}``] with
    channel-wise dropout of the spec's kind (:class:`~selfnorm.FeatureAlphaDropout` for SELU).
    ``ln`` is a per-sample LayerNorm over (C, H, W) (``GroupNorm`` with one group).

    Example:
        >>> net = build_cnn((1, 28, 28), 10, "selu", channels=(8, 16))
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    spec = _resolve(spec)
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(
            f"build_cnn needs input_shape (C, H, W), got {tuple(input_shape)}; tabular data "
            "needs --model mlp"
        )
    if not channels:
        raise ValueError("channels must name at least one conv layer, e.g. (32, 64)")
    dropout = _validate.drop_rate("dropout", dropout)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    prev = int(input_shape[0])
    for i, c in enumerate(channels, start=1):
        _validate.positive_int(f"channels[{i - 1}]", c)
        layers[f"conv{i}"] = nn.Conv2d(prev, c, 3, stride=1 if i == 1 else 2, padding=1)
        if spec.norm == "bn":
            layers[f"bn{i}"] = nn.BatchNorm2d(c)
        elif spec.norm == "ln":
            layers[f"ln{i}"] = nn.GroupNorm(1, c)
        layers[f"act{i}"] = spec.activation()
        if dropout > 0:
            layers[f"drop{i}"] = spec.feature_dropout(dropout)
        prev = c
    height, width = int(input_shape[1]), int(input_shape[2])
    for _ in channels[1:]:  # each stride-2 conv (3x3, padding 1) maps n -> ceil(n / 2)
        height, width = -(-height // 2), -(-width // 2)
    layers["flatten"] = nn.Flatten()
    layers["out"] = Linear(prev * height * width, out_features)
    model = nn.Sequential(layers)
    _init_(model, spec, generator)
    return model


def build_avh(
    input_shape: Sequence[int],
    out_features: int,
    spec: ActivationSpec | str,
    cfg: AvhConfig | None = None,
    dropout: float = 0.5,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    r"""The Activation-Visualization-Histogram project's classifier (``cfg``: its choices; the
    default all of them, as it ran).

    ``conv{i}`` (5x5, stride 2, padding 2: 28 -> 14 -> 7 -> 4) -> ``act{i}`` -> [``bn{i}``] ->
    ``drop{i}`` for i = 1..3, then ``fc4`` (16 n) -> ``act4`` -> ``fc5`` (4 n) -> ``act5`` ->
    ``out`` (n) [-> ``act_out``], n = ``out_features``.

    - ``project_init``: conv weights :math:`\mathcal N(0, 0.02^2)` truncated at 2 std, fully
      connected weights Glorot uniform, zero biases (else the spec's own init);
    - ``bn_after_relus``: a BatchNorm after the activation (eps 1e-3, as TensorFlow's) for
      everything but SELU (else only a spec's ``+bn``, before the activation);
    - ``plain_dropout``: plain elementwise dropout (else the spec's kind, alpha for SELU);
    - ``activated_logits``: the activation on the logits too.

    Example:
        >>> net = build_avh((1, 28, 28), 10, "relu")
        >>> net(torch.zeros(2, 1, 28, 28)).shape, "bn1" in dict(net.named_children())
        (torch.Size([2, 10]), True)
    """
    from selfnorm.config import AvhConfig

    cfg = AvhConfig() if cfg is None else cfg
    spec = _resolve(spec)
    if spec.norm == "ln" or (spec.norm == "bn" and cfg.bn_after_relus):
        raise ValueError(
            f"{spec.name}: the activation-histograms network takes no +{spec.norm} (it places "
            "its own BatchNorm after the ReLUs); drop +" + spec.norm
            + (" or set bn_after_relus = false for a BatchNorm before it" if spec.norm == "bn"
               else "")
        )  # fmt: skip
    if len(input_shape) != 3:
        raise ValueError(f"build_avh needs input_shape (C, H, W), got {tuple(input_shape)}")
    dropout = _validate.drop_rate("dropout", dropout)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    prev, (height, width) = int(input_shape[0]), (int(input_shape[1]), int(input_shape[2]))
    for i, c in enumerate(cfg.channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(prev, c, 5, stride=2, padding=2)
        if not cfg.bn_after_relus and spec.norm == "bn":
            layers[f"bn{i}"] = nn.BatchNorm2d(c)
        layers[f"act{i}"] = spec.activation()
        if cfg.bn_after_relus and spec.family.selu is None:
            layers[f"bn{i}"] = nn.BatchNorm2d(c, eps=1e-3)
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout) if cfg.plain_dropout else spec.dropout(dropout)
        prev, height, width = c, (height + 1) // 2, (width + 1) // 2
    n = out_features
    layers["flatten"] = nn.Flatten()
    layers["fc4"] = Linear(prev * height * width, 16 * n)
    layers["act4"] = spec.activation()
    layers["fc5"] = Linear(16 * n, 4 * n)
    layers["act5"] = spec.activation()
    layers["out"] = Linear(4 * n, n)
    if cfg.activated_logits:
        layers["act_out"] = spec.activation()
    model = nn.Sequential(layers)
    if not cfg.project_init:
        _init_(model, spec, generator)
        return model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, 0.0, 0.02, -0.04, 0.04, generator=generator)
            elif isinstance(m, nn.Linear):
                glorot_uniform_(m.weight, generator)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    return model


FACTORY_KEYWORDS = ("activation", "dropout", "in_features", "input_shape", "num_classes")
"""The keywords :func:`build_factory` calls a factory with (``--model FILE:FACTORY``)."""


def build_factory(
    target: str,
    input_shape: Sequence[int],
    out_features: int,
    spec: ActivationSpec | str,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Your own network: the factory ``target`` (``FILE.py:NAME`` or ``MODULE:NAME``, see
    :mod:`selfnorm.factory`) called with the keywords

    - ``activation``: a callable without arguments that returns a fresh activation module of
      the spec (``selfnorm.SELU()`` for ``selu``, ``nn.LeakyReLU(0.2)`` for ``lrelu:0.2``);
    - ``dropout``: the same for the spec's dropout kind at rate ``dropout`` (alpha dropout for
      SELU, plain for the others; elementwise), an ``nn.Identity()`` at rate 0;
    - ``in_features``: ``prod(input_shape)``; ``input_shape``: one sample's shape, e.g.
      ``(1, 28, 28)``; ``num_classes``: ``out_features``.

    It should take ``**kwargs`` as well, so that keywords added later do not break it. It runs
    with torch's global RNG seeded from ``generator`` (restored afterwards), so what it draws
    there is the same for the same seed. Its model must hold a module like ``activation()``
    returns (one that ignores the spec is refused) and take a batch of shape
    ``(N, *input_shape)`` (tried on 2 rows of zeros, in eval mode: lazy modules get their
    sizes); then every Linear/Conv gets the spec's init from ``generator``, as in
    :func:`build_mlp`.

    Raises:
        ValueError: the target cannot be loaded or called with :data:`FACTORY_KEYWORDS`, the
            factory raised, returned no ``nn.Module`` or ignored ``activation``, its model
            rejects the input shape; or the spec has ``+bn``/``+ln`` (the factory places every
            layer: put the norm there).

    Example:
        >>> import pathlib, shutil, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.py"
        >>> _ = path.write_text(
        ...     "from torch import nn\\n"
        ...     "def make(*, activation, dropout, in_features, num_classes, **kwargs):\\n"
        ...     "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16),\\n"
        ...     "                         activation(), dropout(), nn.Linear(16, num_classes))\\n"
        ... )
        >>> net = build_factory(f"{path}:make", (1, 8, 8), 10, "selu", dropout=0.05)
        >>> [type(m).__name__ for m in net]
        ['Flatten', 'Linear', 'SELU', 'AlphaDropout', 'Linear']
        >>> shutil.rmtree(path.parent)
    """
    spec = _resolve(spec)
    if spec.norm is not None:
        raise ValueError(
            f"variant {spec.name}: the factory {target} places every layer, so selfnorm cannot "
            f"add the +{spec.norm} ({NORMS[spec.norm]}); drop +{spec.norm}, or put the norm in "
            "the factory"
        )
    input_shape = tuple(int(d) for d in input_shape)
    _validate.positive_int("out_features", out_features)
    dropout = _validate.drop_rate("dropout", dropout)
    make = load_factory(target, FACTORY_KEYWORDS)

    def drop() -> nn.Module:
        return spec.dropout(dropout) if dropout > 0 else nn.Identity()

    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(generator.initial_seed())
        model = make(
            activation=spec.activation, dropout=drop, in_features=math.prod(input_shape),
            input_shape=input_shape, num_classes=out_features,
        )  # fmt: skip
        _check_factory_model(model, target, spec, input_shape)
    _init_(model, spec, generator)
    return model


def _same_activation(m: nn.Module, made: nn.Module) -> bool:
    """``m`` computes what ``made`` does: same family, and the same SELU (α, λ) (``nn.SELU``
    and ``selfnorm.SELU`` alike) or else the same settings (a Leaky ReLU's slope)."""
    family = taxonomy.activation_family(made)
    if taxonomy.activation_family(m) != family:
        return False
    p, q = taxonomy.selu_parameters(m), taxonomy.selu_parameters(made)
    if p is not None and q is not None:
        return all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(p, q, strict=True))
    return type(m) is type(made) and m.extra_repr() == made.extra_repr()


def _check_factory_model(
    model: object, target: str, spec: ActivationSpec, input_shape: tuple[int, ...]
) -> None:
    """Refuse what a factory returned unless it is a module that holds the spec's activation
    (same type, same settings) and takes a batch of ``input_shape``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{target} returned a {type(model).__name__}, not a torch.nn.Module")
    made = spec.activation()
    if not any(_same_activation(m, made) for m in model.modules()):
        held = [repr(m) for m in model.modules() if taxonomy.activation_kind(m) is not None]
        raise ValueError(
            f"{target} ignores the variant {spec.name}: its model holds no {made!r}, what "
            f"activation() returns (its activations: {', '.join(dict.fromkeys(held)) or 'none'}); "
            "call activation() for each activation instead of building one"
        )
    x = torch.zeros(2, *input_shape)
    try:
        with evaluating(model):
            model(x)
    except Exception as exc:  # the user's code
        raise ValueError(
            f"the model of {target} for {spec.name} rejects a batch of shape {tuple(x.shape)}: "
            f"{cause(exc)}; build it for the in_features={math.prod(input_shape)} or "
            f"input_shape={input_shape} it is given"
        ) from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

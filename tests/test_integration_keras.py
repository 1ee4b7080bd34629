"""The Keras 3 callback (torch backend): the seed's MLP trained a few steps on MNIST-shaped data
records its SELU and alpha dropout layers (checked against values recomputed here from the
initial weights, and against what Keras' own layers output), the run directory makes the usual
report, and every layer comes back as it was."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras picks its backend on its first import

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from conftest import hand_hist, hand_stats

from selfnorm import cli
from selfnorm.recording.config import RecordConfig
from selfnorm.storage import read_jsonl

keras = pytest.importorskip("keras")
if keras.config.backend() != "torch":
    pytest.skip(
        f"the Keras callback needs the torch backend; keras was imported with the "
        f"{keras.config.backend()!r} one (set KERAS_BACKEND=torch)",
        allow_module_level=True,
    )
from selfnorm.integrations import keras as snk  # noqa: E402

layers = keras.layers
ROWS, BATCH, EPOCHS, UNITS = 320, 128, 2, 512
BATCHES = [128, 128, 64]  # 320 rows in batches of 128, the last one short


def seed_mlp():
    """The seed's Keras MLP 784-512-512-10 (SELU + AlphaDropout 0.1), LeCun normal init."""
    init = "lecun_normal"
    return keras.Sequential(
        [
            keras.Input((784,)),
            layers.Dense(UNITS, kernel_initializer=init),
            layers.Activation("selu"),
            layers.AlphaDropout(0.1),
            layers.Dense(UNITS, kernel_initializer=init),
            layers.Activation("selu"),
            layers.AlphaDropout(0.1),
            layers.Dense(10, kernel_initializer=init),
            layers.Activation("softmax"),
        ],
        name="seed_mlp",
    )


def mnist_shaped(rows, seed):
    """Standardized random 784-feature inputs and one-hot labels of 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 784)).astype("float32")
    return x, keras.utils.to_categorical(rng.integers(0, 10, rows), 10)


def compiled(model):
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def numpy_selu(h):
    """SELU from its definition, in float64: lambda * (h if h > 0 else alpha * (e^h - 1))."""
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(h > 0, h, alpha * np.expm1(np.minimum(h, 0)))


class Watch(keras.callbacks.Callback):
    """Sees the model while the recording callback holds it: whether ``layer`` is routed
    through a probe and the model's config at the start, and the output of Keras' own
    ``AlphaDropout`` in the first training pass (its torch forward hook)."""

    def __init__(self, layer, dropout):
        super().__init__()
        self.layer, self.dropout, self.output = layer, dropout, None
        self.handle = dropout.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, out):
        if self.output is None and kwargs.get("training"):
            self.output = out.detach().clone()

    def on_train_begin(self, logs=None):
        routed = self.layer.activation is not keras.activations.selu
        self.routed = "activation" in vars(self.layer) and routed
        self.config = self.model.get_config()

    def on_train_end(self, logs=None):
        self.handle.remove()


def seeded_seed_mlp():
    """The seed MLP built from seed 0, its training rows and its validation rows."""
    keras.utils.set_random_seed(0)
    return compiled(seed_mlp()), mnist_shaped(ROWS, 0), mnist_shaped(64, 1)


def fit(model, train, val, callbacks):
    """2 epochs of 3 batches, in order, with validation; Keras' history."""
    return model.fit(
        *train, batch_size=BATCH, epochs=EPOCHS, shuffle=False, validation_data=val,
        callbacks=callbacks, verbose=0,
    ).history  # fmt: skip


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """The seed MLP after 2 epochs of 3 batches, recorded at every step, with what it was."""
    model, (x, y), val = seeded_seed_mlp()
    dense = [lay for lay in model.layers if isinstance(lay, layers.Dense)]
    kernels = [d.kernel.value.detach().numpy().astype(np.float64) for d in dense]
    bias0 = dense[0].bias.value.detach().numpy().astype(np.float64)
    before = {
        "config": model.get_config(),
        "activation": {id(lay): vars(lay).get("activation") for lay in model.layers},
        "call": {id(lay): "call" in vars(lay) for lay in [*model.layers, model]},
    }
    out = tmp_path_factory.mktemp("keras") / "run"
    cb = snk.SelfnormCallback(
        out,
        seed=0,
        record=RecordConfig(every=1),
        dataset={"name": "mnist-shaped", "train": ROWS, "val": 64},
        report=False,
    )
    watch = Watch(model.layers[1], model.layers[2])
    history = fit(model, (x, y), val, [cb, watch])
    return {
        "model": model, "cb": cb, "watch": watch, "out": out, "x": x, "kernels": kernels,
        "bias0": bias0, "before": before, "history": history, "records": cb.run.records(),
    }  # fmt: skip


def test_seed_mlp_records_every_selu_and_alpha_dropout_layer(seed_run):
    r, model = seed_run["records"], seed_run["model"]
    # every layer between the Dense ones but the last (the softmax), in call order
    expected = [lay.name for lay in model.layers[:-1] if not isinstance(lay, layers.Dense)]
    assert r.layers == tuple(expected) and len(expected) == 4
    assert r.family == ("selu",) * 4
    assert r.steps.tolist() == list(range(EPOCHS * len(BATCHES)))
    np.testing.assert_allclose(r.epochs, r.steps / len(BATCHES))
    values = np.array(BATCHES * EPOCHS)[:, None] * UNITS
    for hist in (r.hist_post, r.hist_pre):
        np.testing.assert_array_equal(hist.sum(-1), np.broadcast_to(values, hist.shape[:2]))
    assert np.isfinite(r.grad_std).all() and (r.grad_std > 0).all()
    # the dropout's input is the SELU's output: the same tensor, the same numbers
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_array_equal(r.pre[key][:, 1], r.post[key][:, 0])
        np.testing.assert_array_equal(r.pre[key][:, 3], r.post[key][:, 2])


def test_first_record_equals_a_recomputation_from_the_initial_weights(seed_run):
    """Step 0 ran the first batch through the initial weights: the first SELU's input is
    x @ W + b and its output SELU of that, computed here in float64 NumPy."""
    r = seed_run["records"]
    h = seed_run["x"][:BATCH].astype(np.float64) @ seed_run["kernels"][0] + seed_run["bias0"]
    for stats, want in ((r.pre, h), (r.post, numpy_selu(h))):
        got = [stats[k][0, 0] for k in ("mean", "std", "min", "max")]
        np.testing.assert_allclose(got, [want.mean(), want.std(), want.min(), want.max()],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    assert abs(r.post["mean"][0, 0]) < 0.1 and abs(r.post["std"][0, 0] - 1) < 0.1  # near (0, 1)
    # the weight sums of every Dense layer: omega_j = sum_i w_ij, tau_j = sum_i w_ij^2
    assert r.weight_layers == tuple(lay.name for lay in seed_run["model"].layers[::3])
    for j, w in enumerate(seed_run["kernels"]):
        omega, tau = w.sum(0), (w**2).sum(0)
        np.testing.assert_allclose(
            [r.weights[k][0, j] for k in ("omega_mean", "omega_std", "tau_mean", "tau_std")],
            [omega.mean(), omega.std(), tau.mean(), tau.std()], rtol=1e-5, atol=1e-9,
        )  # fmt: skip
    # the views are the kernels themselves: the weight gradients of the first record reach them
    np.testing.assert_array_equal(
        r.hist_weight_grad[0].sum(-1), [w.size for w in seed_run["kernels"]]
    )


def test_alpha_dropout_record_is_what_keras_alpha_dropout_output(seed_run):
    """Keras' own layer, seen through its torch forward hook in the first training pass."""
    r, y = seed_run["records"], seed_run["watch"].output
    assert y is not None and y.shape == (BATCH, UNITS)
    want = hand_stats(y, "selu", -1.0507009873554805 * 1.6732632423543772, post=True)
    for key in ("mean", "std", "min", "max", "saturation_frac"):
        assert r.post[key][0, 1] == pytest.approx(want[key], rel=1e-5, abs=1e-9), key
    np.testing.assert_array_equal(r.hist_post[0, 1], hand_hist(y))
    # alpha dropout moved some values (p = 0.1): its output differs from its input
    assert r.post["min"][0, 1] != r.pre["min"][0, 1]


def test_metrics_and_report(seed_run):
    out, history = seed_run["out"], seed_run["history"]
    rows = read_jsonl(out / "runs" / "seed_mlp" / "seed0" / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    for key, keras_key in (("train_loss", "loss"), ("train_accuracy", "accuracy"),
                           ("val_loss", "val_loss"), ("val_accuracy", "val_accuracy")):  # fmt: skip
        np.testing.assert_allclose([row[key] for row in rows], history[keras_key], rtol=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["source"] == "keras" and config["settings"]["keras_model"] == "Sequential"
    assert seed_run["cb"].report_path == out / "summary.json"  # report=False
    assert cli.main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "seed_mlp on mnist-shaped" in html and "320 training / 64 validation" in html
    # the layers are named in the figures: one heatmap per recorded layer, one weight
    # histogram per Dense layer, and the SELU-only views, as every layer is a SELU
    assert '<figure id="fig-heatmaps" data-series="0" data-legends="0" data-mappables="4"' in html
    assert '<figure id="fig-weights" data-series="0" data-legends="0" data-mappables="3"' in html
    assert 'id="fig-fixed_point_distance"' in html
    assert "every layer of seed_mlp stayed within 0.5 of the fixed point (0, 1)" in html


def test_recording_leaves_the_training_as_it_was(seed_run):
    """The same seed without the callback: the same losses and accuracies, to the bit."""
    model, train, val = seeded_seed_mlp()
    assert fit(model, train, val, []) == seed_run["history"]


def test_layers_come_back_as_they_were(seed_run):
    model, before, watch = seed_run["model"], seed_run["before"], seed_run["watch"]
    assert watch.routed  # while fit ran, the SELU went through a probe ...
    assert watch.config == before["config"]  # ... and the model saved as before
    for lay in model.layers:
        assert vars(lay).get("activation") is before["activation"][id(lay)], lay.name
    assert not any(before["call"].values())  # Keras keeps no `call` of its own on instances
    for obj in [*model.layers, model]:
        assert "call" not in vars(obj) and obj.call.__func__ is type(obj).call, obj.name
    x, y = mnist_shaped(BATCH, 2)
    loss = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history["loss"]
    assert math.isfinite(loss[0])


def test_dense_activation_layers_and_nested_models_are_recorded(tmp_path):
    keras.utils.set_random_seed(1)
    block = keras.Sequential(
        [layers.Dense(32, activation="selu", name="fc1"),
         layers.Dense(16, activation="relu", name="fc2")],
        name="block",
    )  # fmt: skip
    model = compiled(
        keras.Sequential(
            [
                keras.Input((784,)),
                block,
                layers.LeakyReLU(name="leaky"),
                layers.Dense(8, activation=lambda t: 2 * keras.ops.tanh(t), name="odd"),
                layers.Dense(10, activation="softmax", name="head"),
            ]
        )
    )
    x, y = mnist_shaped(BATCH, 3)
    w = block.layers[0].kernel.value.detach().numpy().astype(np.float64)
    cb = snk.SelfnormCallback(tmp_path / "run", record=RecordConfig(every=1), report=False)
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, callbacks=[cb], verbose=0)
    r = cb.run.records()
    assert r.layers == ("block.fc1.activation", "block.fc2.activation", "leaky", "odd.activation")
    assert r.family == ("selu", "relu", "lrelu", "other")  # a function of its own: other
    assert r.weight_layers == ("block.fc1", "block.fc2", "odd", "head")
    h = x[:64].astype(np.float64) @ w  # the Dense's pre-activation (the bias starts at 0)
    np.testing.assert_allclose([r.pre["mean"][0, 0], r.pre["std"][0, 0]], [h.mean(), h.std()],
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(r.pre["max"][:, 2], r.post["max"][:, 1])  # fc2 -> leaky
    assert np.isfinite(r.post["dead_frac"][:, 1]).all()  # ReLU's dead units are counted
    assert vars(block.layers[0])["activation"] is keras.activations.selu


def test_a_fit_that_raises_gives_the_layers_back_at_the_end_of_the_with_block(tmp_path):
    model = compiled(
        keras.Sequential(
            [keras.Input((784,)), layers.Dense(8), layers.Activation("selu"),
             layers.AlphaDropout(0.1), layers.Dense(10)]
        )
    )  # fmt: skip
    original = model.layers[1].activation

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    x, y = mnist_shaped(BATCH, 4)
    with pytest.raises(KeyboardInterrupt):
        with snk.SelfnormCallback(tmp_path / "run") as cb:
            model.fit(x, y, batch_size=64, epochs=1, callbacks=[cb, Boom()], verbose=0)
    assert vars(model.layers[1])["activation"] is original
    assert not any("call" in vars(obj) for obj in [*model.layers, model])
    with pytest.raises(RuntimeError, match="recorded a fit into .* already"):
        model.fit(x, y, batch_size=64, epochs=1, callbacks=[cb], verbose=0)
    # the folder was released: a new callback may replace the broken run
    cb = snk.SelfnormCallback(tmp_path / "run", overwrite=True, report=False)
    model.fit(x, y, batch_size=64, epochs=1, callbacks=[cb], verbose=0)
    assert cb.run.records().steps.tolist() == [0, 1]  # every: a quarter epoch, at least 1


def test_a_model_without_activation_layers_is_refused_and_left_alone(tmp_path):
    model = compiled(keras.Sequential([keras.Input((4,)), layers.Dense(3)]))
    cb = snk.SelfnormCallback(tmp_path / "run")
    with pytest.raises(ValueError, match="has no layer to record: it needs Dense\\(activation"):
        model.fit(np.zeros((8, 4), "float32"), np.zeros((8, 3), "float32"), callbacks=[cb],
                  verbose=0)  # fmt: skip
    assert "call" not in vars(model) and not (tmp_path / "run").exists()


def test_another_backend_is_one_line_naming_it_and_the_fix():
    snk.require_torch_backend()  # this session's: torch
    with pytest.raises(RuntimeError, match=r"Keras runs on 'jax': set KERAS_BACKEND=torch") as e:
        snk.require_torch_backend("jax")
    assert "\n" not in str(e.value)


def test_import_without_keras_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ImportError
    spec = importlib.util.spec_from_file_location("_selfnorm_keras_without_keras", snk.__file__)
    fix = r"pip install 'selfnorm\[keras\]' \(after torch\) and set KERAS_BACKEND=torch"
    with pytest.raises(ImportError, match=fix) as e:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "\n" not in str(e.value)

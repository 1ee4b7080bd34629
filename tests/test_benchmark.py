import json
import statistics
import warnings

import numpy as np
import pytest
from scipy.stats import wilcoxon
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from selfnorm.benchmark import (
    benchmark,
    benchmark_spec,
    rank_methods,
    score,
    split_indices,
    wilcoxon_p,
)
from selfnorm.cli import main
from selfnorm.data import read_csv
from selfnorm.sweep import LocalExecutor

# 2 variants x depth {1, 2} x 3 folds = 12 network jobs; tiny baselines
GRID = {
    "activations": ["selu", "relu"],
    "seeds": [0],
    "model": {"width": 16},
    "train": {"epochs": 4, "batch_size": 32},
    "grid": {"depth": [1, 2]},
    "baselines": {
        "logistic_regression": {"C": [1.0]},
        "svm": {"C": [0.1, 1.0]},
        "random_forest": {"n_estimators": [20]},
    },
}
GRID_TOML = """\
activations = ["selu", "relu"]
seeds = [0]
[model]
width = 16
[train]
epochs = 4
batch_size = 32
[grid]
depth = [1, 2]
[baselines.logistic_regression]
C = [1.0]
[baselines.svm]
C = [0.1, 1.0]
[baselines.random_forest]
n_estimators = [20]
"""


def _write_csv(path, bunch):
    header = [f"f{i}" for i in range(bunch.data.shape[1])] + ["label"]
    rows = [
        ",".join(repr(float(v)) for v in x) + f",{y}"
        for x, y in zip(bunch.data, bunch.target, strict=True)
    ]
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "breast-cancer": _write_csv(d / "breast_cancer.csv", load_breast_cancer()),
        "wine": _write_csv(d / "wine.csv", load_wine()),
    }


@pytest.fixture(scope="module")
def cancer(csvs, tmp_path_factory):
    spec, baselines = benchmark_spec(f"csv:{csvs['breast-cancer']}", GRID)
    out = tmp_path_factory.mktemp("bench")
    result = benchmark(spec, out, folds=3, baselines=baselines, executor=LocalExecutor(2, 1))
    return out, result, spec


def test_baseline_fold_scores_equal_an_independent_computation(cancer, csvs):
    _, result, _ = cancer
    assert result["metric"] == "auc" and result["metric_description"] == "ROC AUC"
    table = read_csv(csvs["breast-cancer"])
    x, y = table.x, table.y
    expected = []
    for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(x, y):
        inner, _ = train_test_split(train, test_size=0.1, random_state=0, stratify=y[train])
        inner = np.sort(inner)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10_000))
        model.fit(x[inner], y[inner])
        expected.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    assert result["methods"]["logistic_regression"]["folds"] == expected


def test_network_fold_score_is_the_test_score_of_the_validation_choice(cancer):
    out, result, spec = cancer
    assert result["jobs_total"] == 12 and result["jobs_failed"] == []
    records = [json.loads(p.read_text()) for p in (out / "jobs").glob("*/job.json")]
    assert len(records) == 12
    for act in spec.activations:
        for fold in range(3):
            mine = [r for r in records if r["activation"] == act and r["task"]["index"] == fold]
            assert len(mine) == 2
            best = max(mine, key=lambda r: r["metrics"]["val_score"])
            assert result["methods"][act]["folds"][fold] == best["metrics"]["test_score"]
            assert result["methods"][act]["chosen"][fold] == {
                "depth": best["params"]["depth"],
                "val_score": best["metrics"]["val_score"],
            }


def test_means_ranks_and_wilcoxon_agree_with_the_fold_scores(cancer):
    out, result, _ = cancer
    methods = result["methods"]
    assert set(methods) == {
        "selu", "relu", "logistic_regression", "svm", "random_forest", "naive_bayes",
    }  # fmt: skip
    for m in methods.values():
        assert len(m["folds"]) == 3 and m["complete"]
        assert m["mean"] == statistics.fmean(m["folds"])
        assert m["std"] == pytest.approx(np.std(m["folds"], ddof=1), rel=1e-12)
    by_mean = sorted(methods, key=lambda n: -methods[n]["mean"])
    assert [methods[n]["rank"] for n in by_mean] == [1, 2, 3, 4, 5, 6]
    best = result["best"]
    assert best == by_mean[0] and methods[best]["p_value"] is None
    for name, m in methods.items():
        if name != best:
            assert m["p_value"] == wilcoxon(methods[best]["folds"], m["folds"]).pvalue
    assert json.loads((out / "benchmark.json").read_text()) == result
    assert "| method | auc mean ± std |" in (out / "summary.md").read_text()


def test_running_again_reuses_every_job(cancer):
    out, result, spec = cancer
    events = []
    _, baselines = benchmark_spec(spec.datasets[0], GRID)
    again = benchmark(
        spec, out, folds=3, baselines=baselines, executor=LocalExecutor(2), progress=events.append
    )
    assert events == [] and again == result


def test_multiclass_cli_accuracy_and_macro_auc(csvs, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_TOML)
    common = [f"csv:{csvs['wine']}", "--folds", "3", "--grid", str(grid), "--workers", "2",
              "--threads", "1", "--json", "--quiet"]  # fmt: skip
    assert main(["benchmark", *common, "--out", str(tmp_path / "acc")]) == 0
    acc = json.loads(capsys.readouterr().out)
    assert acc == json.loads((tmp_path / "acc" / "benchmark.json").read_text())
    assert acc["metric"] == "accuracy" and acc["dataset"]["classes"] == 3
    # a network's accuracy from its saved model equals the training loop's own test accuracy
    for p in (tmp_path / "acc" / "jobs").glob("*/job.json"):
        m = json.loads(p.read_text())["metrics"]
        assert m["test_score"] == m["test_accuracy"] and m["val_score"] == m["final_val_accuracy"]

    assert main(["benchmark", *common, "--metric", "auc", "--out", str(tmp_path / "auc")]) == 0
    auc = json.loads(capsys.readouterr().out)
    assert auc["metric"] == "auc" and auc["metric_description"] == "macro one-vs-rest ROC AUC"
    for m in auc["methods"].values():
        assert all(0.5 < s <= 1.0 for s in m["folds"])


def test_score_and_wilcoxon_helpers():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[[0, 1, 2, 1, 1, 2]]
    assert score("accuracy", y, probs) == 5 / 6
    assert score("auc", y, probs) == roc_auc_score(y, probs, multi_class="ovr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wilcoxon_p([0.9, 0.8, 0.7], [0.9, 0.8, 0.7]) == 1.0  # scipy: 0/0 warning
    r = rank_methods({"a": [0.8, 0.8], "b": [0.8, 0.8], "c": [0.7, None]})
    assert (r["a"]["rank"], r["b"]["rank"], r["c"]["rank"]) == (1, 1, None)
    assert r["a"]["p_value"] is None and r["b"]["p_value"] == 1.0 and not r["c"]["complete"]


def test_default_grid_and_dropping_a_baseline(csvs):
    spec, baselines = benchmark_spec(f"csv:{csvs['wine']}")
    assert spec.activations == ("selu", "relu", "relu+bn", "relu+ln")
    assert set(baselines) == {"random_forest", "svm", "logistic_regression", "naive_bayes"}
    _, baselines = benchmark_spec(f"csv:{csvs['wine']}", {"baselines": {"svm": {}}})
    assert set(baselines) == {"random_forest", "logistic_regression", "naive_bayes"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: benchmark_spec("digits"), "reads csv:PATH data, not 'digits'"),
        (lambda p: benchmark_spec(f"csv:{p}", {"datasets": ["x"]}), "remove `datasets`"),
        (
            lambda p: benchmark_spec(f"csv:{p}", {"baselines": {"knn": {"k": [1]}}}),
            "unknown baseline 'knn'",
        ),
        (lambda p: split_indices(np.array([0] * 5 + [1] * 2), 3, 0, 0.1), "class 1 has 2"),
        (lambda p: split_indices(np.array([0, 1] * 5), 1, 0, 0.1), "folds=1 must be"),
    ],
)
def test_benchmark_errors(call, message, csvs):
    with pytest.raises(ValueError) as exc:
        call(csvs["wine"])
    assert message in str(exc.value)


def test_the_naive_bayes_baseline_agrees_with_scikit_learn_on_each_fold():
    """The paper's HTRU2 table compares with Naive Bayes; ours is scikit-learn's GaussianNB
    after standardizing on the training rows, refitted here directly on each fold."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import roc_auc_score
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from selfnorm.benchmark import run_baseline, split_indices

    x, y = load_breast_cancer(return_X_y=True)
    splits = split_indices(y, 3, 0, 0.1)
    scores, chosen = run_baseline("naive_bayes", {"var_smoothing": [1e-9]}, x, y, splits, "auc", 0)
    for (train, _, test), got in zip(splits, scores, strict=True):
        nb = make_pipeline(StandardScaler(), GaussianNB()).fit(x[train], y[train])
        assert got == roc_auc_score(y[test], nb.predict_proba(x[test])[:, 1])
    assert [c["var_smoothing"] for c in chosen] == [1e-9] * 3

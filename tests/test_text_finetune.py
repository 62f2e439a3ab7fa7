"""FineTunedTextClassifier: it learns, trains exactly the blocks it says,
runs a frozen encoder once per text, and its encoder is reused by an
extractor, in a fresh process too; sklearn's classifier contract on texts."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

import sktransfer
from sktransfer import (
    FineTunedTextClassifier,
    LayerError,
    PretrainedTextExtractor,
    TruncationWarning,
)
from sktransfer._engine import counting_images
from sktransfer._sources import source_of
from sktransfer._text_finetune import transformer_blocks

from .conftest import assert_checks_backed, assert_same_rows, transform_in_fresh_process

transformers = pytest.importorskip("transformers")

FILLER = ["the", "a", "cat", "dog", "sat", "on", "mat", "is", "was", "movie", "plot"]


def toy(n, seed=0):
    """Texts of filler words holding "good" (label "pos") or "bad" ("neg")."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, int(rng.integers(3, 7))))
        positive = i % 2 == 0
        words.insert(
            int(rng.integers(0, len(words) + 1)), "good" if positive else "bad"
        )
        texts.append(" ".join(words))
        labels.append("pos" if positive else "neg")
    return texts, np.array(labels)


TEXTS, LABELS = toy(32)


def make(folder, **params):
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    params.setdefault("random_state", 0)
    params.setdefault("learning_rate", 1e-2)
    params.setdefault("max_epochs", 8)
    params.setdefault("batch_size", 8)
    return FineTunedTextClassifier(model=str(folder), **params)


def pretrained_encoder(folder):
    return transformers.AutoModel.from_pretrained(folder).float().eval()


def test_tiny_tokenizer_knows_the_words(tiny_text_model):
    """The tiny model's tokenizer maps the toy task's words to themselves
    (not [UNK]), so that the task is learnable."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_text_model)
    assert tokenizer.tokenize("the good cat") == ["the", "good", "cat"]


# -- learning --------------------------------------------------------------------


@pytest.mark.parametrize("trainable_layers", [0, 1, "all"])
def test_learns_a_separable_task(tiny_text_model, trainable_layers):
    """Texts holding "good" or "bad": held-out accuracy far above chance."""
    X_test, y_test = toy(40, seed=1)
    clf = make(
        tiny_text_model, trainable_layers=trainable_layers, max_epochs=15, batch_size=8
    )
    clf.fit(TEXTS, LABELS)
    assert list(clf.classes_) == ["neg", "pos"]
    assert clf.score(X_test, y_test) >= 0.9
    proba = clf.predict_proba(X_test)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_frozen_encoder_runs_once_per_text(tiny_text_model):
    """trainable_layers=0: the encoder embeds each distinct text once for
    the whole fit (every epoch trains on those vectors), and each new text
    once in predict."""
    encoder = (
        source_of(str(tiny_text_model), kind="text").load(str(tiny_text_model)).encoder
    )
    calls = []
    handle = encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        clf = make(tiny_text_model, max_epochs=6, batch_size=64)
        with counting_images() as count:
            clf.fit(TEXTS + TEXTS[:5], [*LABELS, *LABELS[:5]])
        assert count.images == len(set(TEXTS))
        assert len(calls) == 1  # (one batch of 64)
        with counting_images() as count:
            clf.predict(["a good plot", "a bad plot"])
        assert count.images == 2
        assert clf.n_trainable_layers_ == 0 and clf.n_iter_ == 6
        assert clf.n_trainable_params_ == 32 * 2 + 2  # the new layer alone
    finally:
        handle.remove()


def test_trainable_layers_change_exactly_the_last_blocks(tiny_text_model):
    """trainable_layers=N changes the last N blocks' parameters (up to the
    cut at ``layer``) and leaves every other tensor of the encoder equal."""
    pretrained = pretrained_encoder(tiny_text_model).state_dict()

    def changed(clf):
        state = clf.network_.encoder.state_dict()
        return {
            key
            for key, value in pretrained.items()
            if not torch.equal(state[key], value)
        }

    def block_of(key):
        return int(key.split(".")[2]) if key.startswith("encoder.layer.") else None

    clf = make(tiny_text_model, trainable_layers=2).fit(TEXTS, LABELS)
    assert clf.n_trainable_layers_ == 2
    assert {block_of(k) for k in changed(clf)} == {2, 3}
    trained = [k for k in pretrained if block_of(k) in (2, 3)]
    assert set(trained) <= changed(clf) | {k for k in trained if "pooler" in k}
    cut = make(tiny_text_model, trainable_layers=1, layer=3).fit(TEXTS, LABELS)
    assert {block_of(k) for k in changed(cut)} == {2}  # block 3 is after the cut
    whole = make(tiny_text_model, trainable_layers="all").fit(TEXTS, LABELS)
    assert whole.n_trainable_layers_ == 4
    assert any(k.startswith("embeddings.") for k in changed(whole))
    assert {block_of(k) for k in changed(whole)} >= {0, 1, 2, 3}
    frozen = make(tiny_text_model, trainable_layers=0).fit(TEXTS, LABELS)
    assert changed(frozen) == set()


def test_blocks_are_found_or_refused_clearly(tiny_text_model):
    """The blocks are the encoder's one list of num_hidden_layers modules;
    an architecture without such a list gets an error naming the fix."""
    encoder = pretrained_encoder(tiny_text_model)
    assert transformer_blocks(encoder) == list(encoder.encoder.layer)

    class Flat(nn.Module):
        config = encoder.config

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(ValueError, match="trainable_layers=0 .* or 'all'"):
        transformer_blocks(Flat())


def test_seeded_fits_are_identical_and_leave_global_state(tiny_text_model):
    """The same random_state gives the same model (dropout included); the
    global torch generator is left as it was; another seed
    gives another model."""
    torch_state = torch.get_rng_state()
    first = make(tiny_text_model, trainable_layers=1, dropout=0.2).fit(TEXTS, LABELS)
    second = make(tiny_text_model, trainable_layers=1, dropout=0.2).fit(TEXTS, LABELS)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(
        first.predict_proba(TEXTS), second.predict_proba(TEXTS)
    )
    assert first.loss_curve_ == second.loss_curve_
    other = make(tiny_text_model, trainable_layers=1, dropout=0.2, random_state=1)
    assert other.fit(TEXTS, LABELS).loss_curve_ != first.loss_curve_


def test_bad_parameters_raise_clear_errors_in_fit(tiny_text_model):
    """Construction and set_params accept anything; fit names the parameter,
    the bad value and what would do."""
    clf = make(tiny_text_model, trainable_layers=5, pooling="avg")  # no error yet
    with pytest.raises(InvalidParameterError, match="pooling"):
        clf.fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="has 4 transformer blocks. Use at most 4"):
        make(tiny_text_model, trainable_layers=5).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="layer=2 keeps 2 transformer blocks"):
        make(tiny_text_model, trainable_layers=3, layer=2).fit(TEXTS, LABELS)
    with pytest.raises(InvalidParameterError, match="trainable_layers"):
        make(tiny_text_model, trainable_layers=-1).fit(TEXTS, LABELS)
    with pytest.raises(InvalidParameterError, match="trainable_layers"):
        make(tiny_text_model, trainable_layers="last").fit(TEXTS, LABELS)
    with pytest.raises(LayerError, match="out of range"):
        make(tiny_text_model, layer=9).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="more than this model takes"):
        make(tiny_text_model, max_length=1000).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        make(tiny_text_model, hidden_layer_sizes=(8, 0)).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="at least 2 classes"):
        make(tiny_text_model).fit(TEXTS, ["pos"] * len(TEXTS))
    with pytest.raises(ValueError, match="32 texts but y has 3 labels"):
        make(tiny_text_model).fit(TEXTS, LABELS[:3])
    with pytest.raises(ValueError, match="requires y"):
        make(tiny_text_model).fit(TEXTS, None)
    assert not hasattr(clf, "classes_")  # (failed fits leave nothing)


def test_long_texts_are_truncated_and_counted(tiny_text_model):
    """Texts longer than max_length are truncated, with one warning giving
    their count, in fit and in predict (both paths)."""
    long = ["the good cat " * 10, "the bad dog " * 10]
    X, y = [*TEXTS, *long], [*LABELS, "pos", "neg"]
    for trainable_layers in (0, 1):
        clf = make(tiny_text_model, max_length=12, trainable_layers=trainable_layers)
        with pytest.warns(TruncationWarning, match="2 of 34 texts") as record:
            clf.fit(X, y)
        assert not any("chunk" in str(w.message) for w in record)
        with pytest.warns(TruncationWarning, match="1 of 1 texts"):
            clf.predict(long[:1])


@pytest.mark.covers("check_class_weight_classifiers")
def test_early_stopping_and_class_weight(tiny_text_model):
    """Early stopping scores a stratified validation split each epoch and
    keeps the best; class weights change the fit."""
    clf = make(
        tiny_text_model, trainable_layers=1, early_stopping=True, max_epochs=20
    ).fit(TEXTS, LABELS)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    y = np.array(["pos"] * 24 + ["neg"] * 8)
    plain = make(tiny_text_model).fit(TEXTS, y)
    weighted = make(tiny_text_model, class_weight="balanced").fit(TEXTS, y)
    assert weighted.loss_curve_ != plain.loss_curve_


# -- reuse as an extractor's model -------------------------------------------------


def test_reused_as_extractor_gives_the_same_rows_in_a_fresh_process(
    tiny_text_model, tmp_path
):
    """A fitted classifier is the model of a PretrainedTextExtractor: its
    fine-tuned encoder at any layer, the same rows after pickling and in a
    fresh process; a frozen one gives the pretrained model's rows."""
    clf = make(tiny_text_model, trainable_layers="all").fit(TEXTS, LABELS)
    extractor = PretrainedTextExtractor(
        model=clf, layer=2, pooling="cls", cache=None, verbose=False
    ).fit(TEXTS)
    rows = extractor.transform(TEXTS)
    base = PretrainedTextExtractor(
        model=str(tiny_text_model), layer=2, pooling="cls", cache=None, verbose=False
    ).fit_transform(TEXTS)
    assert not np.allclose(rows, base, atol=1e-3)  # the fine-tuned weights
    with torch.no_grad():  # hand computed with the classifier's encoder
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_text_model)
        ids = tokenizer(TEXTS[:1], return_tensors="pt")
        hidden = clf.network_.encoder(**ids, output_hidden_states=True).hidden_states
    assert_same_rows(rows[:1], hidden[2][:, 0].numpy())
    again = pickle.loads(pickle.dumps(extractor))
    assert_same_rows(again.transform(TEXTS), rows)
    fresh = transform_in_fresh_process(extractor, np.array(TEXTS), tmp_path)
    assert_same_rows(fresh, rows)
    frozen = make(tiny_text_model).fit(TEXTS, LABELS)
    reused = PretrainedTextExtractor(
        model=frozen, layer=2, pooling="cls", cache=None, verbose=False
    )
    np.testing.assert_array_equal(reused.fit_transform(TEXTS), base)


def test_unfitted_classifier_as_model_is_refused(tiny_text_model):
    """An unfitted classifier as an extractor's model: NotFittedError."""
    extractor = PretrainedTextExtractor(model=make(tiny_text_model), verbose=False)
    with pytest.raises(NotFittedError, match="fit it on the source task"):
        extractor.fit(TEXTS)


def test_grid_search_over_trainable_layers(tiny_text_model):
    """trainable_layers is a hyperparameter like any other."""
    search = GridSearchCV(
        make(tiny_text_model, max_epochs=10),
        {"trainable_layers": [0, 1], "learning_rate": [1e-2]},
        cv=2,
    ).fit(TEXTS, LABELS)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_params_["trainable_layers"] in (0, 1)
    assert search.score(*toy(20, seed=2)) >= 0.8


# -- sklearn's contract on texts ----------------------------------------------------

#: sklearn check -> the test of this module standing in for it on texts.
CLASSIFIER_CHECKS = {
    "check_fit_check_is_fitted": (
        "test_text_finetune.py::test_predict_before_fit_raises"
    ),
    "check_estimators_pickle": (
        "test_text_finetune.py::test_pickle_clone_and_save_round_trip"
    ),
    "check_get_params_invariance": (
        "test_text_finetune.py::test_pickle_clone_and_save_round_trip"
    ),
    "check_estimators_overwrite_params": (
        "test_text_finetune.py::test_pickle_clone_and_save_round_trip"
    ),
    "check_fit_idempotent": "test_text_finetune.py::test_refit_is_idempotent",
    "check_estimators_fit_returns_self": (
        "test_text_finetune.py::test_refit_is_idempotent"
    ),
    "check_classifier_data_not_an_array": (
        "test_text_finetune.py::test_predictions_independent_of_order_and_container"
    ),
    "check_methods_sample_order_invariance": (
        "test_text_finetune.py::test_predictions_independent_of_order_and_container"
    ),
    "check_methods_subset_invariance": (
        "test_text_finetune.py::test_predictions_independent_of_order_and_container"
    ),
    "check_class_weight_classifiers": (
        "test_text_finetune.py::test_early_stopping_and_class_weight"
    ),
}


@pytest.mark.covers("check_fit_check_is_fitted")
def test_predict_before_fit_raises(tiny_text_model):
    """predict and predict_proba before fit: NotFittedError."""
    clf = make(tiny_text_model)
    with pytest.raises(NotFittedError, match="not fitted"):
        clf.predict(TEXTS)
    with pytest.raises(NotFittedError):
        clf.predict_proba(TEXTS)


@pytest.mark.covers(
    "check_estimators_pickle",
    "check_get_params_invariance",
    "check_estimators_overwrite_params",
)
def test_pickle_clone_and_save_round_trip(tiny_text_model, tmp_path):
    """Fit leaves the parameters as given; a clone is cheap and unfitted;
    pickle (in a fresh process too) and sktransfer.save/load give the same
    probabilities. A frozen encoder is not pickled (light pickles)."""
    for trainable_layers in (0, 1):
        clf = make(tiny_text_model, trainable_layers=trainable_layers)
        params = clf.get_params()
        assert FineTunedTextClassifier(**params).get_params() == params
        clf.fit(TEXTS, LABELS)
        for key, value in params.items():
            assert clf.get_params()[key] is value, key
        start = time.perf_counter()
        copy = clone(clf)
        assert time.perf_counter() - start < 0.5
        assert not hasattr(copy, "classes_") and copy.get_params() == params
        expected = clf.predict_proba(TEXTS)
        state = clf.__getstate__()["_network_state"]
        assert all(k.startswith("head.") for k in state) == (trainable_layers == 0)
        again = pickle.loads(pickle.dumps(clf))
        np.testing.assert_allclose(again.predict_proba(TEXTS), expected, atol=1e-6)
        path = sktransfer.save(clf, tmp_path / f"model{trainable_layers}")
        loaded = sktransfer.load(path)
        np.testing.assert_allclose(loaded.predict_proba(TEXTS), expected, atol=1e-6)
        fresh = transform_in_fresh_process(
            clf, np.array(TEXTS), tmp_path, method="predict_proba"
        )
        np.testing.assert_allclose(fresh, expected, atol=1e-6)


@pytest.mark.covers("check_fit_idempotent", "check_estimators_fit_returns_self")
def test_refit_is_idempotent(tiny_text_model):
    """fit returns the classifier; fitting again gives the same model."""
    clf = make(tiny_text_model, trainable_layers=1)
    assert clf.fit(TEXTS, LABELS) is clf
    first = clf.predict_proba(TEXTS)
    np.testing.assert_array_equal(clf.fit(TEXTS, LABELS).predict_proba(TEXTS), first)


@pytest.mark.covers(
    "check_classifier_data_not_an_array",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
)
def test_predictions_independent_of_order_and_container(tiny_text_model):
    """A text's probabilities do not depend on the order, the other texts
    of the call or the container (list, array, Series)."""
    import pandas as pd

    clf = make(tiny_text_model, trainable_layers=1, batch_size=3)
    clf.fit(list(TEXTS), list(LABELS))
    full = clf.predict_proba(TEXTS)
    permutation = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = clf.predict_proba([TEXTS[i] for i in permutation])
    np.testing.assert_allclose(shuffled, full[permutation], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(TEXTS[2:4]), full[2:4], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(TEXTS[5:9]), full[5:9], atol=1e-6)
    for X in (np.array(TEXTS, dtype=object), pd.Series(TEXTS)):
        np.testing.assert_allclose(clf.predict_proba(X), full, atol=1e-6)
    with pytest.raises(ValueError, match="Row 1 has no text"):
        clf.predict(["a", None])


def test_every_classifier_check_is_backed_by_a_test():
    """Each listed check names a test of this module that declares it
    covers it, uses the classifier and does what the check does."""
    assert_checks_backed(CLASSIFIER_CHECKS, estimator=("clf", "make("))


# -- the real model -----------------------------------------------------------------


def test_fine_tunes_the_real_minilm(minilm):
    """On all-MiniLM-L6-v2 (a sentence-transformers folder): its own
    sentence embedding under new layers, the last block trained."""
    X_test, y_test = toy(20, seed=3)
    clf = FineTunedTextClassifier(
        model=str(minilm),
        trainable_layers=1,
        max_epochs=4,
        learning_rate=1e-2,
        batch_size=16,
        verbose=False,
        random_state=0,
        cache=None,
    ).fit(TEXTS, LABELS)
    assert clf.network_.normalize and clf.network_.layer == 6
    assert clf.score(X_test, y_test) >= 0.9

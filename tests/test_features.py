"""goodnet.features: the last hidden layer, one streamed pass over a lab file, the on-disk cache, the class groups."""

import os

import numpy as np
import pytest

from goodnet.errors import DataError, ModelError, OptionError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny DeepID (unit scale), 70 images in 3 classes and their lab file."""
    import keras

    from goodnet.data import save_h5
    from goodnet.models import Classifier, build_deepid

    keras.utils.set_random_seed(0)
    classifier = Classifier(build_deepid(3), "unit")
    rng = np.random.default_rng(0)
    images = np.rint(rng.uniform(0, 255, (70, 55, 47, 3))).astype(np.float32)
    labels = rng.integers(0, 3, 70)
    path = tmp_path_factory.mktemp("features") / "train.h5"
    save_h5(path, images, labels)
    return classifier, images, labels, str(path)


def _keras_reference(classifier, images, layer):
    import keras

    model = keras.Model(classifier.model.inputs, classifier.model.get_layer(layer).output)
    return np.asarray(model(images / np.float32(255), training=False)).reshape(len(images), -1)


def test_the_last_hidden_layer_is_the_input_of_the_classification_layer():
    import keras

    from goodnet.features import last_hidden_layer
    from goodnet.models import build_deepid

    assert last_hidden_layer(build_deepid(4)) == "activation_1"     # relu(fc_1 + fc_2), read by `output`
    logits = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(name="flat"),
                               keras.layers.Dense(7, activation="relu", name="hidden"),
                               keras.layers.Dense(3, name="logits"), keras.layers.Softmax(name="probabilities")])
    assert last_hidden_layer(logits) == "hidden"                    # past a separate softmax and the Dense
    inputs = keras.Input((4,))
    two = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Concatenate()(
        [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)])))
    assert last_hidden_layer(two).startswith("concatenate")
    direct = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(ModelError, match="name the layer"):
        last_hidden_layer(direct)


def test_features_equal_the_keras_sub_model_from_arrays_data_and_files(world):
    from goodnet.data import LabData, LabFile
    from goodnet.features import compute_features

    classifier, images, labels, path = world
    expected = _keras_reference(classifier, images, "activation_1")
    answers = classifier.predict(images)
    from_array = compute_features(classifier, images, labels=labels, batch_size=16, progress=False)
    np.testing.assert_allclose(from_array.values, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(from_array.predictions, answers)
    assert from_array.layer == "activation_1" and from_array.dim == 160
    from_data = compute_features(classifier, LabData(images, labels), batch_size=16, progress=False)
    np.testing.assert_array_equal(from_data.values, from_array.values)
    # streamed from the file in chunks of 9 images and batches of 4 (other batches: float rounding only)
    streamed = compute_features(classifier, path, batch_size=4, chunk=9, progress=False)
    np.testing.assert_allclose(streamed.values, from_array.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(compute_features(classifier, path, batch_size=16, chunk=32, progress=False).values,
                                  from_array.values)                # same batches: bit for bit
    np.testing.assert_array_equal(streamed.labels, labels)
    assert streamed.source == path
    with LabFile(path) as lab:
        conv = compute_features(classifier, lab, layer="pool_3", chunk=32, progress=False)
    np.testing.assert_allclose(conv.values, _keras_reference(classifier, images, "pool_3"), rtol=1e-5, atol=1e-5)
    assert conv.dim == 5 * 4 * 60                                    # flattened


def test_the_cache_is_a_memory_map_reused_only_for_the_same_model_data_and_layer(world, tmp_path, monkeypatch):
    import goodnet.features as features_module
    from goodnet.data import save_h5
    from goodnet.features import compute_features

    classifier, images, labels, path = world
    cache = tmp_path / "cache"
    first = compute_features(classifier, path, chunk=16, cache=str(cache), progress=False)
    assert isinstance(first.values, np.memmap) and first.values.dtype == np.float32
    assert sorted(os.listdir(cache)) == [".goodnet-manifest.json", "features.npy", "key.json", "predictions.npy"]
    # the same chunks in memory give the same bits (other batch sizes round differently, by ~1e-7)
    in_memory = compute_features(classifier, path, chunk=16, progress=False)
    np.testing.assert_array_equal(np.asarray(first.values), in_memory.values)
    np.testing.assert_array_equal(first.predictions, in_memory.predictions)

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed although the cache matches")

    monkeypatch.setattr(features_module, "feature_function", refuse)
    again = compute_features(classifier, path, cache=str(cache), progress=False)
    np.testing.assert_array_equal(np.asarray(again.values), in_memory.values)
    monkeypatch.undo()
    # another layer, or the data file changed: computed again
    other = compute_features(classifier, path, layer="fc_1", cache=str(cache), progress=False)
    assert other.layer == "fc_1" and other.dim == 160
    changed = tmp_path / "changed.h5"
    save_h5(changed, images[::-1], labels[::-1])
    reversed_features = compute_features(classifier, str(changed), chunk=16, cache=str(cache), progress=False)
    assert reversed_features.values.shape == in_memory.values.shape
    assert not np.array_equal(np.asarray(reversed_features.values), in_memory.values)
    # each image now shares its batch with others, so only rounding may differ
    np.testing.assert_allclose(np.asarray(reversed_features.values), in_memory.values[::-1], rtol=1e-5, atol=1e-6)


def test_features_that_would_not_fit_in_memory_go_to_the_disk_cache(world, monkeypatch, tmp_path):
    import goodnet.data as data_module
    from goodnet.defenses.spectral_signatures import SpectralSignatures
    from goodnet.features import compute_features

    classifier, _, _, path = world
    expected = SpectralSignatures().fit(compute_features(classifier, path, chunk=8, progress=False)).scores_
    monkeypatch.setattr(data_module, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match="features.*would need"):
        compute_features(classifier, path, progress=False)
    cached = compute_features(classifier, path, chunk=8, cache=str(tmp_path / "cache"), progress=False)
    assert isinstance(cached.values, np.memmap)                     # read from disk, never held whole
    np.testing.assert_allclose(SpectralSignatures().fit(cached).scores_, expected, rtol=1e-6, atol=1e-9)


def test_class_groups_give_file_indices_class_by_class():
    from goodnet.features import ClassGroups, Features

    labels = np.array([7, 3, 7, 7, 12, 3])
    groups = ClassGroups.of(labels)
    np.testing.assert_array_equal(groups.classes, [3, 7, 12])
    assert [groups.indices(position).tolist() for position in range(3)] == [[1, 5], [0, 2, 3], [4]]
    assert groups.position(12) == 2
    with pytest.raises(OptionError, match="no samples"):
        groups.position(4)
    features = Features(np.arange(12, dtype=np.float32).reshape(6, 2), labels)
    np.testing.assert_array_equal(features.rows(groups.indices(1)), [[0, 1], [4, 5], [6, 7]])
    assert features.rows([0]).dtype == np.float64


def test_bad_arguments_are_one_line_errors(world):
    from goodnet.features import Features, compute_features, features_of

    classifier, images, labels, path = world
    with pytest.raises(ModelError, match="no layer named 'fc_9'"):
        compute_features(classifier, path, layer="fc_9", progress=False)
    with pytest.raises(OptionError, match="labels"):
        compute_features(classifier, images, progress=False)
    with pytest.raises(OptionError, match="labels"):
        Features(np.zeros((3, 2)), [0, 1])
    shared = Features(np.zeros((3, 2), np.float32), [0, 1, 1])
    assert features_of(shared) is shared
    with pytest.raises(OptionError, match="differ"):
        features_of(shared, labels=[1, 1, 1])
    with pytest.raises(OptionError, match="finite"):
        features_of(np.array([[np.nan, 1.0]]), labels=[0])
    with pytest.raises(OptionError, match="expected a Classifier"):
        features_of(np.zeros(3), labels=[0, 0, 0])

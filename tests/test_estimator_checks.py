"""scikit-learn's estimator checks, with image-native replacements.

The checks feed tabular 2-D data, which an image transformer must reject
(RELIABILITY.md); every check that fails for that reason is listed here with
the test in this suite that checks the same property on images.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import PretrainedFeatureExtractor

from .conftest import assert_checks_backed

_TABULAR = "feeds 2-D tabular data, which is rejected; replaced by {}"
EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": "test_extractor.py::test_fit_ignores_y",
    "check_estimators_overwrite_params": (
        "test_extractor.py::test_fit_leaves_parameters_unchanged"
    ),
    "check_dont_overwrite_parameters": (
        "test_extractor.py::test_fit_leaves_parameters_unchanged"
    ),
    "check_estimators_fit_returns_self": "test_extractor.py::test_fit_returns_self",
    "check_readonly_memmap_input": (
        "test_inputs.py::test_readonly_memmap_fortran_strided_inputs_unchanged"
    ),
    "check_f_contiguous_array_estimator": (
        "test_inputs.py::test_readonly_memmap_fortran_strided_inputs_unchanged"
    ),
    "check_n_features_in_after_fitting": (
        "test_extractor.py::test_feature_names_out (images have no n_features_in_)"
    ),
    "check_n_features_in": (
        "test_extractor.py::test_feature_names_out (images have no n_features_in_)"
    ),
    "check_positive_only_tag_during_fit": (
        "test_inputs.py::test_float_images_outside_unit_range_raise"
    ),
    "check_estimators_dtypes": "test_inputs.py::test_supported_dtypes_scale_alike",
    "check_complex_data": "test_inputs.py::test_bad_dtypes_raise_type_error",
    "check_dtype_object": "test_inputs.py::test_bad_dtypes_raise_type_error",
    "check_estimators_empty_data_messages": "test_inputs.py::test_empty_input_raises",
    "check_estimators_nan_inf": "test_inputs.py::test_nan_or_inf_raise_naming_the_row",
    "check_pipeline_consistency": (
        "test_extractor.py::test_transform_is_deterministic"
    ),
    "check_fit_idempotent": "test_extractor.py::test_transform_is_deterministic",
    "check_estimators_pickle": (
        "test_extractor.py::test_pickle_round_trip_in_fresh_process"
    ),
    "check_estimators_pickle(readonly_memmap=True)": (
        "test_extractor.py::test_pickle_round_trip_in_fresh_process"
    ),
    "check_transformer_data_not_an_array": (
        "test_inputs.py::test_tensor_and_array_inputs_agree"
    ),
    "check_transformer_general": (
        "test_extractor.py::test_fit_transform_equals_fit_then_transform"
    ),
    "check_transformer_general(readonly_memmap=True)": (
        "test_inputs.py::test_readonly_memmap_fortran_strided_inputs_unchanged"
    ),
    "check_methods_sample_order_invariance": (
        "test_extractor.py::test_rows_independent_of_batch_and_order"
    ),
    "check_methods_subset_invariance": (
        "test_extractor.py::test_rows_independent_of_batch_and_order"
    ),
    "check_fit2d_1sample": "test_extractor.py::test_single_image",
    "check_fit2d_1feature": "test_inputs.py::test_tabular_input_raises",
    "check_fit2d_predict1d": "test_inputs.py::test_tabular_input_raises",
    "check_dict_unchanged": "test_extractor.py::test_transform_leaves_state_unchanged",
    "check_fit_check_is_fitted": "test_extractor.py::test_transform_before_fit_raises",
}


def _expected_failed_checks(estimator):
    return {
        name: _TABULAR.format(test) for name, test in EXPECTED_FAILED_CHECKS.items()
    }


@parametrize_with_checks(
    [PretrainedFeatureExtractor(model="resnet18", weights=None, verbose=False)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    """Each applicable sklearn check passes; the others fail as listed."""
    check(estimator)


def test_every_expected_failure_is_backed_by_a_test():
    """Each listed check names a test that declares it covers that check,
    uses the extractor and exercises what the check does, on images."""
    assert_checks_backed(
        {
            check: target.split(" ")[0]
            for check, target in EXPECTED_FAILED_CHECKS.items()
        },
        estimator=("extractor", "make("),
    )

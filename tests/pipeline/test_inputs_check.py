"""Later stages refuse a crosscoder trained on other settings (sal.pipeline.inputs)."""

import json
import logging

import pytest

from sal.config.schema import SALConfig
from sal.pipeline.inputs import CHECKED_SETTINGS, check_against_training, mismatches


def _trained(**changes) -> dict:
    import dataclasses

    tree = dataclasses.asdict(SALConfig())
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return tree


def _export(tmp_path, resolved: dict):
    export = tmp_path / "crosscoder"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"resolved_config": resolved, "layers": [0, 1]}))
    return export


def test_identical_settings_pass_and_tuples_equal_lists():
    trained = _trained()
    trained["layers"]["indices"] = list(trained["layers"]["indices"] or [])
    import dataclasses

    assert mismatches(dataclasses.asdict(SALConfig()), trained) == []


def test_each_difference_is_named_with_both_values():
    import dataclasses

    current = dataclasses.asdict(SALConfig())
    trained = _trained(**{"data.name": "paper", "data.generation.max_new_tokens": 7, "layers.indices": [1, 2]})
    assert mismatches(current, trained) == [
        ("layers.indices", [1, 2], current["layers"]["indices"]),
        ("data.name", "paper", "offline"),
        ("data.generation.max_new_tokens", 7, current["data"]["generation"]["max_new_tokens"]),
    ]


def test_settings_an_older_export_lacks_are_not_compared():
    import dataclasses

    trained = _trained()
    del trained["data"]["max_question_chars"]
    trained["optim"] = {}
    current = dataclasses.asdict(SALConfig(data=SALConfig().data.__class__(max_question_chars=5)))
    assert mismatches(current, trained) == []


def test_settings_the_stages_do_not_share_are_not_checked():
    # the sparsity, the rule set's size and the judge may differ between stages
    assert not {"sparsity", "data.rule_set_per_stratum", "judge.backend", "crosscoder.sparsity_coef"} & set(
        CHECKED_SETTINGS)


def test_refusal_names_the_settings_and_the_ways_out(tmp_path):
    export = _export(tmp_path, _trained(**{"data.max_questions": 48}))
    with pytest.raises(ValueError) as err:
        check_against_training(SALConfig(), export, "extract_rules.py")
    msg = str(err.value)
    assert "data.max_questions: trained with 48, this run has None" in msg
    assert "data.max_questions=48" in msg and "accept_mismatch=true" in msg and "run_dir=" in msg


def test_accept_mismatch_warns_and_goes_on(tmp_path, caplog):
    export = _export(tmp_path, _trained(**{"model.seed": 3}))
    with caplog.at_level(logging.WARNING, logger="sal"):
        check_against_training(SALConfig(accept_mismatch=True), export, "evaluate.py")
    assert "model.seed: trained with 3, this run has 0" in caplog.text


def test_no_export_config_means_nothing_to_check(tmp_path):
    check_against_training(SALConfig(), tmp_path / "missing", "evaluate.py")


@pytest.mark.parametrize("setting, trained_value", [
    ("model.init", "random"),                      # the model's weights
    ("model.dtype", "bfloat16"),                   # the writer's precision (its responses differ)
    ("layers.indices", [0, 2, 4, 6, 8, 10, 12, 14]),  # the monitored layers
    ("data.sources", ["gsm8k_test"]),              # the corpus's questions
    ("data.generation.temperature", 1.0),          # how its responses were written
    ("data.max_doc_tokens", 4096),                 # the one document length
])
def test_each_kind_of_mismatch_is_refused(tmp_path, setting, trained_value):
    export = _export(tmp_path, _trained(**{setting: trained_value}))
    with pytest.raises(ValueError, match=f"{setting}: trained with"):
        check_against_training(SALConfig(), export, "extract_rules.py")

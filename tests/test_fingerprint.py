"""sal.fingerprint: a step's outputs are reused only with the inputs they were made from."""

import dataclasses
import logging

import pytest

from sal.fingerprint import Step, describe_changes, digest, settings


def _step(tmp_path, **inputs):
    return Step("rules", tmp_path / "rules.parquet", {"rules.tau": 0.0, "upstream.layer_counts": "abc", **inputs})


def _made(step):
    step.output.write_text("table")
    step.record()
    return step


def test_a_step_that_never_ran_is_not_fresh_and_says_nothing(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sal"):
        assert not _step(tmp_path).is_fresh()
    assert caplog.records == []


def test_recorded_outputs_with_the_same_inputs_are_fresh(tmp_path):
    _made(_step(tmp_path))
    assert _step(tmp_path).is_fresh()
    assert (tmp_path / "rules.fingerprint.json").exists()


def test_a_changed_setting_recomputes_and_names_the_change(tmp_path, caplog):
    _made(_step(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sal"):
        assert not _step(tmp_path, **{"rules.tau": 0.5}).is_fresh()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "rules: recomputing: rules.tau: 0.0 -> 0.5"


def test_a_changed_upstream_artifact_recomputes(tmp_path, caplog):
    _made(_step(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sal"):
        assert not _step(tmp_path, **{"upstream.layer_counts": "def"}).is_fresh()
    assert caplog.records[0].getMessage() == "rules: recomputing: upstream.layer_counts changed"


def test_force_recomputes_up_to_date_outputs(tmp_path, caplog):
    _made(_step(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sal"):
        assert not _step(tmp_path).is_fresh(force=True)
    assert "force=true" in caplog.records[0].getMessage()


def test_outputs_without_a_fingerprint_are_not_trusted(tmp_path, caplog):
    """A run killed after writing its output but before recording the fingerprint."""
    step = _step(tmp_path)
    step.output.write_text("maybe partial")
    with caplog.at_level(logging.WARNING, logger="sal"):
        assert not step.is_fresh()
    assert "has no fingerprint" in caplog.records[0].getMessage()


def test_a_fingerprint_without_its_output_is_not_fresh(tmp_path):
    step = _made(_step(tmp_path))
    step.output.unlink()
    assert not step.is_fresh()


def test_forget_removes_the_record(tmp_path):
    step = _made(_step(tmp_path))
    step.forget()
    assert not step.is_fresh(quiet=True)


def test_digest_ignores_key_order_and_tuple_vs_list():
    assert digest({"a": 1, "b": (0.9, 0.999)}) == digest({"b": [0.9, 0.999], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) != digest({"a": "1"})


def test_describe_changes_counts_beyond_the_listed_ones():
    before = {f"k{i}": i for i in range(6)}
    now = {**{f"k{i}": i + 1 for i in range(6)}, "new": 0}
    text = describe_changes(before, now)
    assert text.count("->") == 4 and text.endswith("and 3 more")
    assert describe_changes({"x": 1}, {}) == "x is gone" and describe_changes({}, {"x": 1}) == "x is new"


@dataclasses.dataclass
class _Cfg:
    tau: float = 0.0
    beta: float = 1.0
    progress: bool = True


def test_settings_picks_named_fields_or_all_but_excluded():
    assert settings("rules", _Cfg(), ("tau",)) == {"rules.tau": 0.0}
    assert settings("rules", _Cfg(), exclude=("progress",)) == {"rules.tau": 0.0, "rules.beta": 1.0}
    with pytest.raises(KeyError, match="no field"):
        settings("rules", _Cfg(), ("tua",))

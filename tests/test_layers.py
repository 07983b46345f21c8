import pytest

from sal.layers import even_layers, validate_layers


def test_even8_on_28_blocks_is_the_papers_choice():
    assert even_layers(28) == [0, 4, 8, 12, 16, 20, 24, 28]


@pytest.mark.parametrize("n_layers", [7, 24, 28, 30, 32, 48, 61])
def test_even_layers_spans_the_stack_with_gaps_differing_by_at_most_one(n_layers):
    pts = even_layers(n_layers)
    assert pts[0] == 0 and pts[-1] == n_layers and len(pts) == 8
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    assert min(gaps) >= 1 and max(gaps) - min(gaps) <= 1
    # Each point is the nearest block boundary to the ideal real-valued position.
    for i, p in enumerate(pts):
        assert abs(p - i * n_layers / 7) <= 0.5


def test_too_shallow_model_is_rejected_with_fix():
    with pytest.raises(ValueError, match="layers=custom"):
        even_layers(5)


def test_validate_layers_names_the_bad_index():
    with pytest.raises(ValueError, match=r"\[31\].*outside \[0, 28\]"):
        validate_layers([0, 4, 31], 28)
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_layers([4, 0], 28)
    assert validate_layers([0, 28], 28) == [0, 28]

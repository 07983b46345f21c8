"""The paper's hub sources, read from small fixtures in each source's real schema (no network):
NuminaMath-1.5 at its pinned revision, filtered by `source`; Open-Reasoner-Zero's own
[human, assistant] pairs; provenance recorded for the manifest."""

from pathlib import Path

import datasets
import fsspec
import pytest

import sal.data.sources as sources
from sal.config.data import DataConfig
from sal.data.corpus import select_corpus_questions

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture
def offline_hub(monkeypatch):
    """datasets.load_dataset and fsspec.open answer from the fixtures, and record the calls."""
    calls = []
    real_load, real_open = datasets.load_dataset, fsspec.open

    def load_dataset(path, *args, **kwargs):
        if path == sources.NUMINA_15:
            calls.append(("hub", path, kwargs.get("split"), kwargs.get("revision")))
            return datasets.Dataset.from_json(str(FIXTURES / "numina_1_5_train.jsonl"))
        return real_load(path, *args, **kwargs)

    def open_(url, *args, **kwargs):
        if url == sources.ORZ_URL:
            calls.append(("url", url))
            return real_open(str(FIXTURES / "orz_math_57k_collected.json"), *args, **kwargs)
        return real_open(url, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(fsspec, "open", open_)
    return calls


@pytest.mark.parametrize("name, kept", [("numina_aops", [0, 7]), ("numina_amc", [1]), ("numina_olympiad", [2, 5])])
def test_numina_subsets_read_the_pinned_revision_and_keep_their_source(offline_hub, name, kept):
    provenance = {}
    rows = sources.load_source(name, provenance)
    assert [int(r["question"].split()[1]) for r in rows] == kept  # "Problem <i> from <source>: ..."
    assert {r["source"] for r in rows} == {name} and all(r["type"] == r["level"] == "" for r in rows)
    assert offline_hub == [("hub", "AI-MO/NuminaMath-1.5", "train", "9a5aae8427cb65ac9a8bb3136ffb1d554b70c478")]
    assert provenance[name]["revision"] == sources.NUMINA_15_REVISION and len(provenance[name]["sha256"]) == 64


def test_open_reasoner_zero_pairs_give_the_human_turns(offline_hub):
    rows = sources.load_source("orz")
    assert [r["question"] for r in rows][:3] == ["Find the remainder when $2^{10}$ is divided by 7.",
                                                 "How many positive divisors does 36 have?", "Compute $\\dbinom{8}{3}$."]
    assert offline_hub == [("url", sources.ORZ_URL)]


def test_a_malformed_pair_is_refused_with_its_index():
    with pytest.raises(ValueError, match="item 1 has no human turn"):
        sources._orz_pairs([[{"from": "human", "value": "q"}], [{"from": "assistant", "value": "a"}]], "value")


def test_the_paper_sources_deduplicate_cap_and_count(offline_hub):
    counts = {}
    data = DataConfig(sources=["orz", "numina_aops", "numina_amc", "numina_olympiad", "gsm8k_test"], max_questions=50,
                      seed=3)
    rows = select_corpus_questions(data, counts)
    assert counts["orz"]["read"] == 4 and counts["orz"]["unique"] == 3  # one case/space variant
    assert [counts[n]["read"] for n in ("numina_aops", "numina_amc", "numina_olympiad")] == [2, 1, 2]
    assert counts["gsm8k_test"]["read"] == 1319 and sum(c["selected"] for c in counts.values()) == len(rows) == 50
    assert rows == select_corpus_questions(data)  # the cap is a seeded sample
    assert counts["orz"]["location"] == f"url:{sources.ORZ_URL}"

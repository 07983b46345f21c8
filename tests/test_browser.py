"""The run browser (sal/browser.py): the HTML writer on its own, and the pages in a real
headless Chromium (skipped, with the reason, where Chromium or playwright is missing;
.ci/run installs Debian's chromium so CI runs it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sal import browser

EVIL = '</script><script>window.pwned = 1</script> & "quoted" {{body}} <b>bold</b>'
"""An explanation a model could write: it must show as text and never end the data block."""

# A 1x1 PNG: evaluate's figures are copied beside the pages.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

FEATURES = [  # feature, explanation, summary_kind, decision, status, n_activations
    (0, 'Exact pattern: "mathbf"', "exact", "Yes", "ok", 40),
    (1, EVIL, "semantic", "Maybe", "ok", 35),
    (2, None, "cannot_tell", None, "ok", 31),
    (3, None, None, None, "dead", 0),
    (4, "Numbers after an equals sign", "semantic", "Probably", "ok", 50),
]
RULES = [  # p1, p2, q, n_premise, n_rule, prob, category (None: unjudged; "failed": judging failed)
    (0, -1, 4, 9, 8, 0.9, "Strict"),
    (0, 1, 4, 6, 4, 0.75, "Plausible"),
    (1, -1, 2, 8, 2, 0.3, "No"),
    (4, -1, 0, 7, 4, 0.55, None),
    (1, 4, 0, 4, 2, 0.6, None),
    (4, -1, 2, 5, 4, 0.8, None),
    (2, -1, 1, 5, 0, 0.1, "failed"),
]


def make_run(root: Path) -> Path:
    """A run directory as extract_rules.py and evaluate.py leave it, with known content."""
    from sal.crosscoder import Crosscoder

    run = root / "runs" / "tiny" / "default"
    for sub in ("features", "rules", "evaluate"):
        (run / sub).mkdir(parents=True)
    Crosscoder(n_layers=3, d_model=4, n_features=len(FEATURES)).save_pretrained(
        run / "crosscoder", extra_config={"layers": [0, 2, 5]})
    pd.DataFrame([{"feature": f, "n_activations": n, "n_documents": n // 2, "sufficient": n > 30,
                   "summary_kind": kind, "explanation": expl, "decision": dec,
                   "explainable": dec in ("Yes", "Probably", "Maybe"), "status": status, "error": None}
                  for f, expl, kind, dec, status, n in FEATURES]).to_parquet(run / "features" / "explanations.parquet")
    spans = [{"feature": 0, "rank": r, "activation": 5.0 - r, "doc": r, "position": 3,
              "text": "the matrix \\mathbf", "token": "mathbf", "layers": [0, 2, 5][r:]} for r in range(3)]
    spans += [{"feature": 4, "rank": 0, "activation": 2.5, "doc": 9, "position": 7, "text": "so x = 12", "token": "12",
               "layers": [2, 5]},
              {"feature": 1, "rank": 0, "activation": 1.5, "doc": 2, "position": 1, "text": "<img src=x>", "token": ">",
               "layers": None}]  # not recorded
    pd.DataFrame(spans).to_parquet(run / "features" / "top_spans.parquet")
    (run / "features" / "table3.json").write_text(json.dumps({
        "n_features": 5, "n_dead": 1, "dead_rate": 0.2, "n_judged": 4, "n_sufficient": 4, "min_activations": 30,
        "activation_unit": "documents", "explainable_rate": 0.75, "decision_shares": {"Yes": 0.25},
        "judge": "lexical", "verifier": "lexical"}))
    rules = pd.DataFrame([r[:6] for r in RULES], columns=["p1", "p2", "q", "n_premise", "n_rule", "prob"])
    rules.to_parquet(run / "rules" / "rules.parquet")
    pd.DataFrame({"feature": range(5), "n_samples_active": [3, 2, 1, 0, 4],
                  "mean_layer_count": [1.5, 1.0, 2.0, 0.0, 2.5]}).to_parquet(run / "rules" / "feature_counts.parquet")
    judged = [r for r in RULES if r[6] is not None]
    pd.DataFrame([{"p1": r[0], "p2": r[1], "q": r[2], "n_premise": r[3], "n_rule": r[4], "prob": r[5],
                   "category": None if r[6] == "failed" else r[6], "rationale": f"because <{r[6]}>",
                   "judge_status": "failed" if r[6] == "failed" else "ok", "judge_error": None}
                  for r in judged]).to_parquet(run / "evaluate" / "labelled_rules.parquet")
    (run / "evaluate" / "fig2_histograms.png").write_bytes(PNG)
    (run / "sal.json").write_text(json.dumps({
        "model": "tiny<model>", "init": "pretrained", "sal": 0.4321, "ci": [0.3, 0.5], "ci_level": 0.95,
        "p_value": 0.01, "null_mean": 0.05, "pairwise": {"S-P": 0.4}, "bins": 20,
        "counts": {"Strict": 1, "Plausible": 1, "No": 1}, "judge_label_counts": {"Strict": 1},
        "n_labelled": 3, "n_unlabelled": 1}))
    return run


def embedded_data(page: Path):
    text = page.read_text()
    match = re.search(r'<script type="application/json" id="sal-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


# --------------------------------------------------------------------------- no browser
def test_the_pages_embed_model_text_as_data_that_cannot_end_the_script_block(tmp_path):
    index = browser.write_browser(make_run(tmp_path))
    out = index.parent
    assert sorted(p.name for p in out.iterdir()) == ["features.html", "fig2_histograms.png", "index.html",
                                                     "rules.html"]
    features_html = (out / "features.html").read_text()
    # Two </script>: the data block's and the script's own; the explanation's is escaped.
    assert features_html.count("</script>") == 2 and "window.pwned" in features_html
    data = embedded_data(out / "features.html")
    by_id = {f["id"]: f for f in data["features"]}
    assert by_id[1]["expl"] == EVIL  # the JSON round-trips to the exact text
    assert by_id[1]["spans"] == [[1.5, "<img src=x", ">", None]]
    assert by_id[0]["spans"][0] == [5.0, "the matrix \\", "mathbf", [0, 2, 5]]  # the activating token split off
    assert [s[3] for s in by_id[0]["spans"]] == [[0, 2, 5], [2, 5], [5]] and by_id[4]["spans"][0][3] == [2, 5]
    assert [by_id[f]["level"] for f in range(5)] == ["Yes", "Maybe", "Cannot Tell", "dead", "Probably"]
    assert data["layers"] == [0, 2, 5] and len(by_id[0]["dec"]) == 3
    assert (by_id[4]["n_samples"], by_id[4]["mean_layers"]) == (4, 2.5)
    rules = embedded_data(out / "rules.html")
    assert {tuple(r[:3]): r[6] for r in rules["rules"]} == {
        r[:3]: r[6] or browser.UNJUDGED for r in RULES}
    assert rules["explanations"]["1"] == EVIL
    index_html = index.read_text()
    assert "tiny&lt;model&gt;" in index_html and "tiny<model>" not in index_html
    assert "0.4321 bits" in index_html and '<img src="fig2_histograms.png"' in index_html


def test_a_large_rule_table_keeps_every_judged_rule_and_the_most_probable_others(tmp_path):
    run = make_run(tmp_path)
    rows, n_total = browser.rule_records(run, max_rules=5)
    assert n_total == len(RULES) and len(rows) == 5 == len([r for r in RULES if r[6] is not None]) + 1
    kept = {tuple(r[:3]) for r in rows}
    assert {r[:3] for r in RULES if r[6] is not None} <= kept
    assert (4, -1, 2) in kept and not {(1, 4, 0), (4, -1, 0)} & kept  # the most probable unjudged rule stays


def test_a_run_without_evaluation_still_gets_pages(tmp_path):
    run = make_run(tmp_path)
    for p in (run / "sal.json", run / "evaluate" / "labelled_rules.parquet"):
        p.unlink()
    shutil.rmtree(run / "crosscoder")
    index = browser.write_browser(run)
    assert "not evaluated yet" in index.read_text()
    data = embedded_data(index.parent / "features.html")
    assert data["layers"] is None and all(f["dec"] is None for f in data["features"])
    assert {r[6] for r in embedded_data(index.parent / "rules.html")["rules"]} == {browser.UNJUDGED}


def old_format_run(root: Path) -> Path:
    """A run extracted before top_spans.parquet recorded the layers each span fired in."""
    run = make_run(root)
    path = run / "features" / "top_spans.parquet"
    pd.read_parquet(path).drop(columns="layers").to_parquet(path)
    return run


def test_top_spans_without_layers_still_give_the_spans(tmp_path):
    data = embedded_data(browser.write_browser(old_format_run(tmp_path)).parent / "features.html")
    by_id = {f["id"]: f for f in data["features"]}
    assert by_id[0]["spans"][0] == [5.0, "the matrix \\", "mathbf", None] and len(by_id[0]["spans"]) == 3


def test_a_run_without_sal_says_why(tmp_path):
    run = make_run(tmp_path)
    (run / "sal.json").write_text(json.dumps({"model": "tiny", "init": "random", "sal": None,
                                              "not_computable": "SAL needs two categories with <20> rules"}))
    text = browser.write_browser(run).read_text()
    assert "not computable" in text and "SAL needs two categories with &lt;20&gt; rules" in text


# --------------------------------------------------------------------------- in Chromium
def _chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); the browser test needs one")
    return path


@pytest.fixture
def page(tmp_path):
    """A headless Chromium page that records console errors and uncaught exceptions."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True)
        tab = chromium.new_page(viewport={"width": 1200, "height": 800})
        tab.errors = []
        tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.errors.append(str(e)))
        yield tab
        chromium.close()


def _visible(page, selector: str, attribute: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attribute}'))")


def test_the_pages_work_in_a_headless_browser(tmp_path, page):
    out = browser.write_browser(make_run(tmp_path)).parent
    page.goto((out / "index.html").as_uri())
    assert "0.4321 bits" in page.inner_text("main")
    assert page.eval_on_selector("img", "img => img.complete && img.naturalWidth") == 1
    page.screenshot(path=str(tmp_path / "index.png"))

    page.goto((out / "features.html").as_uri())
    assert len(_visible(page, ".feature", "id")) == 5
    page.fill("#search", "equals")
    page.wait_for_function("document.querySelectorAll('.feature').length === 1")
    assert _visible(page, ".feature", "id") == ["f4"]
    assert page.inner_text("#f4 mark") == "12"  # the activating token, highlighted
    assert page.inner_text("#f4 .spans .fired") == "L2 L5"  # the layers it fired in there
    page.fill("#search", "#1")
    page.wait_for_function("document.querySelector('.feature')?.id === 'f1'")
    assert page.inner_text("#f1 .expl") == EVIL  # shown as text, not run
    assert page.evaluate("window.pwned") is None
    page.fill("#search", "")
    page.select_option("#level", "Cannot Tell")
    assert _visible(page, ".feature", "id") == ["f2"]
    page.screenshot(path=str(tmp_path / "features.png"))

    page.goto((out / "rules.html").as_uri())
    assert page.inner_text("#count") == f"{len(RULES)} of {len(RULES)} rules"
    page.select_option("#category", "Plausible")
    assert _visible(page, "#rules tbody tr", "data-rule") == ["0,1,4"]
    page.select_option("#category", "")
    page.select_option("#premises", "1")
    page.fill("#prob-min", "0.5")
    page.fill("#prob-max", "0.95")
    page.wait_for_function("document.querySelectorAll('#rules tbody tr').length === 3")
    assert _visible(page, "#rules tbody tr", "data-rule") == ["0,-1,4", "4,-1,2", "4,-1,0"]  # most probable first
    page.select_option("#sort", "prob:asc")
    assert _visible(page, "#rules tbody tr", "data-rule") == ["4,-1,0", "4,-1,2", "0,-1,4"]
    page.select_option("#category", "judged")
    assert _visible(page, "#rules tbody tr", "data-rule") == ["0,-1,4"]
    page.screenshot(path=str(tmp_path / "rules.png"))

    page.click("#rules tbody tr a[href='features.html#f4']")  # the rule's conclusion
    page.wait_for_url(re.compile(r"features\.html#f4$"))
    page.wait_for_function("document.querySelectorAll('.feature').length === 1")
    assert _visible(page, ".feature", "id") == ["f4"] and page.input_value("#search") == "#4"
    page.goto((out / "features.html").as_uri())
    page.click("#f0 h3 a")  # a feature's own link shows it alone; back shows them all again
    page.wait_for_function("document.querySelectorAll('.feature').length === 1")
    page.go_back()
    page.wait_for_function("document.querySelectorAll('.feature').length === 5")
    assert page.errors == []
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in ("index", "features", "rules"))


def test_an_old_run_without_span_layers_renders_in_a_headless_browser(tmp_path, page):
    out = browser.write_browser(old_format_run(tmp_path)).parent
    page.goto((out / "features.html").as_uri())
    assert len(_visible(page, ".feature", "id")) == 5
    assert page.inner_text("#f4 mark") == "12" and page.query_selector(".spans .fired") is None
    assert page.errors == []

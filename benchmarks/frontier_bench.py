"""Sparsity/reconstruction frontier of the crosscoder on real SmolLM2-135M activations (CPU).

Three families are trained at an equal token budget (same steps, same tokens per step, same
seed, same dictionary size C) and evaluated on the same held-out tokens:

* ``relu-sum``:  ReLU crosscoder, ``mse_reduction=sum`` (squared error summed over the L
  layers and D dimensions), swept over the sparsity coefficient alpha;
* ``relu-mean``: ReLU crosscoder, ``mse_reduction=mean`` (the same error divided by L * D, the
  paper's reading; alpha is then worth L * D = 4608 times more), swept over alpha, always
  including the paper's 5e-3;
* ``topk``: BatchTopK crosscoder with AuxK (``topk_mode=batch``), swept over k. k counts
  (feature, layer) *pairs* per token (``TopKCrosscoder._select`` ranks the flattened
  ``[L, B, C]`` scores and keeps ``k * B`` of them per batch), not distinct features; at
  evaluation the running threshold learnt in training replaces the batch top-k, so a token's
  L0 varies around k.

Data. Documents are question + reference solution of the packaged offline sources
(``math_train`` and ``gsm8k_train`` of ``sal.data.sources``: MATH ``solution``, GSM8K
``answer``), truncated to 256 tokens, shuffled with the seed and taken until about
``--tokens`` valid tokens (the first 90% of those documents train, the last 10% are held out
and never trained on). No text is generated with the LLM. Activations of the 8 monitored
residual-stream points (``sal.layers.even_layers(30)`` = [0, 4, 9, 13, 17, 21, 26, 30]) come
from the project's activation cache (``sal.training.cache``, float32), built once and reused
by every run and every rerun.

Training path. By default every run goes through the project's real training code,
``sal.training.run.train_crosscoder`` (Lightning, ``optim.activation_cache``; AdamW lr 1e-3,
alpha warmed up linearly over the first 20% of steps, LR cooled down over the last 20%,
gradient clipping at 1, activation scales fitted on the first batch). If that call fails (it
is being changed concurrently), ``--trainer auto`` falls back to :func:`train_loop`, a plain
loop with the same semantics as ``sal.training.module.CrosscoderModule`` whose batches are
drawn uniformly from the cached training tokens. The path each run used is recorded in
``frontier.json`` and the table. Runs live under ``--work-dir`` (``runs/frontier_bench``); a
run whose export records a training config matching this benchmark's explicit settings
(:func:`crosscoder_spec`, :func:`optim_spec`) is reused, not retrained, so an interrupted
sweep resumes where it stopped and a grid can be extended at the cost of the new points.

Metrics, on the held-out tokens with the final exported dictionary, in normalised units
(``E ||x_l||^2 = D`` per layer, scales from training): ``nmse = sum ||x - x_hat||^2 /
sum ||x||^2``; ``fvu`` (the same over the variance around the held-out mean); ``L0 pairs`` =
active (feature, layer) pairs per token; ``L0 features`` = distinct active features per token
(a feature counts once if any of its layers fires: the paper's "active features"); ``dead`` =
fraction of the C features that fire on no held-out token at any layer.

Cost on 2 AVX2 cores: the one-off activation caches take ~16 min (the subject model runs at
~100-150 tokens/s in float32); each of the 17 default runs trains in ~100 s on idle cores and
took 100-400 s on the shared ones (TopK is the slowest: the batch-wide top-k over [L, B, C] and
AuxK). A rerun that finds every run done only evaluates (~3 min). ``--families`` and the
per-family grids (``--relu-sum``, ``--relu-mean``, ``--topk``) select subsets::

    .venv/bin/python benchmarks/frontier_bench.py                       # full sweep -> docs/
    .venv/bin/python benchmarks/frontier_bench.py --quick               # smoke test, ~2 min
    .venv/bin/python benchmarks/frontier_bench.py --families relu-mean --relu-mean 5e-3 1e-2

Outputs under ``--out``: ``frontier.png`` (nmse against distinct features per token, log x,
the paper's regime shaded), ``frontier.md`` (the table), ``frontier.json`` (raw results).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sal.config.crosscoder import CrosscoderConfig, OptimConfig  # noqa: E402
from sal.crosscoder import Crosscoder, ScaleAccumulator, build_crosscoder  # noqa: E402
from sal.layers import even_layers  # noqa: E402

# Imported now, not at the first run: sal.training and sal.config are being edited while the
# sweep runs, and a late import can pair this process's config classes with newer trainer
# code (seen: "'CrosscoderConfig' object has no attribute 'target_l0'").
try:
    from sal.training.run import train_crosscoder  # noqa: E402
    TRAIN_IMPORT_ERROR: str | None = None
except Exception as _exc:  # the fallback loop needs none of it
    train_crosscoder = None
    TRAIN_IMPORT_ERROR = f"{type(_exc).__name__}: {_exc}"
from sal.training.cache import ensure_activation_cache  # noqa: E402
from sal.training.schedules import lr_at, sparsity_coef_at  # noqa: E402

log = logging.getLogger("frontier_bench")

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2-135m"
SOURCES = ("math_train", "gsm8k_train")
SOLUTION_FIELDS = ("solution", "answer")
"""Reference-solution columns of the packaged files (MATH: solution, GSM8K: answer)."""
MAX_DOC_TOKENS = 256
HELDOUT_FRAC = 0.1
PAPER_NMSE = (0.65, 0.80)
"""The paper's reconstruction regime (Appendix C.1)."""
PAPER_FEATURES = (20, 30)
"""The paper's distinct active features per token ("about 20-30")."""
PAPER_ALPHA = 5e-3

DEFAULT_GRIDS: dict[str, list[float]] = {
    # sum-alpha a is mean-alpha a / (L * D) = a / 4608, so this grid overlaps relu-mean's
    # (1 ~ 2.2e-4, 256 ~ 5.6e-2); 5e-3 is the paper's alpha read with the summed error.
    "relu-sum": [5e-3, 1.0, 16.0, 64.0, 128.0, 256.0],
    "relu-mean": [2e-4, 1e-3, 5e-3, 1e-2, 3e-2, 5e-2, 0.1],
    "topk": [8, 32, 128, 512],
}
QUICK_GRIDS: dict[str, list[float]] = {"relu-sum": [16.0], "relu-mean": [5e-3], "topk": [16]}
FAMILIES = tuple(DEFAULT_GRIDS)
COLOURS = {"relu-sum": "#264653", "relu-mean": "#2a9d8f", "topk": "#e76f51"}


# ----------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Setting:
    """What every run shares: the equal-budget part of the comparison."""

    steps: int
    n_features: int
    batch_tokens: int
    tokens: int
    lr: float = 1e-3
    seed: int = 0
    dead_window_tokens: int = 16_384
    decoder_bias: str = "mean"
    """crosscoder.init_decoder_bias: mean (the default) | zero (the release before it)."""

    @property
    def token_budget(self) -> int:
        return self.steps * self.batch_tokens


def crosscoder_spec(family: str, value: float, s: Setting) -> dict:
    """Every crosscoder field the comparison depends on, set explicitly: the config classes'
    defaults are being changed concurrently, and a finished run is reused only if it matches
    this spec (see :func:`finished_export`)."""
    spec = dict(n_features=s.n_features, seed=s.seed, dead_window_tokens=s.dead_window_tokens, decoder_norm="l2",
                init_decoder_norm=0.1, normalise=True, init_decoder_bias=s.decoder_bias)
    if family == "topk":
        return dict(spec, arch="topk", k=int(value), topk_mode="batch", aux_k=512, aux_coef=1 / 32)
    return dict(spec, arch="relu", sparsity_coef=float(value), mse_reduction=family.split("-", 1)[1])


def optim_spec(s: Setting) -> dict:
    """Every optimisation field the comparison depends on (CrosscoderModule's recipe)."""
    # batch_tokens = batch_instances * tokens_per_instance; 128-token instances keep the
    # global batch a whole number of instances for any multiple of 128.
    if s.batch_tokens % 128:
        raise ValueError(f"--batch-tokens={s.batch_tokens}: use a multiple of 128.")
    return dict(lr=s.lr, betas=(0.9, 0.999), eps=6.25e-10, weight_decay=0.0, grad_clip=1.0, max_steps=s.steps,
                cooldown_frac=0.2, sparsity_warmup_frac=0.2, batch_instances=s.batch_tokens // 128,
                tokens_per_instance=128, max_tokens_per_instance=MAX_DOC_TOKENS, docs_per_forward=8,
                shuffle_buffer_tokens=max(8 * s.batch_tokens, 4096))


def crosscoder_config(family: str, value: float, s: Setting) -> CrosscoderConfig:
    return CrosscoderConfig(**crosscoder_spec(family, value, s))


def optim_config(s: Setting, cache_dir: Path) -> OptimConfig:
    return OptimConfig(**optim_spec(s), checkpoint_every_n_steps=s.steps, activation_cache=str(cache_dir),
                       cache_dtype="float32", cache_shard_tokens=16_384)


def value_label(family: str, value: float) -> str:
    return f"k={int(value)}" if family == "topk" else f"alpha={value:g}"


# ----------------------------------------------------------------------------- data
def _source_rows(name: str) -> list[dict]:
    """Rows of one packaged source with question and reference solution (``load_source``
    keeps only the question, so the JSONL is read directly from the same registry entry)."""
    from sal.data.sources import SOURCES as REGISTRY, math_data_dir

    src = REGISTRY[name]
    kind, _, where = src.location.partition(":")
    if kind != "package":
        raise ValueError(f"source {name!r} is not packaged offline")
    rows = []
    with open(math_data_dir() / where) as f:
        for line in f:
            r = json.loads(line)
            solution = next((r[k] for k in SOLUTION_FIELDS if r.get(k)), "")
            rows.append({"question": r[src.question_field], "solution": solution})
    return rows


def build_documents(tokenizer, n_tokens: int, seed: int) -> list[str]:
    """Seeded shuffle of question + solution documents, taken until ~n_tokens valid tokens."""
    docs = [f"{r['question']}\n\n{r['solution']}".strip() for name in SOURCES for r in _source_rows(name)]
    random.Random(seed).shuffle(docs)
    out, total = [], 0
    for start in range(0, len(docs), 512):
        chunk = docs[start:start + 512]
        lengths = [len(ids) for ids in tokenizer(chunk, truncation=True, max_length=MAX_DOC_TOKENS)["input_ids"]]
        for doc, n in zip(chunk, lengths):
            out.append(doc)
            total += max(n - 1, 0)  # valid_token_mask drops the first (attention-sink) position
            if total >= n_tokens:
                return out
    return out


def split_documents(docs: Sequence[str]) -> tuple[list[str], list[str]]:
    n_held = max(1, round(HELDOUT_FRAC * len(docs)))
    return list(docs[:-n_held]), list(docs[-n_held:])


def load_cache(cache_dir: Path) -> Tensor:
    """All activations ``[N, L, D]`` of one activation-cache directory."""
    from safetensors.torch import load_file

    index = json.loads((cache_dir / "index.json").read_text())
    return torch.cat([load_file(str(cache_dir / s["file"]))["acts"] for s in index["shards"]]).float()


def cached_activations(root: Path, model, tokenizer, texts: Sequence[str], layers: Sequence[int],
                       optim: OptimConfig) -> Path:
    return ensure_activation_cache(root, model, tokenizer, texts, layers, optim, model_name=MODEL_NAME)


# ----------------------------------------------------------------------------- training
BOOKKEEPING = {"activation_cache", "checkpoint_every_n_steps", "cache_shard_tokens", "cache_dtype"}
"""Optim fields that do not change what is trained."""


def run_dir_for(work_dir: Path, family: str, value: float, cc: CrosscoderConfig, optim: OptimConfig) -> Path:
    # A digest of the fields that differ from the config classes' defaults: a rerun with other
    # settings never resumes from a checkpoint of different ones, and fields added to the
    # classes since (they are being extended while sweeps run) do not orphan finished runs.
    chosen = {"cc": _non_default(cc), "optim": {k: v for k, v in _non_default(optim).items() if k not in BOOKKEEPING}}
    # Runs made before init_decoder_bias existed started b_dec at zero and keep their
    # directory; any other start is part of the digest whether or not it is the default.
    chosen["cc"].pop("init_decoder_bias", None)
    if cc.init_decoder_bias != "zero":
        chosen["cc"]["init_decoder_bias"] = cc.init_decoder_bias
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return work_dir / "runs" / f"{family}-{value:g}-C{cc.n_features}-S{optim.max_steps}-{digest}"


def _non_default(cfg) -> dict:
    defaults = type(cfg)()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(defaults, f.name)}


def _matches(saved: dict, spec: dict) -> bool:
    spec = json.loads(json.dumps(spec, default=str))  # tuples -> lists, as config.json has them
    return all(k in saved and saved[k] == v for k, v in spec.items())


def finished_export(run_dir: Path, cc_spec: dict, optim_spec_: dict,
                    paths: Sequence[str] = ("lightning", "loop")) -> tuple[Path, str] | None:
    """(export dir, training path) of a finished run in ``run_dir`` whose recorded training
    config matches the specs on every field they set, if any. Fields the specs leave out (the
    concurrently added ones, e.g. an inert target-L0 controller) are not compared."""
    for name, path in (("crosscoder", "lightning"), ("crosscoder-loop", "loop")):
        cfg_path = run_dir / name / "config.json"
        if path not in paths or not cfg_path.exists():
            continue
        cfg = json.loads(cfg_path.read_text())
        training = cfg.get("training") or {}
        if (cfg.get("complete") and int(cfg.get("global_step", 0)) >= optim_spec_["max_steps"]
                and _matches({"init_decoder_bias": "zero", **training.get("crosscoder", {})}, cc_spec)
                and _matches(training.get("optim", {}), optim_spec_)):
            return run_dir / name, path
    return None


def train_lightning(cc: CrosscoderConfig, optim: OptimConfig, run_dir: Path, model, tokenizer,
                    texts: Sequence[str], layers: Sequence[int]) -> Path:
    """The project's training path; returns the export directory."""
    if train_crosscoder is None:
        raise ImportError(TRAIN_IMPORT_ERROR)
    trainer = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "log_every_n_steps": 50,
               "enable_progress_bar": False}
    result = train_crosscoder(crosscoder=cc, optim=optim, trainer=trainer, model=model, tokenizer=tokenizer,
                              texts=texts, layers=layers, run_dir=run_dir, logger=None, model_name=MODEL_NAME)
    return Path(result.export_dir)


def train_loop(cc: CrosscoderConfig, optim: OptimConfig, run_dir: Path, train_NLD: Tensor) -> Path:
    """Fallback: ``CrosscoderModule``'s optimisation as a plain loop over uniformly sampled
    cached tokens (scales fitted on the first batch, AdamW, alpha warm-up, LR cool-down,
    gradient clipping, dead-latent counters for AuxK); returns the export directory."""
    export = run_dir / "crosscoder-loop"
    torch.manual_seed(cc.seed)
    n_layers, d_model = train_NLD.shape[1], train_NLD.shape[2]
    crosscoder = build_crosscoder(cc, n_layers, d_model, seed=cc.seed)
    opt = torch.optim.AdamW(crosscoder.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                            weight_decay=optim.weight_decay)
    gen = torch.Generator().manual_seed(cc.seed)
    since_fired_LC = torch.zeros(n_layers, cc.n_features, dtype=torch.long)
    for step in range(optim.max_steps):
        idx = torch.randint(0, train_NLD.shape[0], (optim.batch_tokens,), generator=gen)
        acts_BLD = train_NLD[idx]
        if cc.normalise and not bool(crosscoder.scales_fitted):
            acc = ScaleAccumulator(n_layers)
            acc.update(acts_BLD)
            crosscoder.set_activation_scales(acc.scales(d_model))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, optim.max_steps, optim.lr, optim.cooldown_frac)
        coef = 0.0 if cc.arch == "topk" else sparsity_coef_at(step, optim.max_steps, cc.sparsity_coef,
                                                               optim.sparsity_warmup_frac)
        out = crosscoder.loss(crosscoder.normalise(acts_BLD), coef,
                              dead_mask_LC=since_fired_LC >= cc.dead_window_tokens)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        if optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(crosscoder.parameters(), optim.grad_clip)
        opt.step()
        with torch.no_grad():
            fired_LC = (out.feats_BLC > 0).any(dim=0)
            since_fired_LC.add_(acts_BLD.shape[0]).masked_fill_(fired_LC, 0)
    training = {"crosscoder": dataclasses.asdict(cc), "optim": dataclasses.asdict(optim)}
    crosscoder.save_pretrained(export, {"training_path": "loop", "complete": True, "global_step": optim.max_steps,
                                        "training": training})
    return export


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(crosscoder: Crosscoder, acts_NLD: Tensor, chunk: int = 1024) -> dict[str, float]:
    """Held-out metrics of a trained dictionary, in normalised units (see module docstring)."""
    crosscoder.eval()
    return evaluate_selected(crosscoder, acts_NLD, chunk)


@torch.no_grad()
def evaluate_selected(crosscoder: Crosscoder, acts_NLD: Tensor, chunk: int) -> dict[str, float]:
    """``evaluate`` in whatever mode the crosscoder is in (TopK selects per chunk in train mode)."""
    n_tokens, n_layers, d_model = acts_NLD.shape
    err = sq = 0.0
    pairs = features = 0
    x_sum_LD = torch.zeros(n_layers, d_model, dtype=torch.float64)
    fired_C = torch.zeros(crosscoder.n_features, dtype=torch.bool)
    for start in range(0, n_tokens, chunk):
        x_BLD = crosscoder.normalise(acts_NLD[start:start + chunk].float())
        feats_BLC = crosscoder.encode(x_BLD)
        recon_BLD = crosscoder.decode(feats_BLC)
        err += (x_BLD - recon_BLD).double().pow(2).sum().item()
        sq += x_BLD.double().pow(2).sum().item()
        x_sum_LD += x_BLD.double().sum(dim=0)
        active_BLC = feats_BLC > 0
        active_BC = active_BLC.any(dim=1)
        pairs += int(active_BLC.sum())
        features += int(active_BC.sum())
        fired_C |= active_BC.any(dim=0)
    # sum ||x - mean||^2 = sum ||x||^2 - N ||mean||^2
    var = sq - (x_sum_LD.pow(2).sum() / n_tokens).item()
    return {"nmse": err / sq, "fvu": err / var, "l0_pairs": pairs / n_tokens, "l0_features": features / n_tokens,
            "dead_frac": 1.0 - fired_C.float().mean().item(), "heldout_tokens": n_tokens}


@torch.no_grad()
def evaluate_batch_topk(crosscoder: Crosscoder, acts_NLD: Tensor, batch_tokens: int) -> dict[str, float]:
    """TopK only: the same metrics with the training-time BatchTopK selection (exactly k pairs
    per token on average over each held-out batch) instead of the learnt inference threshold,
    which tells a miscalibrated threshold apart from a poor dictionary."""
    saved = crosscoder.threshold.clone()
    crosscoder.train()  # train mode selects top k*B per batch (and moves the EMA, restored below)
    try:
        batch = min(batch_tokens, acts_NLD.shape[0])
        n = (acts_NLD.shape[0] // batch) * batch
        return evaluate_selected(crosscoder, acts_NLD[:n], batch)
    finally:
        crosscoder.threshold.copy_(saved)
        crosscoder.eval()


def mean_only_nmse(results: Sequence[dict]) -> float:
    """nmse of predicting the held-out mean: nmse / fvu = sum ||x - mean||^2 / sum ||x||^2."""
    return results[0]["nmse"] / results[0]["fvu"] if results else float("nan")


def in_paper_regime(r: dict) -> bool:
    return PAPER_NMSE[0] <= r["nmse"] <= PAPER_NMSE[1] and PAPER_FEATURES[0] <= r["l0_features"] <= PAPER_FEATURES[1]


# ----------------------------------------------------------------------------- reporting
def machine_header() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; cores: {os.cpu_count()}; "
            f"torch threads: {torch.get_num_threads()}; load average (1/5/15 min): {load}")


def markdown_table(results: Sequence[dict]) -> str:
    lines = ["| family | alpha / k | nmse | fvu | L0 pairs | L0 features | dead frac | train s | path |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        mark = " **(paper regime)**" if in_paper_regime(r) else ""
        lines.append(f"| {r['family']} | {value_label(r['family'], r['value'])}{mark} | {r['nmse']:.3f} | "
                     f"{r['fvu']:.3f} | {r['l0_pairs']:.1f} | {r['l0_features']:.1f} | {r['dead_frac']:.3f} | "
                     f"{r['train_s']:.0f} | {r['path']} |")
    return "\n".join(lines)


def topk_batch_table(results: Sequence[dict]) -> str:
    rows = [r for r in results if "batchtopk_nmse" in r]
    if not rows:
        return ""
    lines = ["TopK evaluated with the training-time BatchTopK selection (top k*B pairs per held-out batch of "
             "B tokens) instead of the learnt inference threshold:", "",
             "| k | nmse | L0 pairs | L0 features | dead frac |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {int(r['value'])} | {r['batchtopk_nmse']:.3f} | {r['batchtopk_l0_pairs']:.1f} | "
                     f"{r['batchtopk_l0_features']:.1f} | {r['batchtopk_dead_frac']:.3f} |")
    return "\n".join(lines)


def write_markdown(path: Path, meta: dict, results: Sequence[dict]) -> None:
    s = meta["setting"]
    text = f"""# Crosscoder sparsity/reconstruction frontier (SmolLM2-135M, CPU)

Written by `benchmarks/frontier_bench.py` (see its docstring for the method).

- Command: `{meta['command']}`
- {meta['machine_start']} (at start)
- Load average at the end: {meta['loadavg_end']}
- Subject model {MODEL_NAME}, layers {meta['layers']}, d_model {meta['d_model']}
- Corpus: {meta['n_train_docs']} training documents ({meta['n_train_tokens']:,} valid tokens) and
  {meta['n_heldout_docs']} held-out documents ({meta['n_heldout_tokens']:,} tokens) of question + reference
  solution from {', '.join(SOURCES)}, truncated to {MAX_DOC_TOKENS} tokens
- Equal budget for every run: C = {s['n_features']}, {s['steps']} steps x {s['batch_tokens']} tokens =
  {s['steps'] * s['batch_tokens']:,} tokens, AdamW lr {s['lr']:g}, seed {s['seed']}
- TopK: BatchTopK; k counts (feature, layer) pairs per token (mean over the batch in training; the learnt
  threshold at evaluation)
- Metrics on the held-out tokens, normalised units; "L0 features" = distinct features per token (the
  paper's "active features"); "dead frac" = features silent on every held-out token
- Paper's regime: nmse {PAPER_NMSE[0]}-{PAPER_NMSE[1]} with {PAPER_FEATURES[0]}-{PAPER_FEATURES[1]} features; for
  scale, predicting every held-out token by the held-out mean gives nmse {mean_only_nmse(results):.3f} (fvu 1)
- Wall time of this invocation {meta['wall_s'] / 60:.1f} min (activation caches {meta['cache_s']:.0f} s); training
  time summed over the runs {sum(r['train_s'] for r in results) / 60:.1f} min ("train s": each run's first
  training, kept when a rerun finds it done)

{markdown_table(results)}

{topk_batch_table(results)}

![frontier](frontier.png)
"""
    path.write_text(text)


def plot_frontier(results: Sequence[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between(PAPER_FEATURES, PAPER_NMSE[0], PAPER_NMSE[1], color="#e9c46a", alpha=0.45,
                    label="paper's regime", zorder=0)
    for family in FAMILIES:
        rows = sorted((r for r in results if r["family"] == family), key=lambda r: r["l0_features"])
        if not rows:
            continue
        xs, ys = [r["l0_features"] for r in rows], [r["nmse"] for r in rows]
        label = f"{family} (inference threshold)" if family == "topk" else family
        ax.plot(xs, ys, "o-", color=COLOURS[family], label=label)
        for r in rows:
            ax.annotate(value_label(family, r["value"]).split("=")[1], (r["l0_features"], r["nmse"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color=COLOURS[family])
        if family == "relu-mean":
            paper = [r for r in rows if r["value"] == PAPER_ALPHA]
            if paper:
                ax.plot([paper[0]["l0_features"]], [paper[0]["nmse"]], "*", ms=14, mfc="none",
                        color=COLOURS[family], label=f"relu-mean, paper's alpha {PAPER_ALPHA:g}")
        if family == "topk" and all("batchtopk_nmse" in r for r in rows):
            rows_b = sorted(rows, key=lambda r: r["batchtopk_l0_features"])
            ax.plot([r["batchtopk_l0_features"] for r in rows_b], [r["batchtopk_nmse"] for r in rows_b], "o--",
                    mfc="none", color=COLOURS[family], label="topk (BatchTopK selection, as in training)")
    if results:
        mean_only = mean_only_nmse(results)
        ax.axhline(mean_only, color="grey", lw=0.8, ls=":", label=f"held-out mean alone (fvu = 1): {mean_only:.2f}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("distinct active features per token (held out)")
    ax.set_ylabel("nmse (held out, normalised units)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the sweep
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=256, help="optimiser steps per run")
    p.add_argument("--n-features", type=int, default=1024, help="dictionary size C")
    p.add_argument("--batch-tokens", type=int, default=512, help="tokens per step (multiple of 128)")
    p.add_argument("--tokens", type=int, default=100_000, help="valid tokens of documents (train + held out)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder-bias", choices=("mean", "zero"), default="mean",
                   help="crosscoder.init_decoder_bias (zero: the release the README's table was measured on)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    for family in FAMILIES:
        p.add_argument(f"--{family}", type=float, nargs="+", default=None, metavar="V",
                       help=f"grid of {'k' if family == 'topk' else 'alpha'} (default {DEFAULT_GRIDS[family]})")
    p.add_argument("--trainer", choices=("auto", "lightning", "loop"), default="auto",
                   help="auto: train_crosscoder, falling back to the plain loop if it fails")
    p.add_argument("--out", type=Path, default=None, help="output folder (default docs/; --quick: <work-dir>/quick)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "frontier_bench",
                   help="activation caches and training runs")
    p.add_argument("--quick", action="store_true", help="tiny smoke test: 20 steps, C=128, ~3K tokens")
    return p.parse_args(argv)


def grids(args: argparse.Namespace) -> list[tuple[str, float]]:
    base = QUICK_GRIDS if args.quick else DEFAULT_GRIDS
    jobs = []
    for family in args.families:
        chosen = getattr(args, family.replace("-", "_"))
        jobs.extend((family, float(v)) for v in (chosen if chosen is not None else base[family]))
    return jobs


def recorded_train_seconds(run_dir: Path, path: str, elapsed: float) -> float:
    """Training time of the run: measured now, or the first measurement when this call found
    the run already trained (a no-op rerun would otherwise report ~0 s)."""
    record = run_dir / f"bench_train_seconds_{path}.json"
    if record.exists():
        return float(json.loads(record.read_text())["train_s"])
    record.write_text(json.dumps({"train_s": elapsed}) + "\n")
    return elapsed


def run_one(family: str, value: float, s: Setting, ctx: dict, trainer: str) -> dict:
    cc, optim = crosscoder_config(family, value, s), optim_config(s, ctx["cache_root"])
    run_dir = run_dir_for(ctx["work_dir"], family, value, cc, optim)
    t0 = time.perf_counter()
    path = "lightning"
    export: Path | None = None
    allowed = {"auto": ("lightning", "loop"), "lightning": ("lightning",), "loop": ("loop",)}[trainer]
    done = finished_export(run_dir, crosscoder_spec(family, value, s), optim_spec(s), allowed)
    if done is not None:
        export, path = done
    elif trainer in ("auto", "lightning") and not ctx.get("lightning_broken"):
        try:
            export = train_lightning(cc, optim, run_dir, ctx["model"], ctx["tokenizer"], ctx["train_docs"],
                                     ctx["layers"])
        except Exception as exc:
            if trainer == "lightning":
                raise
            log.warning("train_crosscoder failed (%s: %s); using the plain loop from now on.", type(exc).__name__, exc)
            ctx["lightning_broken"] = f"{type(exc).__name__}: {exc}"
    if export is None:
        path = "loop"
        export = train_loop(cc, optim, run_dir, ctx["train_acts"]())
    train_s = recorded_train_seconds(run_dir, path, time.perf_counter() - t0)
    crosscoder = Crosscoder.from_pretrained(export)
    metrics = evaluate(crosscoder, ctx["heldout_NLD"])
    if family == "topk":
        batch = evaluate_batch_topk(crosscoder, ctx["heldout_NLD"], s.batch_tokens)
        metrics.update({f"batchtopk_{k}": v for k, v in batch.items() if k != "heldout_tokens"})
    return {"family": family, "value": value, "label": value_label(family, value), "path": path,
            "train_s": train_s, "run_dir": str(run_dir), **metrics}


def prepare(args: argparse.Namespace, s: Setting) -> dict:
    """Subject model, documents, activation caches (train for training, held out for eval)."""
    from sal.models import load_subject_model, named_model_config

    model_cfg = named_model_config(MODEL_NAME)
    layers = even_layers(model_cfg.n_layers, 8)
    model, tokenizer = load_subject_model(model_cfg)
    docs = build_documents(tokenizer, s.tokens, s.seed)
    train_docs, heldout_docs = split_documents(docs)
    cache_root = args.work_dir / "activations"
    optim = optim_config(s, cache_root)
    t0 = time.perf_counter()
    train_cache = cached_activations(cache_root, model, tokenizer, train_docs, layers, optim)
    heldout_cache = cached_activations(cache_root, model, tokenizer, heldout_docs, layers, optim)
    cache_s = time.perf_counter() - t0
    heldout_NLD = load_cache(heldout_cache)
    train_tokens = json.loads((train_cache / "index.json").read_text())["n_tokens"]
    memo: dict[str, Tensor] = {}

    def train_acts() -> Tensor:  # only the fallback loop holds the training tokens in memory
        if "acts" not in memo:
            memo["acts"] = load_cache(train_cache)
        return memo["acts"]

    return {"model": model, "tokenizer": tokenizer, "layers": layers, "d_model": model_cfg.d_model,
            "train_docs": train_docs, "heldout_docs": heldout_docs, "heldout_NLD": heldout_NLD,
            "train_acts": train_acts, "n_train_tokens": train_tokens, "cache_root": cache_root,
            "work_dir": args.work_dir, "cache_s": cache_s}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # per-run banners drown the table
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.quick:
        args.steps, args.n_features, args.tokens = min(args.steps, 20), min(args.n_features, 128), min(args.tokens, 3000)
        args.work_dir = args.work_dir / "quick"
    out = args.out or (args.work_dir if args.quick else ROOT / "docs")
    s = Setting(steps=args.steps, n_features=args.n_features, batch_tokens=args.batch_tokens, tokens=args.tokens,
                lr=args.lr, seed=args.seed, decoder_bias=args.decoder_bias)
    command = " ".join([".venv/bin/python", "benchmarks/frontier_bench.py", *(argv if argv is not None else sys.argv[1:])])
    header = machine_header()
    print(header, flush=True)
    jobs = grids(args)
    print(f"{len(jobs)} runs: C={s.n_features}, {s.steps} steps x {s.batch_tokens} tokens = {s.token_budget:,} "
          f"tokens each, trainer={args.trainer}", flush=True)

    t_start = time.perf_counter()
    ctx = prepare(args, s)
    print(f"documents: {len(ctx['train_docs'])} train ({ctx['n_train_tokens']:,} tokens), "
          f"{len(ctx['heldout_docs'])} held out ({ctx['heldout_NLD'].shape[0]:,} tokens); "
          f"layers {ctx['layers']}; caches ready after {ctx['cache_s']:.0f} s", flush=True)
    results = []
    for i, (family, value) in enumerate(jobs, 1):
        r = run_one(family, value, s, ctx, args.trainer)
        results.append(r)
        print(f"[{i}/{len(jobs)}] {family} {r['label']}: nmse {r['nmse']:.3f}, L0 pairs {r['l0_pairs']:.1f}, "
              f"L0 features {r['l0_features']:.1f}, dead {r['dead_frac']:.3f} ({r['path']}, {r['train_s']:.0f} s)",
              flush=True)

    wall_s = time.perf_counter() - t_start
    meta = {"command": command, "machine_start": header,
            "loadavg_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "layers": ctx["layers"],
            "d_model": ctx["d_model"], "setting": dataclasses.asdict(s), "n_train_docs": len(ctx["train_docs"]),
            "n_heldout_docs": len(ctx["heldout_docs"]), "n_train_tokens": ctx["n_train_tokens"],
            "n_heldout_tokens": int(ctx["heldout_NLD"].shape[0]), "wall_s": wall_s, "cache_s": ctx["cache_s"],
            "lightning_error": ctx.get("lightning_broken"), "topk_mode": "batch", "topk_k_counts": "pairs",
            "paper_regime": {"nmse": PAPER_NMSE, "features": PAPER_FEATURES}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    write_markdown(out / "frontier.md", meta, results)
    title = (f"SmolLM2-135M, 8 layers, C={s.n_features}, {s.steps} steps x {s.batch_tokens} tokens "
             f"(held-out {meta['n_heldout_tokens']:,} tokens)")
    plot_frontier(results, out / "frontier.png", title)
    print()
    print(header)
    print(markdown_table(results))
    print()
    print(topk_batch_table(results))
    print(f"\nwall time {wall_s / 60:.1f} min; wrote {out / 'frontier.png'}, {out / 'frontier.md'}, "
          f"{out / 'frontier.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

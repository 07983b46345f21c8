"""How a finished training reads: its final metrics in one line, and whether the dictionary is
in the paper's regime. Kept apart from sal.training.run so that printing a summary does not
import Lightning."""

from __future__ import annotations


PAPER_NMSE = (0.65, 0.80)
"""The paper's reconstruction regime (Appendix C.1)."""
PAPER_FEATURES = (20, 30)
"""The paper's distinct active features per token ("about 20-30")."""


def format_summary(summary: dict) -> str:
    if not summary:
        return "no training steps were run"
    parts = [f"step {int(summary.get('last_step', -1)) + 1}",
             f"nmse {summary['nmse']:.4f}", f"fvu {summary['fvu']:.4f}",
             f"L0 {summary['l0']:.1f} (feature, layer) pairs"]
    if "l0_features" in summary:
        parts.append(f"{summary['l0_features']:.1f} distinct features per token")
    parts.append(f"dead {100 * summary['dead_frac']:.2f}%")
    if "first_fvu" in summary:
        parts.append(f"(fvu at step {int(summary['first_step'])}: {summary['first_fvu']:.4f})")
    return ", ".join(parts)


def regime_verdict(summary: dict) -> str:
    """Whether the dictionary is in the paper's regime (nmse 0.65-0.80, about 20-30 distinct
    active features per token; "about" read as 25% either side), and the knob to turn."""
    if not summary or "l0_features" not in summary:
        return "no verdict: no training metrics"
    nmse, feats = summary["nmse"], summary["l0_features"]
    lo, hi = PAPER_FEATURES[0] * 0.75, PAPER_FEATURES[1] * 1.25
    where = f"nmse {nmse:.2f}, {feats:.1f} distinct features per token; paper: nmse 0.65-0.80, 20-30 features"
    if lo <= feats <= hi:
        if PAPER_NMSE[0] <= nmse <= PAPER_NMSE[1]:
            return f"in the paper's regime ({where})"
        return (f"at the paper's sparsity but not its reconstruction ({where}): at a given L0, nmse depends on the "
                f"model, the dictionary size and the training length, not on a sparsity knob")
    if feats > hi:
        return (f"denser than the paper's regime ({where}): set crosscoder.target_l0=25, or raise the sparsity "
                f"coefficient (sparsity=...; under crosscoder.mse_reduction=sum the paper's values are far too weak)")
    return (f"sparser than the paper's regime ({where}): set crosscoder.target_l0=25, or lower the sparsity "
            f"coefficient (sparsity=...)")

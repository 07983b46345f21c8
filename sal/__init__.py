"""sal: the Soundness-Aware Level of a pre-trained LLM.

Crosscoder features -> Horn-clause rules -> LLM-judged soundness -> SAL (Jensen-Shannon
divergence, bits) -> prediction of post-RL error. See README.md for the pipeline.
"""

__version__ = "0.1.0"

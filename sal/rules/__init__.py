"""Horn-clause rule extraction (Section 2.3, Appendix D).

activations [tokens, layers, C] --aggregate--> layer counts [n_samples, C] --count--> rules
(p1, p2, q, n_premise, n_rule, prob), exactly, sparsely, and shardable over Fabric ranks.
"""

from sal.rules.aggregate import (
    AGGREGATIONS,
    LayerCountBuilder,
    SparseLayerCounts,
    aggregate_batch,
    aggregate_sample,
    stack_layer_counts,
)
from sal.rules.count import count_rules
from sal.rules.numpy_engine import count_conclusions, count_premises
from sal.rules.options import CountOptions
from sal.rules.outputs import feature_counts_table, summarize_rules, write_rules_outputs
from sal.rules.rule_counts import PremiseCounts, RuleCounts, rules_table
from sal.rules.shard import (
    count_shard_premises,
    count_shard_rules,
    merge_shards,
    run_sharded,
    shard_path,
    shard_range,
)
from sal.rules.table import RULE_COLUMNS

__all__ = [
    "AGGREGATIONS",
    "CountOptions",
    "LayerCountBuilder",
    "PremiseCounts",
    "RULE_COLUMNS",
    "RuleCounts",
    "SparseLayerCounts",
    "aggregate_batch",
    "aggregate_sample",
    "count_conclusions",
    "count_premises",
    "count_rules",
    "count_shard_premises",
    "count_shard_rules",
    "feature_counts_table",
    "merge_shards",
    "rules_table",
    "run_sharded",
    "shard_path",
    "shard_range",
    "stack_layer_counts",
    "summarize_rules",
    "write_rules_outputs",
]

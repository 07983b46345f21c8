"""Run sharded rule counting under Lightning Fabric (launched by test_rules_shard.py).

usage: python fabric_rules_script.py LAYER_COUNTS.npz OUT_DIR NUM_PROCESSES MIN_PREMISE_COUNT
Fabric's DDP launcher re-runs this script once per extra rank; rank 0 writes merged.parquet.
"""

import os
import sys

import scipy.sparse as sp

from sal.rules import run_sharded

if __name__ == "__main__":
    data_path, out_dir, num_processes, min_premise_count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    layer_counts = sp.load_npz(data_path)
    rules = run_sharded(layer_counts, out_dir, num_processes, min_premise_count=min_premise_count, min_rule_count=1, beta=0.5)
    if rules is not None:
        rules.to_parquet(os.path.join(out_dir, "merged.parquet"))
        print(f"rank0 merged {len(rules)} rules")

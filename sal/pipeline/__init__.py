"""The three stages behind train.py, extract_rules.py and evaluate.py."""

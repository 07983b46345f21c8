"""The math corpus (questions + the subject model's own 'think' responses) and the rule set."""

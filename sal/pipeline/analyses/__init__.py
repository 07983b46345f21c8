"""evaluate.py's analyses, one module each, chosen by ``analysis=<name>`` (conf/analysis/):
single, compare, robustness, validate, planted and power. judged_sample.py is what they share:
a run's judged sample read as SAL's input, and ΔSAL against the null twin."""

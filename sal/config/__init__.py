"""Typed configuration: dataclass schemas (one module per concern) registered with Hydra.

Import ``sal.config.schema`` for the top-level schema; the per-concern modules import
nothing heavy, so building a config never loads torch models.
"""

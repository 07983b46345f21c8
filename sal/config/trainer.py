"""Schema for the Lightning Trainer that trains the crosscoder (presets: cpu, gpu, ddp_cpu,
ddp_8xa100)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from sal.config.choices import Accelerator, MatmulPrecision, coerce_choices

# Not an enum: OmegaConf matches enum members by name, and "32-true" is no identifier.
_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. Multi-node runs need nothing extra: Lightning detects
    SLURM / TorchElastic / MPI cluster environments and reads ranks from them."""

    accelerator: Accelerator = Accelerator.cpu
    """cpu | gpu | cuda | auto."""
    devices: Union[int, str] = 1
    """Processes (GPUs) per node; "auto" uses every visible device."""
    num_nodes: int = 1
    """Number of nodes (multi-node DDP through Lightning's cluster environments)."""
    strategy: str = "auto"
    """auto | ddp | ddp_spawn | ... (ddp uses gloo on CPU, nccl on GPU)."""
    precision: str = "32-true"
    """auto (bf16-mixed on a GPU, 32-true on CPU) | 32-true (CPU default) | bf16-mixed (GPU default: bf16 matmuls, fp32 weights and
    optimiser; also ~2x faster on CPUs with AVX512-BF16/AMX) | bf16-true | 16-mixed (GPU)."""
    log_every_n_steps: int = 1
    """Logging cadence; 1 logs every step, as the metric list promises."""
    enable_progress_bar: bool = True
    """Show Lightning's tqdm progress bar."""
    deterministic: bool = False
    """torch deterministic algorithms (slower on GPU)."""
    matmul_precision: MatmulPrecision = MatmulPrecision.high
    """torch.set_float32_matmul_precision on GPU: highest | high (TF32) | medium."""
    device_memory_gib: Optional[float] = None
    """Memory of one device for the training plan; None reads the visible GPU (or, on CPU,
    this host's RAM). Presets for GPUs that are not visible at planning time set it."""
    device_peak_tflops: Optional[float] = None
    """Dense peak of one device in the training precision (A100 bf16: 312), for the plan's
    time-per-step estimate; None leaves the estimate out."""
    assumed_mfu: float = 0.4
    """Model-FLOPs utilisation assumed by the plan's time-per-step estimate."""

    def __post_init__(self) -> None:
        coerce_choices(self, "trainer")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"trainer.precision={self.precision!r}: choose one of {', '.join(_PRECISIONS)}.")
        self.check_precision_fits()
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"trainer.devices={self.devices}: must be >= 1 or 'auto'.")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"trainer.devices={self.devices!r}: an integer or 'auto'.")
        if self.num_nodes < 1:
            raise ValueError(f"trainer.num_nodes={self.num_nodes}: must be >= 1.")
        if self.log_every_n_steps < 1:
            raise ValueError(f"trainer.log_every_n_steps={self.log_every_n_steps}: must be >= 1.")
        if self.device_memory_gib is not None and self.device_memory_gib <= 0:
            raise ValueError(f"trainer.device_memory_gib={self.device_memory_gib}: must be > 0 or null.")
        if self.device_peak_tflops is not None and self.device_peak_tflops <= 0:
            raise ValueError(f"trainer.device_peak_tflops={self.device_peak_tflops}: must be > 0 or null.")
        if not 0 < self.assumed_mfu <= 1:
            raise ValueError(f"trainer.assumed_mfu={self.assumed_mfu}: must be in (0, 1].")

    def check_precision_fits(self) -> None:
        """At construction, and again once ``auto`` has become a device (schema.resolve_auto_trainer)."""
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise ValueError("trainer.precision=16-mixed needs a GPU: on CPU use 32-true, or bf16-mixed on CPUs "
                             "with native bf16 matmuls (AVX512-BF16 / AMX).")

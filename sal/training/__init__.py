"""Crosscoder training: schedules, the LightningModule, the activation stream and the run."""

from sal.training.schedules import lr_at, sparsity_coef_at

__all__ = ["lr_at", "sparsity_coef_at", "train_crosscoder", "TrainResult", "CrosscoderModule",
           "ActivationDataModule", "ActivationStream"]


def __getattr__(name):  # lazy: importing the schedules should not import Lightning
    if name in ("train_crosscoder", "TrainResult"):
        from sal.training import run

        return getattr(run, name)
    if name == "CrosscoderModule":
        from sal.training.module import CrosscoderModule

        return CrosscoderModule
    if name == "ActivationDataModule":
        from sal.training.data import ActivationDataModule

        return ActivationDataModule
    if name == "ActivationStream":
        from sal.training.stream import ActivationStream

        return ActivationStream
    raise AttributeError(name)

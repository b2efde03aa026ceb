"""Everything that touches PyTorch: the tabular network, the training loop and the ONNX export.

No other part of the trainer imports torch; they hand numpy arrays in and get numpy arrays,
ONNX bytes and plain results out (STYLE H11).
"""

from trainer.training.export import export_onnx
from trainer.training.fit import FitConfig, FitResult, fit, predict

__all__ = ["FitConfig", "FitResult", "export_onnx", "fit", "predict"]

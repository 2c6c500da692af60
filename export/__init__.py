"""Exporting frozen deblurring networks (ONNX, TensorRT, Torch-TensorRT, TorchScript)."""

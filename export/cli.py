"""`reblur-export`: freeze a deblurring network to ONNX, TensorRT, Torch-TensorRT or TorchScript."""

from reblur_deploy.cli.common import placeholder

main = placeholder("reblur-export", "export to ONNX / TensorRT / Torch-TensorRT / TorchScript")

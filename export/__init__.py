"""Exporting frozen deblurring networks, each file verified against PyTorch before it is kept.

onnx.py (ONNX, fp32/fp16), tensorrt.py (TensorRT engines), torch_trt.py (Torch-TensorRT),
torchscript.py (TorchScript and torch.export ExportedProgram), verify.py (parity checks),
cli.py (``reblur-export``). The graphs themselves come from ``reblur_deploy.backends.graphs``,
which the runtime backends share; nothing in ``reblur_deploy`` imports this package.
"""

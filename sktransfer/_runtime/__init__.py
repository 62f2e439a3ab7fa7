"""What runs a network: ``layers`` cuts it at named layers and pools their
outputs; ``fusion`` fuses its pointwise operations into oneDNN kernels
(checked against eager PyTorch); ``int8`` quantizes it for ONNX Runtime's
int8 kernels, with the policy deciding when that pays.
"""

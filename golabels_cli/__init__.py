"""golabels: adversarial domain adaptation with Go-labels, from image folders to ONNX."""

__version__ = "0.1.0"

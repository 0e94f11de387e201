"""finalbn-field: run a finalbn model (models/model.onnx + model.json) on images with onnxruntime."""

__version__ = "0.1.0"

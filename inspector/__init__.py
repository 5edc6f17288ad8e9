"""inspector: train anomaly detectors on good parts, export them to ONNX, run them next to the line."""

__version__ = "0.1.0"

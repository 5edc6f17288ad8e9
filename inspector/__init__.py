"""inspector: train anomaly detectors on good parts, export them to ONNX, run them next to the line.

The Python API (torch-free) is imported on first use, so ``import inspector`` stays light:

    from inspector import load_model
    model = load_model("model.onnx")
    result = model.score("part.png")          # .score, .raw_score, .anomalous, .anomaly_map, .regions
    for result in model.stream("line.mp4"):   # a camera index, video, stream URL or folder
        ...

See :mod:`inspector.api`.
"""

__version__ = "0.1.0"

__all__ = ["Model", "Result", "__version__", "load_model"]


def __getattr__(name: str):
    # PEP 562: the API's modules (onnxruntime, OpenCV) load when a name is first used, not at import.
    if name in ("load_model", "Model"):
        from inspector import api

        return getattr(api, name)
    if name == "Result":
        from inspector.runtime.result import Result

        return Result
    raise AttributeError(f"module 'inspector' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "Model", "Result", "load_model"])

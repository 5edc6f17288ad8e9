"""The torch-free runtime: exported models in onnxruntime, images and video through OpenCV.

Imports numpy, OpenCV, onnxruntime and ``inspector`` only, so an edge box needs the base install alone.

- ``session``: load ``model.onnx``, validate its metadata, choose the execution provider.
- ``scoring``: images → normalised scores, labels, anomaly maps and defect regions.
- ``overlay``: heatmap, contours and badge drawn on the original image.
- ``result``: one scored image or frame and its record (a report line of ``inspect``, an event of ``watch``).
- ``folder`` and ``report``: ``inspector inspect``, pipelined, with a crash-safe CSV/JSONL report;
  ``html_report``: its ``report.html``, the results at a glance in one offline page.
- ``evaluate`` and ``calibrate``: ``inspector eval MODEL.onnx`` and ``inspector calibrate``, an exported
  model measured or recalibrated on labelled folders.
- ``sources`` and ``watch``: ``inspector watch`` on cameras, videos, streams and folders.
- ``bench``: model-only versus end-to-end throughput.

``inspector.api`` (``from inspector import load_model``) is the documented Python API on top of these.
"""

# Named here, in the package module that imports nothing, so that the CLI can offer them without loading
# onnxruntime and OpenCV.
#: ``--save`` of ``inspect``, ``watch`` and ``bench``: which heatmap overlays are written to OUT/overlays/.
SAVE_CHOICES = ("all", "anomalous", "none")

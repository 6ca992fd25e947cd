"""dinocache: distill a DINOv3 teacher into a YOLO OBB student from a Zarr feature cache."""

__version__ = "0.1.0"

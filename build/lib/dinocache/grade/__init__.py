"""Geometric evaluation of OBB checkpoints: the grade, eval overlays, DINO feature viz and run logging."""

"""Dataset tools (inspect, validate, convert, tile, split) and offline OBB augmentation."""

"""The teacher: loading (from_pretrained), freezing, fingerprints, tiny random teachers."""

"""Shared helpers at the bottom floor: config plumbing, dataset listing, files, memory, devices."""

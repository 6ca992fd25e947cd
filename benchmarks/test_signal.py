"""Distillation-gain benchmark: none / cache / online / cache-off / cache-shuffled / cache-flips over
seeds with the knowledgeable demo teacher, scored on a separate held-out set. `pytest benchmarks/ --benchmark -k
signal` (6 modes x 3 seeds x 48 epochs: about 35 minutes on a 2-core CPU; `--bench-quick`: 4 modes x 1 seed x 2
epochs, plumbing only), and the pretraining benchmark `signal.pretrain` (`-k signal_pretrain`)."""

from __future__ import annotations

import pytest

from benchmarks import signal_ab


def test_signal_gain(tmp_path_factory: pytest.TempPathFactory, quick: bool, results) -> None:
    work = tmp_path_factory.mktemp("signal")
    doc = signal_ab.run(work, quick)
    signal_ab.report(doc, results, work)
    assert {r["mode"] for r in doc["summary"]} == set(signal_ab.settings(quick)["modes"])


def test_signal_pretrain(tmp_path_factory: pytest.TempPathFactory, quick: bool, results) -> None:
    """signal.pretrain (benchmarks/signal_pretrain.py): pretraining on unlabeled images from the cache (teacher,
    oracle, random, shuffled, online) then the same fine-tuning on few labels, against scratch over seeds.
    `--bench-quick`: every arm, one seed, a few images and epochs (plumbing only)."""
    from benchmarks import signal_pretrain

    work = tmp_path_factory.mktemp("signal_pretrain")
    doc = signal_pretrain.run(work, quick)
    signal_pretrain.report(doc, results, work)
    assert set(doc["runs"]) == set(signal_pretrain.settings(quick)["arms"])
    assert all(len(rs) == signal_pretrain.settings(quick)["seeds"] for rs in doc["runs"].values())

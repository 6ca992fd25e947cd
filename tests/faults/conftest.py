"""The fault-injection suite: damage catalogue, bad-input catalogue per command, SIGKILL resume of training.

Every case goes through `Faults.run`, which calls a command's real `main(argv)` in-process and classifies
what a user would see: `clear` (non-zero exit, an `error:`/`verify: FAILED` message naming what it must
name), `vague` (non-zero exit, but the message lacks the file/key it must name), `traceback` (an exception
escaped `main`) or `silent` (exit 0). The test then asserts `clear`. Kills survived are recorded too.

At the end of the session the tally is written as JSON to $DINOCACHE_FAULTS_SUMMARY when set (the README's
Reliability figures come from that file: `just faults`), and always printed in the terminal summary.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IMGSZ = 128
OUTCOMES = ("clear", "vague", "traceback", "silent")


@dataclass
class Tally:
    cases: list[dict] = field(default_factory=list)
    kills: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        by_cmd: dict[str, Counter] = {}
        for c in self.cases:
            by_cmd.setdefault(c["command"], Counter())[c["outcome"]] += 1
        total = Counter(c["outcome"] for c in self.cases)
        secret = [c for c in self.cases if "secret_leaked" in c]
        intact = [c for c in self.cases if "data_lost" in c]
        return {
            "bad_inputs_tried": len(self.cases),
            **{o: total.get(o, 0) for o in OUTCOMES},
            # cases that carried a credential, and those whose output (stdout, stderr, traceback) showed it
            "secrets_checked": len(secret),
            "secrets_leaked": sum(1 for c in secret if c["secret_leaked"]),
            # cases whose files were checked after the refusal (nothing half-written, earlier results kept)
            "data_checked": len(intact),
            "data_lost": sum(1 for c in intact if c["data_lost"]),
            "by_command": {k: {o: v.get(o, 0) for o in OUTCOMES} for k, v in sorted(by_cmd.items())},
            "kills": len(self.kills),
            "kills_survived": sum(1 for k in self.kills if k["survived"]),
            "kill_runs": self.kills,
            "cases": self.cases,
        }


TALLY = Tally()


@dataclass
class Result:
    rc: int | None
    err: str
    outcome: str
    exc: BaseException | None = None


class Faults:
    """Runs one bad input through one command and records the outcome."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys

    def run(
        self,
        command: str,
        case: str,
        main: Callable[[list[str]], int],
        argv: Sequence[str],
        must_name: Sequence[str] = (),
        ok: bool = False,
        secret: str | None = None,
        intact: Callable[[], bool] | None = None,
    ) -> Result:
        """Call `main(argv)`; classify; record. `ok=True`: the input is fine (exit 0 is right, e.g. a clip).
        `secret`: a credential the input carries, which no output may show (recorded, and a leak is not
        `clear`). `intact`: called after the run, True when nothing was lost or half-written (recorded)."""
        self.capsys.readouterr()
        exc = None
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # noqa: BLE001 - a traceback is what we are counting
            rc, exc = None, e
        out = self.capsys.readouterr()
        err = out.err + out.out
        if exc is not None:
            outcome = "traceback"
            err += "".join(traceback.format_exception(exc))
        elif ok:
            outcome = "clear" if rc == 0 else "vague"
        elif rc == 0:
            outcome = "silent"
        elif all(s in err for s in must_name):
            outcome = "clear"
        else:
            outcome = "vague"
        record = {"command": command, "case": case, "outcome": outcome, "rc": rc}
        if secret is not None:
            record["secret_leaked"] = secret in err
            if record["secret_leaked"] and outcome == "clear":
                outcome = record["outcome"] = "vague"  # an error that prints a credential is not a good one
        if intact is not None:
            record["data_lost"] = not intact()
        TALLY.cases.append(record)
        return Result(rc, err, outcome, exc)

    def expect_clear(self, *a, **k) -> Result:
        r = self.run(*a, **k)
        assert r.outcome == "clear", f"{a[0]} / {a[1]}: {r.outcome} (rc={r.rc})\n{r.err[-3000:]}"
        assert not TALLY.cases[-1].get("data_lost"), f"{a[0]} / {a[1]}: lost or half-wrote data"
        return r


@pytest.fixture
def faults(capsys: pytest.CaptureFixture) -> Faults:
    return Faults(capsys)


def record_kill(run: str, stage: str, survived: bool, detail: str = "") -> None:
    TALLY.kills.append({"run": run, "stage": stage, "survived": survived, "detail": detail})


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if not TALLY.cases and not TALLY.kills:
        return
    s = TALLY.summary()
    terminalreporter.write_line(
        f"faults: {s['bad_inputs_tried']} bad inputs: {s['clear']} clear error, {s['vague']} vague, "
        f"{s['traceback']} traceback, {s['silent']} silently accepted; secrets leaked {s['secrets_leaked']}/"
        f"{s['secrets_checked']}; data lost {s['data_lost']}/{s['data_checked']}; kills survived "
        f"{s['kills_survived']}/{s['kills']}"
    )
    target = os.environ.get("DINOCACHE_FAULTS_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(s, indent=1) + "\n")
        Path(target).with_suffix(".md").write_text(render_markdown(s))
        terminalreporter.write_line(f"faults: summary written to {target} (+ .md)")


def render_markdown(s: dict) -> str:
    """The README's Reliability table, from one suite run's summary (never typed in by hand)."""
    lines = [
        f"- bad inputs tried: **{s['bad_inputs_tried']}**: {s['clear']} clear errors, {s['vague']} errors not "
        f"naming what they must, {s['traceback']} tracebacks, {s['silent']} silently accepted",
        f"- secrets leaked: **{s['secrets_leaked']}** of {s['secrets_checked']} cases carrying a credential (every "
        "printed line and traceback searched for it)",
        f"- data lost or half-written: **{s['data_lost']}** of {s['data_checked']} cases whose files were checked "
        "after the refusal",
        f"- kills / crashes survived: **{s['kills_survived']}/{s['kills']}** (resumed final weights identical "
        "to an uninterrupted run's, torch.equal on every tensor)",
        "",
        "| command | tried | clear error | vague | traceback | silently accepted |",
        "|---|---|---|---|---|---|",
    ]
    for cmd, c in s["by_command"].items():
        lines.append(
            f"| {cmd} | {sum(c.values())} | {c['clear']} | {c['vague']} | {c['traceback']} | {c['silent']} |"
        )
    if s["kill_runs"]:
        lines += ["", "| kill | stage | survived |", "|---|---|---|"]
        for k in s["kill_runs"]:
            lines.append(f"| {k['run']} | {k['stage']} | {'yes' if k['survived'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# -- shared material ----------------------------------------------------------------------------------------
def no_run_folder(tmp: Path) -> Callable[[], bool]:
    """`intact` check of a refused training: it left no run folder under tmp/artifacts."""
    return lambda: not list((tmp / "artifacts").rglob("train"))


def precompute_args(data: Path, teacher: Path, store: Path, *extra: str) -> list[str]:
    return [
        f"data={data}",
        f"dino_root={teacher}",
        f"cache={store}",
        f"imgsz={IMGSZ}",
        "channels=8",
        "shard_size=4",
        "batch=4",
        "workers=1",
        "device=cpu",
        "pca_fit_images=8",
        *extra,
    ]


@pytest.fixture(scope="session")
def fault_cache(tmp_path_factory: pytest.TempPathFactory, demo_data: Path, tiny_teacher_dir: Path) -> Path:
    """One precomputed cache of the demo data (16 rows, shards of 4); tests copy it before damaging it."""
    import torch
    from dinocache.precompute.run import main as precompute

    d = tmp_path_factory.mktemp("faultcache")
    (d / "empty.json").write_text("{}")
    out = d / "features.zarr"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            precompute(
                ["--config", str(d / "empty.json"), *precompute_args(demo_data, tiny_teacher_dir, out)]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture
def work(tmp_path: Path, demo_data: Path, fault_cache: Path) -> tuple[Path, Path]:
    """(data.yaml, cache) copies this test may damage."""
    shutil.copytree(demo_data.parent, tmp_path / "ds")
    shutil.copytree(fault_cache, tmp_path / "c.zarr")
    for c in (tmp_path / "ds").rglob("*.cache"):
        c.unlink()
    return tmp_path / "ds" / "data.yaml", tmp_path / "c.zarr"


@pytest.fixture
def kills():
    """`kills(run, stage, survived, detail)` records one kill-and-resume for the summary."""
    return record_kill

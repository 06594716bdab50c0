"""`labs doctor RUN`: every detector of the failure clinic over a finished run, and the live checks
`labs finetune` makes after its first steps.

The detectors are the exercises of notebook 14 (labs/clinic.py, yours; solutions/clinic.py, the
reference): this module only calls them, through the implementation LABS_IMPL or --impl selects.
A detector whose exercise is still open is skipped, and the report says so.

    labs doctor runs/lora-smollm2-135m-define-20260101-120000
    labs doctor runs/mine --impl solutions          # the reference detectors

The record a run writes (run_record.json) is described in labs/run_record.py.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from labs.impl import current_impl, technique
from labs.prerequisites import describe, missing


@dataclass(frozen=True)
class Detector:
    exercise: str    # its exercise in notebook 14
    function: str    # its name in labs/clinic.py
    live: bool       # reads only what the first steps record: labs finetune runs it during training


DETECTORS = (
    Detector("14.1", "optimizer_misses_trainable", live=True),
    Detector("14.2", "no_gradient", live=True),
    Detector("14.3", "adapter_unchanged", live=True),
    Detector("14.4", "targets_not_found", live=True),
    Detector("14.5", "never_stops", live=True),
    Detector("14.6", "loss_on_prompt", live=True),
    Detector("14.7", "template_mismatch", live=True),
    Detector("14.8", "loss_flat", live=False),       # needs the held-out loss after training
    Detector("14.9", "loss_rising", live=True),
)


@dataclass
class Findings:
    diagnoses: list            # (Detector, clinic.Diagnosis) for each detector that found its failure
    ran: list[Detector]        # the detectors that ran (found something or not)
    open: list[str]            # exercise ids of the detectors skipped because they are still open


def diagnose(record: dict, impl: str | None = None, live: bool = False) -> Findings:
    """Run the detectors (only the live ones when `live`) of the implementation over a record."""
    impl = impl or current_impl()
    chosen = [d for d in DETECTORS if d.live or not live]
    todo = set(missing([d.exercise for d in chosen], impl))
    clinic = technique("clinic", impl) if len(todo) < len(chosen) else None
    found, ran = [], []
    for detector in chosen:
        if detector.exercise in todo:
            continue
        ran.append(detector)
        diagnosis = getattr(clinic, detector.function)(record)
        if diagnosis is not None:
            found.append((detector, diagnosis))
    return Findings(found, ran, [d.exercise for d in chosen if d.exercise in todo])


def report(findings: Findings, impl: str | None = None) -> str:
    """The text `labs doctor` prints."""
    lines = []
    for detector, diagnosis in findings.diagnoses:
        lines.append(f"[{detector.exercise}] {diagnosis}")
    healthy = len(findings.ran) - len(findings.diagnoses)
    if findings.ran:
        lines.append(f"{len(findings.diagnoses)} problem(s) found; {healthy} of {len(findings.ran)} detectors "
                     "that ran found nothing")
    if findings.open:
        lines.append(f"skipped, still open: {describe(findings.open, impl or current_impl())}")
    return "\n".join(lines)


class LiveDoctor:
    """What labs finetune hands the Recorder as `live`: prints a warning per failure found, naming its
    cause and fix, and never stops the run. `after_run(record)` runs the rest once training is done."""

    def __init__(self, impl: str | None = None, write=None):
        self.impl, self.write, self.warned = impl or current_impl(), write or _write, set()

    def __call__(self, record: dict) -> None:
        self._warn(diagnose(record, self.impl, live=True), f"step {len(record['losses'])}")

    def after_run(self, record: dict) -> None:
        self._warn(diagnose(record, self.impl), "after training")

    def _warn(self, findings: Findings, when: str) -> None:
        for detector, diagnosis in findings.diagnoses:
            if detector.function not in self.warned:
                self.warned.add(detector.function)
                self.write(f"warning ({when}, detector {detector.exercise}): {diagnosis}")
        if findings.open and findings.ran and "open" not in self.warned:   # all open: a learner before notebook 14
            self.warned.add("open")
            self.write(f"live checks: skipping {describe(findings.open, self.impl)} (still open)")


def _write(text: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(text, file=sys.stderr)   # beside a progress bar, not through it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labs doctor", description="Diagnose a finished run: every detector "
                                     "of notebook 14 over the run_record.json that labs finetune wrote.")
    parser.add_argument("run", help="a run folder written by labs finetune (or its run_record.json)")
    parser.add_argument("--impl", default=None, choices=("labs", "solutions"),
                        help="whose detectors run: labs = your own labs/clinic.py, solutions = the reference where "
                             "your edition has it (default: $LABS_IMPL, else labs)")
    args = parser.parse_args(argv)
    from labs.run_record import read_record
    record = read_record(args.run)
    findings = diagnose(record, args.impl)
    print(f"{args.run}: {record['method']} run, {len(record['losses'])} steps")
    print(report(findings, args.impl))
    return 1 if findings.diagnoses else 0

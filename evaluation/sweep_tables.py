"""The task-aware loss sweep (scripts/task_aware_sweep.yaml; records under
docs/records/task_aware_sweep/): its table, and its answer in plain words.

Arms of a seed are paired only where they started from the same base weights (their recorded
``base_weights_sha256`` agree); differences get a Student-t interval over the paired seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import yaml

from evaluation.demo_tables import machine_label
from evaluation.formatting import format_number

SWEEP = "scripts/task_aware_sweep.yaml"
SWEEP_RECORDS = "docs/records/task_aware_sweep"


def sweep_records(root: Path, records: str = SWEEP_RECORDS) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: record JSON}}`` of every recorded (arm, seed)."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((root / records).glob("*/seed*.json")):
        record = json.loads(path.read_text())
        found.setdefault(record["arm"], {})[int(record["seed"])] = record
    return found


def paired_t_interval(
    differences: Sequence[float], confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval of the mean of paired per-seed differences (NaN below two seeds)."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def same_base(record: dict, other: dict) -> bool:
    """Whether two arms of a seed started from the same base weights: their recorded digests agree,
    or neither has one (the first records, whose arms all shared one base run in one session)."""
    return record.get("base_weights_sha256") == other.get("base_weights_sha256")


def sweep_table(root: Path, sweep: str = SWEEP, records: str = SWEEP_RECORDS) -> str:
    """One row per arm: seeds, QWK, the paired QWK difference against the arm it is compared
    with (mean and 95% t-interval over the seeds both have), PSNR, lesion PSNR, CAM agreement
    (Pearson SR vs HR) and the task gap."""
    spec = yaml.safe_load((root / sweep).read_text(encoding="utf-8"))
    found = sweep_records(root, records)
    rows = [
        "| arm | seeds | QWK | ΔQWK vs | ΔQWK (95% CI) | PSNR dB (bicubic) | lesion PSNR dB "
        "| CAM Pearson SR/HR | task gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, values in spec["arms"].items():
        runs = found.get(arm, {})
        if not runs:
            rows.append(f"| {arm} | 0 | | | | | | | |")
            continue
        mean = lambda get, runs=runs: statistics.fmean(get(r) for r in runs.values())  # noqa: E731
        against = values.get("against")
        difference = "—"
        if against:
            common = [
                seed
                for seed in sorted(set(runs) & set(found.get(against, {})))
                if same_base(runs[seed], found[against][seed])
            ]
            deltas = [
                runs[s]["metrics"]["qwk"] - found[against][s]["metrics"]["qwk"] for s in common
            ]
            if deltas:
                low, high = paired_t_interval(deltas)
                difference = (
                    f"{statistics.fmean(deltas):+.3f} ({format_number(low, '+.3f', 'n/a')}, "
                    f"{format_number(high, '+.3f', 'n/a')}), {len(deltas)} seeds"
                )
        rows.append(
            f"| {arm} | {len(runs)} | {mean(lambda r: r['metrics']['qwk']):.3f} | {against or '—'} "
            f"| {difference} | {mean(lambda r: r['metrics']['psnr']):.2f} "
            f"({mean(lambda r: r['metrics']['psnr_bicubic']):.2f}) "
            f"| {mean(lambda r: r['metrics']['psnr_lesion']):.2f} "
            f"| {format_number(mean(lambda r: r['mechanism']['cam_pearson']), '.3f', 'n/a')} "
            f"| {format_number(mean(lambda r: r['mechanism']['task_gap']), '+.3f', 'n/a')} |"
        )
    every = [record for runs in found.values() for record in runs.values()]
    note = (
        "\nNo run recorded yet.\n"
        if not every
        else f"\n{len(every)} runs recorded (commit(s) "
        + ", ".join(sorted({record["commit"][:7] for record in every}))
        + f"; {', '.join(sorted({machine_label(record) for record in every}))}, "
        f"{statistics.fmean(r['wall_seconds'] for r in every) / 60:.1f} min per arm run). "
        "Arms are paired by seed only where both started from the same base weights "
        f"(`base_weights_sha256`). `python scripts/task_aware_sweep.py`; records: `{records}/`.\n"
    )
    return "\n".join(rows) + "\n" + note


def _task_aware_weight(values: dict) -> float:
    """An arm's ``loss.task_aware_weight`` override (0 when it sets none)."""
    for text in values.get("overrides") or []:
        if text.startswith("loss.task_aware_weight="):
            return float(text.split("=", 1)[1])
    return 0.0


def _freezes_a_net(values: dict) -> bool:
    """Whether an arm freezes the grader or the ISR net in the joint stage (the control arms)."""
    frozen = ("train.joint.lr_cls=0", "train.joint.lr_isr=0")
    return any(text.startswith(frozen) for text in values.get("overrides") or [])


def _arm_against_zero(arm: str, against: str, weight: float, found: dict) -> dict | None:
    """``arm`` minus ``against`` on the seeds both have from one base: QWK (mean, t-interval), the
    PSNR it costs, and the mechanism signals of both."""
    runs, refs = found.get(arm, {}), found.get(against, {})
    seeds = [s for s in sorted(set(runs) & set(refs)) if same_base(runs[s], refs[s])]
    if not seeds:
        return None
    deltas = [runs[s]["metrics"]["qwk"] - refs[s]["metrics"]["qwk"] for s in seeds]
    low, high = paired_t_interval(deltas)
    mean = lambda records, get: statistics.fmean(get(records[s]) for s in seeds)  # noqa: E731
    return {
        "arm": arm,
        "weight": weight,
        "seeds": len(seeds),
        "delta": statistics.fmean(deltas),
        "low": low,
        "high": high,
        "psnr_cost": mean(refs, lambda r: r["metrics"]["psnr"])
        - mean(runs, lambda r: r["metrics"]["psnr"]),
        "under_bicubic": mean(runs, lambda r: r["metrics"]["psnr"] - r["metrics"]["psnr_bicubic"])
        < 0,
        "pearson": (mean(refs, _pearson), mean(runs, _pearson)),
        "gap": (mean(refs, _gap), mean(runs, _gap)),
    }


def _pearson(record: dict) -> float:
    return record["mechanism"]["cam_pearson"]


def _gap(record: dict) -> float:
    return record["mechanism"]["task_gap"]


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _verdict_sentence(arms: list[dict]) -> str:
    helped = [a["arm"] for a in arms if a["low"] > 0]  # NaN (one seed) compares False
    hurt = [a["arm"] for a in arms if a["high"] < 0]
    if helped:
        return f"it **helps** grading in {', '.join(f'`{a}`' for a in helped)} (interval above 0)."
    if hurt:
        return (
            f"no arm grades better, and {', '.join(f'`{a}`' for a in hurt)} grade **worse** "
            "(interval below 0)."
        )
    return "it has **no measurable effect on grading**: every arm's 95% interval contains 0."


def sweep_answer(root: Path, sweep: str = SWEEP, records: str = SWEEP_RECORDS) -> str:
    """The sweep's answer in plain words, rewritten from its records: the task-aware arms (weight
    > 0, neither net frozen) against weight 0 with the same pixel loss, paired by seed."""
    spec = yaml.safe_load((root / sweep).read_text(encoding="utf-8"))
    found = sweep_records(root, records)
    arms = [
        entry
        for arm, values in spec["arms"].items()
        if values.get("against")
        and _task_aware_weight(values) > 0
        and not _freezes_a_net(values)
        and not _freezes_a_net(spec["arms"][values["against"]])
        for entry in [_arm_against_zero(arm, values["against"], _task_aware_weight(values), found)]
        if entry is not None
    ]
    if not arms:
        return "No task-aware arm of the sweep has a paired record yet: `python scripts/task_aware_sweep.py`.\n"
    target, seeds = len(spec["seeds"]), min(a["seeds"] for a in arms)
    status = (
        f"**The task-aware loss sweep has {seeds} of its {target} paired seeds** (so this is the "
        "answer so far):"
        if seeds < target
        else f"**The task-aware loss sweep, all {target} paired seeds:**"
    )
    best = max(arms, key=lambda a: a["delta"])
    top = max(a["weight"] for a in arms)
    heaviest = [a for a in arms if a["weight"] == top]
    under = sorted({a["weight"] for a in arms if a["under_bicubic"]})
    sentences = [
        f"{status} against weight 0 with the same pixel loss, the {len(arms)} arms with the term "
        f"change test QWK by {min(a['delta'] for a in arms):+.3f} to {max(a['delta'] for a in arms):+.3f}; "
        f"the best, `{best['arm']}`, by {best['delta']:+.3f} "
        f"({format_number(best['low'], '+.3f', 'n/a')}, {format_number(best['high'], '+.3f', 'n/a')}) "
        f"at a PSNR cost of {best['psnr_cost']:.2f} dB. "
        + (
            "So far " + _verdict_sentence(arms)
            if seeds < target
            else _sentence_case(_verdict_sentence(arms))
        ),
        "It does what it is built to do: the SR image's Grad-CAM agrees more with the HR image's "
        f"(Pearson {statistics.fmean(a['pearson'][0] for a in arms):.2f} at weight 0, "
        f"{statistics.fmean(a['pearson'][1] for a in heaviest):.2f} at weight {top:g}), and the task "
        "gap (the same frozen grader's QWK on SR minus on HR) goes from "
        f"{statistics.fmean(a['gap'][0] for a in arms):+.2f} to "
        f"{statistics.fmean(a['gap'][1] for a in heaviest):+.2f}.",
        (
            "The SR image stays above bicubic in every arm."
            if not under
            else f"From weight {under[0]:g} on, the SR image falls under bicubic (PSNR) in some arm."
        ),
        "Embedded data, `configs/table.yaml`; table and arms in docs/RESULTS.md.",
    ]
    return " ".join(sentences) + "\n"

"""The demo's tables, from the records of ``bench/demo_seeds.py`` (``docs/records/demo/``).

Two blocks: ``demo-seeds`` (README.md and docs/RESULTS.md: min / median / max over the seeds of each
CPU kind, never the best run alone) and ``demo-profile`` (docs/BENCHMARKS.md: where the training
time goes, median over the seeds of each CPU kind).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

DEMO_RECORDS = "docs/records/demo"
STAGES = ("isr", "seg", "cls", "joint")


def demo_records(root: Path, records: str = DEMO_RECORDS) -> dict[str, list[dict]]:
    """``{kernels folder: [record, ...]}`` sorted by seed; a folder is one CPU kind's kernels."""
    found: dict[str, list[dict]] = {}
    for path in sorted((root / records).glob("*/seed*.json")):
        found.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    for runs in found.values():
        runs.sort(key=lambda record: record["seed"])
    return found


def cpu_kind(flags: Iterable[str]) -> str:
    """The CPU kind that decides training speed, by its widest vector and bf16 units (the kinds
    the project's machines come in): "AMX", "AVX-512 BF16", "AVX-512", "AVX2 only" or "no AVX2"."""
    flags = set(flags)
    for flag, kind in (
        ("amx_bf16", "AMX"),
        ("avx512_bf16", "AVX-512 BF16"),
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2 only"),
    ):
        if flag in flags:
            return kind
    return "no AVX2"


def machine_label(record: dict) -> str:
    """``CPU model [family N] (kind)`` of a record that holds ``cpu`` and ``cpu_flags`` (and
    ``cpu_family`` since 2026-12-07: one model name covers CPUs 1.4x apart in speed)."""
    family = record.get("cpu_family")
    name = f"{record['cpu']} family {family}" if family is not None else record["cpu"]
    return f"{name} ({cpu_kind(record.get('cpu_flags', []))})"


def _kind(runs: list[dict]) -> str:
    first = runs[0]
    kernels = "kernels capped at AVX2" if first["kernels"] == "avx2" else "its own kernels"
    return f"{machine_label(first)}, {kernels} ({first['precision']})"


def _spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def demo_seeds_table(root: Path, records: str = DEMO_RECORDS) -> str:
    """One row per CPU kind: seeds, training minutes, test QWK, SR PSNR and its gain over bicubic,
    each as min / median / max over the seeds."""
    found = demo_records(root, records)
    if not found:
        return "No demo records yet: `python bench/demo_seeds.py`.\n"
    rows = [
        "| CPU (kernels, precision) | seeds | training min | test QWK | test accuracy "
        "| SR PSNR dB | SR minus bicubic dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for runs in found.values():
        tests = [record["test"] for record in runs]
        rows.append(
            f"| {_kind(runs)} | {', '.join(str(r['seed']) for r in runs)} "
            f"| {_spread([r['train_seconds'] / 60 for r in runs], 1)} "
            f"| {_spread([t['qwk'] for t in tests], 3)} "
            f"| {_spread([t['accuracy'] for t in tests], 3)} "
            f"| {_spread([t['psnr_sr'] for t in tests], 2)} "
            f"| {_spread([t['psnr_sr'] - t['psnr_bicubic'] for t in tests], 2)} |"
        )
    commits = sorted({record["commit"][:7] for runs in found.values() for record in runs})
    note = (
        "\nmin / median / max over the seeds (`run.seed`; the data are the same); 2 cores each, "
        f"test split of 300 images; commit {', '.join(commits)}. "
        "`python bench/demo_seeds.py --seeds 0,1,2 [--kernels avx2]`; records in "
        f"`{records}/`.\n"
    )
    return "\n".join(rows) + "\n" + note


def profile_parts() -> list[tuple[str, Callable[[dict], float]]]:
    """The parts of a demo record's training time: (label, seconds of a record)."""
    parts: list[tuple[str, Callable[[dict], float]]] = [
        ("rendering the data", lambda r: r["profile"]["render"])
    ]
    for stage in STAGES:
        parts.append((f"`{stage}` training", lambda r, s=stage: r["profile"]["stages"][s]["train"]))
        parts.append(
            (f"`{stage}` validation", lambda r, s=stage: r["profile"]["stages"][s]["validate"])
        )
    parts.append(("caching the frozen nets' outputs", lambda r: r["profile"]["cache"]))
    named = list(parts)

    def rest(record: dict) -> float:
        return record["train_seconds"] - sum(get(record) for _, get in named)

    parts.append(("start-up, checkpoints, the rest", rest))
    return parts


def demo_time_estimate(root: Path, measured: str, before: str, after: str) -> str:
    """The demo's training time on a machine not at hand, per part: its measured time under the
    old preset (``measured``) scaled by how that part changed from the old preset (``before``)
    to the new one (``after``), both measured elsewhere with the same kernels. Paths are records
    of ``bench/demo_seeds.py`` relative to ``root``."""
    there, old, new = (json.loads((root / path).read_text()) for path in (measured, before, after))
    rows = [
        f"| part | old preset, {machine_label(there)} (measured) | old preset, "
        f"{machine_label(old)}, capped | new preset, same, capped | new preset, "
        f"{machine_label(there)} (estimate) |",
        "|---|---|---|---|---|",
    ]
    total = 0.0
    for label, get in profile_parts():
        scale = get(new) / get(old) if get(old) > 0 else 1.0
        estimate = get(there) * scale
        total += estimate
        rows.append(
            f"| {label} | {get(there):.0f} s | {get(old):.0f} s | {get(new):.0f} s "
            f"| {estimate:.0f} s |"
        )
    rows.append(
        f"| **training, wall** | **{there['train_seconds']:.0f} s** | **{old['train_seconds']:.0f} "
        f"s** | **{new['train_seconds']:.0f} s** | **{total:.0f} s** ({total / 60:.1f} min) |"
    )
    note = (
        f"\nSeed {new['seed']}; records `{measured}`, `{before}`, `{after}`. An estimate, not a "
        "measurement: it assumes each part gains on that machine what it gained here.\n"
    )
    return "\n".join(rows) + "\n" + note


def demo_profile_table(root: Path, records: str = DEMO_RECORDS) -> str:
    """Seconds of the demo's training by part (median over the seeds of each CPU kind)."""
    found = demo_records(root, records)
    if not found:
        return "No demo records yet: `python bench/demo_seeds.py`.\n"
    kinds = list(found.values())
    parts = profile_parts()
    rows = [
        "| part | " + " | ".join(_kind(runs) for runs in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for label, get in parts:
        cells = []
        for runs in kinds:
            median = statistics.median(get(record) for record in runs)
            total = statistics.median(record["train_seconds"] for record in runs)
            cells.append(f"{median:.0f} s ({median / total:.0%})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append(
        "| **training, wall** | "
        + " | ".join(
            f"**{statistics.median(r['train_seconds'] for r in runs):.0f} s**" for runs in kinds
        )
        + " |"
    )
    loads = [record["load_average_at_end"] for runs in kinds for record in runs]
    note = (
        f"\nMedian over seeds {', '.join(str(r['seed']) for r in kinds[0])}; the 1-minute load "
        f"average at the end of the runs was {min(loads):.1f} to {max(loads):.1f} on 2 cores. "
        f"Records in `{records}/`.\n"
    )
    return "\n".join(rows) + "\n" + note


DEMO_LEVERS = "docs/records/demo_levers"


def _qwks(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values) or "—"


def demo_levers_table(root: Path, records: str = DEMO_LEVERS) -> str:
    """The runs that found why the demo swung (one seed each): validation QWK per epoch of the
    cls stage (on HR) and of the joint stage (on SR), then the test split of the kept epoch."""
    runs = [json.loads(path.read_text()) for path in sorted((root / records).glob("*.json"))]
    runs.sort(
        key=lambda record: (record["overrides"] != [], len(record["overrides"]), record["seed"])
    )
    rows = [
        "| run | seed | machine, kernels | overrides of the preset | val QWK, cls epochs (HR) "
        "| val QWK, joint epochs (SR) | test QWK | test accuracy | SR / bicubic dB | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        test = run["test"]
        overrides = ", ".join(f"`{o}`" for o in run["overrides"]) or "none"
        rows.append(
            f"| {run['name']} | {run['seed']} | {machine_label(run)}, {run['kernels']} "
            f"({run['precision']}) | {overrides} "
            f"| {_qwks(run['val_qwk_cls_by_epoch'])} | {_qwks(run['val_qwk_joint_by_epoch'])} "
            f"| {test['qwk']:.3f} | {test['accuracy']:.3f} "
            f"| {test['psnr_sr']:.2f} / {test['psnr_bicubic']:.2f} "
            f"| {run['train_wall_seconds'] / 60:.1f} ({run['load']}) |"
        )
    dates = sorted({run["date"] for run in runs})
    note = (
        f"\n`run.seed` 103 is the old preset's; runs of {dates[0]} to {dates[-1]}; wall times "
        "under the load named in each row, so compare them only between rows of one machine and "
        "kernels (a row's overrides are of the preset at its commit). "
        f"Records in `{records}/`.\n"
    )
    return "\n".join(rows) + "\n" + note

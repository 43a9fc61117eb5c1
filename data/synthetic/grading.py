"""The ICDR grade rule of the synthetic dataset: the grade follows from the lesions actually rendered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from data.records import LESIONS, DataError

PROLIFERATIVE_SIGNS: tuple[str, ...] = ("NV", "PRH")
COUNT_KEYS: tuple[str, ...] = (*LESIONS, *PROLIFERATIVE_SIGNS)
NUM_QUADRANTS = 4

# ICDR "severe" scaled down from ">20 intraretinal haemorrhages in each of 4 quadrants" (4-2-1 rule) to what
# one 45-50 degree photograph shows: at least this many haemorrhages in each quadrant around the fovea.
SEVERE_HE_PER_QUADRANT = 5


def icdr_grade(quadrant_counts: Mapping[str, Sequence[int]], proliferative: bool) -> int:
    """ICDR grade from lesion counts per quadrant (around the fovea) and whether proliferative signs exist.

    4 proliferative (NV or preretinal haemorrhage); 3 severe: >= SEVERE_HE_PER_QUADRANT haemorrhages in
    every quadrant; 2 moderate: any haemorrhage, hard or soft exudate; 1 mild: microaneurysms only; 0 none.
    ``quadrant_counts`` maps lesion names (MA, HE, EX, SE; missing = none) to 4 non-negative counts.
    """
    for name, counts in quadrant_counts.items():
        if name not in LESIONS or len(counts) != NUM_QUADRANTS or min(counts) < 0:
            raise DataError(
                f"quadrant_counts[{name!r}] must be 4 counts >= 0 for one of {LESIONS}, got {counts}"
            )
    totals = {name: sum(quadrant_counts.get(name, ())) for name in LESIONS}
    if proliferative:
        return 4
    if min(quadrant_counts.get("HE", (0,) * NUM_QUADRANTS)) >= SEVERE_HE_PER_QUADRANT:
        return 3
    if totals["HE"] or totals["EX"] or totals["SE"]:
        return 2
    return 1 if totals["MA"] else 0

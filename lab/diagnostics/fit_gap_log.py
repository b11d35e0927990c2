"""The fit gap through a run: a run's heldout_sets.csv (``bpr-train --eval-per-set``) as one row
per set and step, the boundary band error fixed on training and on held-out patches side by side.

    python lab/diagnostics/fit_gap_log.py RUN_DIR/heldout_sets.csv [--step N]
"""

from __future__ import annotations

import argparse
import csv


def band_fixed(row: dict[str, str]) -> float:
    """Share of the coarse mask's boundary band error the refiner removes (negative: adds)."""
    coarse, refined = float(row["coarse_band_iou"]), float(row["band_iou"])
    return (refined - coarse) / max(1 - coarse, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log")
    p.add_argument("--step", type=int, help="only this step")
    args = p.parse_args()
    with open(args.log) as f:
        rows = list(csv.DictReader(f))
    table: dict[tuple[int, str], dict[str, dict[str, str]]] = {}
    for r in rows:
        table.setdefault((int(r["step"]), r["set"]), {})[r["split"]] = r
    print("| step | set | train band error fixed | held-out band error fixed | held-out IoU coarse -> refined |")
    print("| ---: | --- | ---: | ---: | --- |")
    for (step, name), splits in table.items():
        if args.step is not None and step != args.step:
            continue
        train, held = splits.get("train"), splits.get("held-out")
        cells = [f"{100 * band_fixed(s):.1f}%" if s else "-" for s in (train, held)]
        ious = f"{float(held['coarse_iou']):.4f} -> {float(held['iou']):.4f}" if held else "-"
        print(f"| {step} | {name} | {cells[0]} | {cells[1]} | {ious} |")


if __name__ == "__main__":
    main()

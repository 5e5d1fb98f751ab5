"""Draw the README picture of the phantom cohort: a few cases, axial and coronal views with the
label overlay, and each case's report beside them.

Usage (from the repository root):
    python scripts/make_phantom_figure.py [--out docs/images/phantom_overview.png] [--seed 0] [--cases 0 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "phantom_overview.png"


def _most_organs_axial(label: np.ndarray) -> int:
    """Axial slice showing the most distinct organs (ties: the most labelled voxels)."""
    scores = [(len(np.unique(label[:, :, k])), int((label[:, :, k] > 0).sum())) for k in range(label.shape[2])]
    return int(max(range(len(scores)), key=lambda k: scores[k]))


def _best_coronal(label: np.ndarray) -> int:
    return int(np.argmax((label > 0).sum(axis=(0, 2))))


def make_figure(
    out: str | Path = DEFAULT_OUT,
    seed: int = 0,
    cases: Sequence[int] = (0, 1, 2),
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (4.0, 4.0, 5.0),
    dpi: int = 72,
) -> Path:
    """Render ``cases`` of the phantom cohort ``seed`` and save the overview PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from mosmoskit.data.phantom import make_case
    from mosmoskit.io import atomic_path
    from mosmoskit.labels import load_label_map
    from mosmoskit.viz.slices import draw_report, plot_overlay

    btcv = load_label_map("btcv")
    fig, axes = plt.subplots(len(cases), 4, figsize=(17, 3.6 * len(cases)),
                             gridspec_kw={"width_ratios": [1.1, 1.1, 0.85, 1.3]}, squeeze=False)
    for row, index in zip(axes, cases):
        case = make_case(seed, index, shape, spacing)
        k, j = _most_organs_axial(case.label), _best_coronal(case.label)
        z_mm, y_mm = case.affine[2, 3] + k * spacing[2], case.affine[1, 3] + j * spacing[1]
        plot_overlay(case.image, None, btcv, "axial", k, ax=row[0], spacing=spacing, crop_hu=-500,
                     title=f"{case.case_id}  axial z={z_mm:.0f} mm")
        plot_overlay(case.image, case.label, btcv, "axial", k, ax=row[1], legend=False, spacing=spacing,
                     crop_hu=-500, title="labels")
        plot_overlay(case.image, case.label, btcv, "coronal", j, ax=row[2], legend=False, spacing=spacing,
                     crop_hu=-500, title=f"coronal y={y_mm:.0f} mm")
        draw_report(row[3], case.report, width=60, fontsize=8)
    colors = btcv.colors()
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in btcv.foreground_names], loc="lower center",
               ncol=5, fontsize=8, frameon=False)
    fig.suptitle("mosmoskit phantom cohort: CT-like volumes, BTCV labels, free-text reports "
                 "(radiological view: patient's right on the left)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dpi", type=int, default=72)
    args = parser.parse_args(argv)
    path = make_figure(args.out, seed=args.seed, cases=args.cases, dpi=args.dpi)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

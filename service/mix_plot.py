"""The picture of a k-domain sweep (``mixes``, ``mix_search``), where a line over the ratio no
longer fits: a table of the mixes and a parallel-coordinates view.

Each mix is one line across parallel axes: its share of every pre-training source and
fine-tuning set (0 to 1), then its first-step margin ``log10(eta_c / learning rate)`` on the
most fragile guarded set (the smallest lower bound of eta_c over the pre-training and retention
sets; above 0 the first step stays in the basin). Lines in the basin are green, the others red,
the recommended mix black and thick. The table beside it lists the same mixes by pre-training
total: weights, that lower bound, the one-step pre-training loss change and the verdict.

Rendered with matplotlib's object API on the Agg canvas, like ``service/plot.py``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contract.mix import domains
from contract.recommendation import Recommendation
from contract.spec import RETENTION_ROLES, SweepSpec
from contract.wire import finite
from service.db.models import Measurement

_TABLE_ROWS = 14  # more mixes than this: the table shows the least pre-training ones and says so


@dataclass(frozen=True)
class MixLine:
    """One measured mix, as the table and the parallel axes show it.

    Attributes:
        weights: Share per pre-training source and fine-tuning set, in the spec's order.
        ratio: The pre-training total.
        eta_low: Smallest lower bound of eta_c over the guarded sets (0: one rose at once).
        pretraining_change: Mean one-step change of the pre-training losses at the planned rate.
        in_basin: The planned rate is below ``eta_low``.
    """

    weights: dict[str, float]
    ratio: float
    eta_low: float
    pretraining_change: float | None
    in_basin: bool


def mix_lines(spec: SweepSpec, measurements: Sequence[Measurement]) -> list[MixLine]:
    """The measured mixes of a sweep, by pre-training total (rows without weights left out)."""
    names = [d.name for d in domains(spec)]
    grouped: dict[tuple[float, ...], list[Measurement]] = {}
    for row in measurements:
        if row.weights is None or row.status == "pruned":
            continue
        key = tuple(round(row.weights.get(n, 0.0), 9) for n in names)
        grouped.setdefault(key, []).append(row)
    lines = []
    for key, rows in grouped.items():
        lows = [_low(r) for r in rows if r.role in RETENTION_ROLES]
        changes = [r.loss_change for r in rows if r.role == "pretraining"]
        known = [c for c in changes if c is not None and math.isfinite(c)]
        eta_low = min(lows, default=0.0)
        lines.append(
            MixLine(
                weights=dict(zip(names, key, strict=True)),
                ratio=rows[0].ratio,
                eta_low=eta_low,
                pretraining_change=sum(known) / len(known) if known else None,
                in_basin=eta_low > spec.learning_rate,
            )
        )
    return sorted(lines, key=lambda line: (round(line.ratio, 9), -line.eta_low))


def _low(row: Measurement) -> float:
    if row.status == "increases_immediately":
        return 0.0
    value = finite(row.eta_c_low if row.eta_c_low is not None else row.eta_c)
    return value if value is not None and value > 0 else 0.0


def render_mix_plot(
    spec: SweepSpec,
    measurements: Sequence[Measurement],
    recommendation: Recommendation | None,
) -> bytes:
    """PNG of a k-domain sweep: parallel coordinates of the mixes and their table.

    Returns:
        The PNG file's bytes.
    """
    lines = mix_lines(spec, measurements)
    names = [d.name for d in domains(spec)]
    chosen = recommendation.weights if recommendation is not None else None
    figure = Figure(figsize=(12, 5.2), dpi=100)
    FigureCanvasAgg(figure)
    axes, table_axes = figure.subplots(1, 2, width_ratios=[1.1, 1.0])
    lr = spec.learning_rate
    margins = [math.log10(max(line.eta_low, 1e-30) / lr) for line in lines]
    span = max((abs(m) for m in margins if m > -20), default=1.0) or 1.0
    x = list(range(len(names) + 1))
    for line, margin in zip(lines, margins, strict=True):
        # The margin axis maps [-span, span] decades onto [0, 1], like a share axis.
        ys = [line.weights[n] for n in names] + [min(max(0.5 + margin / (2 * span), 0.0), 1.0)]
        best = chosen is not None and _same(line.weights, chosen)
        axes.plot(
            x,
            ys,
            color="black" if best else ("tab:green" if line.in_basin else "tab:red"),
            linewidth=3 if best else 1.2,
            alpha=1.0 if best else 0.7,
            marker="o",
            markersize=3,
            zorder=3 if best else 2,
        )
    for position in x:
        axes.axvline(position, color="grey", linewidth=0.8)
    edge = len(names)  # the margin axis: its middle is eta_c = learning rate
    axes.plot([edge - 0.15, edge + 0.15], [0.5, 0.5], color="black", linestyle="--", linewidth=1)
    axes.set_xticks(x, [*names, f"log10(eta_c/lr)\n(±{span:.2g}; 0 at the line)"])
    axes.set_xlim(-0.2, len(names) + 0.2)
    axes.set_ylim(-0.03, 1.03)
    axes.set_ylabel("share of the mix")
    axes.plot([], [], color="tab:green", label="first step in the basin")
    axes.plot([], [], color="tab:red", label="out of the basin")
    if chosen is not None:
        axes.plot([], [], color="black", linewidth=3, label="recommended mix")
    axes.legend(fontsize="small", loc="upper left")
    axes.set_title(f"{len(lines)} mixes at learning rate {lr:.3g}")
    _table(table_axes, lines, names, chosen)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a.get(n, 0.0) - b.get(n, 0.0)) < 1e-9 for n in set(a) | set(b))


def _table(
    axes: Axes, lines: list[MixLine], names: list[str], chosen: dict[str, float] | None
) -> None:
    axes.axis("off")
    shown = lines[:_TABLE_ROWS]
    cells = [
        [
            *(f"{line.weights[n]:.3g}" for n in names),
            f"{line.eta_low:.3g}",
            "–" if line.pretraining_change is None else f"{line.pretraining_change:+.3g}",
            ("recommended" if chosen is not None and _same(line.weights, chosen) else "")
            or ("in basin" if line.in_basin else "out"),
        ]
        for line in shown
    ]
    if not cells:
        axes.text(0.5, 0.5, "no mix measured yet", ha="center", va="center")
        return
    table = axes.table(
        cellText=cells,
        colLabels=[*names, "eta_c low", "pt loss change", "verdict"],
        loc="upper center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.25)
    if len(lines) > len(shown):
        axes.set_title(
            f"the {len(shown)} mixes with the least pre-training data of {len(lines)}",
            fontsize="small",
        )


__all__ = ["MixLine", "mix_lines", "render_mix_plot"]

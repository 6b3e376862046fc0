"""The trajectories' picture: per ratio, how the pre-training loss and its sharpness move as the
optimizer steps on the mix.

Left: the drift of the pre-training set's held-out loss against the step, one line per ratio, the
band of acceptable drift (up to the tolerance) shaded, and each ratio's forecast at the planned
run's length with its interval. Right: the relative critical sharpness lambda_c = 2 / eta_c of the
pre-training loss along the optimizer's current update, with the current rate's 2 / lr line: above
the line a step of the current size raises the pre-training loss (outside the basin), below it the
step lowers it. Rendered with matplotlib's object API on the Agg canvas, safe in threads.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contract.spec import SweepSpec
from contract.wire import TrajectoriesOut


def render_trajectory_plot(spec: SweepSpec, data: TrajectoriesOut) -> bytes:
    """PNG of the pre-training drift and lambda_c against step, one line per ratio.

    Args:
        spec: The sweep's request (pre-training set, tolerance, schedule).
        data: Its trajectories so far (a running sweep draws what it has).

    Returns:
        The PNG file's bytes.
    """
    figure = Figure(figsize=(11, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    drift_axes, sharp_axes = figure.subplots(1, 2)
    name = spec.pretraining_sets[0].name  # the first source stands for pre-training
    drift_axes.axhspan(-1e9, spec.tolerance, color="tab:green", alpha=0.08, lw=0)
    drift_axes.axhline(spec.tolerance, color="tab:green", ls="--", lw=1, label="tolerance")
    last_step = 0
    lows: list[float] = []
    highs: list[float] = [spec.tolerance]
    for entry in data.ratios:
        points = [p for p in entry.points if p.eval_set == name and p.drift is not None]
        if not points:
            continue
        mix = (  # a listed k-domain mix is named by its shares, not only its ratio
            ", ".join(f"{n} {w:.2g}" for n, w in entry.weights.items())
            if entry.weights is not None
            else f"r = {entry.ratio:g}"
        )
        label = mix + (" (pruned)" if entry.pruned else "")
        steps = [p.step for p in points]
        drifts = [p.drift or 0.0 for p in points]
        last_step = max(last_step, *steps)
        lows += drifts
        highs += drifts
        (line,) = drift_axes.plot(steps, drifts, marker="o", ms=3, label=label)
        forecast = next((f for f in entry.forecast if f.eval_set == name), None)
        if forecast is not None and not forecast.measured and forecast.drift is not None:
            low = forecast.low if forecast.low is not None else forecast.drift
            high = forecast.high if forecast.high is not None else forecast.drift
            drift_axes.errorbar(
                [forecast.steps],
                [forecast.drift],
                yerr=[[forecast.drift - low], [high - forecast.drift]],
                color=line.get_color(),
                marker="D",
                capsize=3,
            )
            last_step = max(last_step, forecast.steps)
            lows.append(low)
            highs.append(high)
        sharp = [(p.step, p.sharpness) for p in points if p.sharpness is not None]
        if sharp:
            sharp_axes.plot(
                [s for s, _ in sharp],
                [v for _, v in sharp],
                marker="o",
                ms=3,
                color=line.get_color(),
                label=label,
            )
    if lows:
        span = max(highs) - min(lows)
        drift_axes.set_ylim(min(lows) - 0.1 * span, max(highs) + 0.1 * span)
    steps_axis = range(0, max(last_step, 1) + 1)
    sharp_axes.plot(
        list(steps_axis),
        [2.0 / spec.lr_at(s) for s in steps_axis],
        color="black",
        ls="--",
        lw=1,
        label="2 / current lr (above: step raises the loss)",
    )
    sharp_axes.set_yscale("log")
    drift_axes.set_xlabel("optimizer step on the mix")
    drift_axes.set_ylabel(f"drift of the {name} loss (nats)")
    drift_axes.set_title(f"pre-training drift; diamonds: forecast at {spec.planned_steps} steps")
    sharp_axes.set_xlabel("optimizer step on the mix")
    sharp_axes.set_ylabel(f"lambda_c of {name} (1 / eta_c x 2)")
    sharp_axes.set_title("relative critical sharpness along the current update")
    for axes in (drift_axes, sharp_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

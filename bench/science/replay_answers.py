"""The service's answers again, with today's rules, from a recorded service run.

A trajectory's measurements do not depend on how they are read: the forecast
(``workers.forecast``) and the recommendation (``workers.recommend``) are pure functions of the
recorded points and the first-step screen. This reads a ``service_run<N>.json`` written by
``trajectory_truth --parts service``, forecasts every trajectory again from its points, asks the
rules again, and writes ``service_run<N>_replay.json`` beside it with the same layout, so that
``analyze_run6 --run <N>_replay`` scores the answers the current code would give on the same
trajectories. Nothing is measured again.

    python -m bench.science.replay_answers bench/science/results/trajectory --run 8
    python -m bench.science.replay_answers bench/science/results/trajectory --run 8 \
        --accept interval --suffix replay_interval
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.science.trajectory_truth import _json_ready, _Row, _TrajectoryRow
from contract.spec import SweepSpec
from workers.forecast import forecast_drift
from workers.recommend import recommend


@dataclass(frozen=True)
class _Point:
    """A recorded trajectory point, as the forecast reads it."""

    step: int
    eval_set: str
    role: str
    drift: float


def replay(service: dict[str, Any], accept: str | None = None) -> dict[str, Any]:
    """``service`` (a recorded run) with every forecast and answer computed again.

    Args:
        service: The JSON of a ``service_run<N>.json``.
        accept: Override the spec's ``trajectory.accept`` (``forecast`` or ``interval``).
    """
    out: dict[str, Any] = {"replayed_from": "recorded trajectory points", "rates": {}}
    for key, entry in service["rates"].items():
        raw = dict(entry["spec"])
        if accept is not None:
            raw["trajectory"] = dict(raw["trajectory"]) | {"accept": accept}
        spec = SweepSpec.model_validate(raw)
        rows = [
            _Row(
                ratio=screened["ratio"],
                eval_set=m["eval_set"],
                role=m["role"],
                status=m["status"],
                eta_c=m["eta_c"],
                eta_c_low=m["eta_c_low"],
                spread=m["spread"],
                loss_change=m["loss_change"],
            )
            for screened in entry["screen"]
            for m in screened["measurements"]
        ]
        trajectories = []
        finished = []
        for t in entry["trajectories"]:
            points = [
                _Point(p["step"], p["eval_set"], p["role"], p["drift"])
                for p in t["points"]
                if p["drift"] is not None
            ]
            forecast = [vars(f) for f in forecast_drift(spec, points)]
            trajectories.append(dict(t) | {"forecast": forecast})
            finished.append(
                _TrajectoryRow(
                    ratio=t["ratio"],
                    steps_done=t["steps_done"],
                    pruned=t["pruned"],
                    forecast=forecast,
                )
            )
        first_spec = spec.model_copy(update={"trajectory": None})
        out["rates"][key] = dict(entry) | {
            "spec": spec.model_dump(mode="json"),
            "first_step": _json_ready(recommend(first_spec, rows)),
            "trajectories": _json_ready(trajectories),
            "trajectory": _json_ready(recommend(spec, rows, trajectories=finished)),
        }
    return out


def main() -> None:
    """Parse, replay, write ``service_run<N>_<suffix>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where service_run<N>.json lies")
    parser.add_argument("--run", required=True, help="N of service_run<N>.json (e.g. 8)")
    parser.add_argument("--accept", choices=("forecast", "interval"), default=None)
    parser.add_argument("--suffix", default="replay", help="written as service_run<N>_<suffix>")
    args = parser.parse_args()
    source = args.folder / f"service_run{args.run}.json"
    result = replay(json.loads(source.read_text()), accept=args.accept)
    target = args.folder / f"service_run{args.run}_{args.suffix}.json"
    target.write_text(json.dumps(result, indent=1) + "\n")
    for key, entry in result["rates"].items():
        print(f"lr {key}: {entry['trajectory']['ratio']}  ({entry['trajectory']['reason']})")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

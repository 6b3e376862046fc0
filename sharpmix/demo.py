"""``make demo``: a real sweep over HTTP on the embedded default, on generated demo assets.

Builds (or reuses) the demo corpora and the tiny OLMo-2-style model pre-trained on the general
corpus, starts the API with an in-process worker on a free port, creates an API key, posts a
trajectory sweep of math fine-tuning mixed with general text (a first-step screen over eight
ratios, then real AdamW steps on the two around its boundary), waits for it, and prints the
per-ratio table, the trajectories with their forecasts, the recommendation and where the plots
were written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from contract.recommendation import Recommendation
from contract.wire import SweepOut, TrajectoriesOut, TrialOut
from service.client import SharpmixClient
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.tenants import create_api_key, create_tenant
from sharpmix.embedded import EmbeddedServer

# A 48-step run planned; 12 real steps per trajectory on CPU (measured at 0, 6 and 12), forecast
# to 48 from there: a horizon four times the trajectory, short enough for a tight interval.
DEMO_TRAJECTORY = {"steps": 12, "measure_every": 6, "ratios": 2}


def demo_spec(model_dir: Path, general: Path, math: Path) -> dict[str, Any]:
    """The demo sweep: how much general text to mix into arithmetic fine-tuning.

    The one place the demo's request is built. ``examples/demo.yaml`` is the same request with
    the paths relative to ``SHARPMIX_HOME`` (a test keeps the two equal), for ``sharpmix submit``.
    """
    return {
        "model": {"path": str(model_dir)},
        "pretraining": {"name": "general", "path": str(general)},
        "finetuning": [{"name": "math", "path": str(math)}],
        "ratios": "auto",
        "trajectory": DEMO_TRAJECTORY,
        "planned_steps": 48,
        "tolerance": 0.02,
        "optimizer": {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
        # Where the demo model's curves make the rules bite: at 3e-4 no ratio keeps the general
        # loss flat (the service says so, and what would); at 1.5e-4 a small ratio does.
        "learning_rate": 1.5e-4,
        "seq_len": 128,
        "batch_tokens": 16384,
        "batches": 2,
        "seed": 0,
        "objective": "flat_pretraining",
    }


def run_demo(settings: Settings, *, rebuild: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    from sharpmix.assets.demo import build_demo_assets

    start = time.perf_counter()
    _say(f"demo assets under {settings.home / 'demo'} (built once, then reused)")
    assets = build_demo_assets(settings.home, force=rebuild)
    if settings.allowed_roots:  # the operator restricted roots: let the demo read its own assets
        settings = settings.model_copy(
            update={"allowed_roots": [*settings.allowed_roots, assets.model_dir.parent]}
        )
    spec = demo_spec(assets.model_dir, assets.general_path, assets.math_path)
    code = demo_sweep(settings, spec, plot_dir=assets.model_dir.parent)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return code


def demo_sweep(settings: Settings, spec: dict[str, Any], *, plot_dir: Path) -> int:
    """Serve the API with an in-process worker, run ``spec`` over HTTP, print what it found.

    Returns:
        0 when the sweep succeeded, 1 otherwise.
    """
    server = EmbeddedServer(settings, port=0)
    url = server.start()
    _say(f"API with an in-process worker at {url} (database {_redact(settings)})")
    try:
        with SharpmixClient(url, _demo_key(settings)) as client:
            sweep = client.submit(spec)
            _say(f"POST /v1/sweeps -> {sweep.id} ({sweep.progress.tasks_total} tasks)")
            last = [-1]

            def progress(s: SweepOut) -> None:
                if s.progress.tasks_done != last[0]:
                    last[0] = s.progress.tasks_done
                    eta = s.progress.eta_seconds
                    left = "" if eta is None or s.state.is_final else f", about {eta:.0f} s left"
                    _say(
                        f"  {s.state}: {s.progress.tasks_done}/{s.progress.tasks_total} tasks, "
                        f"{s.progress.forwards} forward passes, "
                        f"{s.progress.optimizer_steps} optimizer steps{left}"
                    )

            done = client.wait(sweep.id, on_progress=progress, poll=0.5, max_poll=2.0)
            if done.state != "succeeded":
                _say(f"sweep {done.state}: {done.error}")
                return 1
            trials = client.trials(sweep.id)
            rec = client.recommendation(sweep.id)
            plot = plot_dir / f"plot-{sweep.id}.png"
            plot.write_bytes(client.plot(sweep.id))
            trajectories = None
            if done.spec.trajectory is not None:
                trajectories = client.trajectories(sweep.id)
                drawn = plot_dir / f"trajectories-{sweep.id}.png"
                drawn.write_bytes(client.trajectory_plot(sweep.id))
    finally:
        server.shutdown()
    _report(trials, rec)
    if trajectories is not None:
        _report_trajectories(trajectories)
        print(f"trajectory plot: {drawn}")
    print(f"plot: {plot}")
    print(
        f"{done.progress.forwards} forward and {done.progress.backwards} backward passes, "
        f"{done.progress.optimizer_steps} optimizer steps, "
        f"{done.progress.compute_seconds:.0f} s of worker compute"
    )
    return 0


def _report_trajectories(data: TrajectoriesOut) -> None:
    print(
        f"\ntrajectories: {data.steps} real steps per ratio, forecast to {data.planned_steps} "
        f"(tolerance {data.tolerance:g} nats)"
    )
    print(f"{'ratio':>6} {'eval set':>9} {'drift@K':>9} {'forecast@N':>11} {'interval':>21}  how")
    for entry in data.ratios:
        for f in entry.forecast:
            last = [p for p in entry.points if p.eval_set == f.eval_set]
            drift = last[-1].drift if last else None
            ci = f"[{_num(f.low)}, {_num(f.high)}]"
            flag = " (pruned)" if entry.pruned else ""
            print(
                f"{entry.ratio or 0.0:>6.2f} {f.eval_set:>9} {_num(drift):>9} "
                f"{_num(f.drift):>11} {ci:>21}  {'measured' if f.measured else 'fit'}{flag}"
            )


def _report(trials: list[TrialOut], rec: Recommendation) -> None:
    print(
        f"\n{'ratio':>6} {'eval set':>9} {'eta_c':>10} {'95% CI':>23} {'lambda_c':>10} "
        f"{'dL at lr':>10} {'fwd':>5}"
    )
    for t in trials:
        ci = f"[{_num(t.eta_c_low)}, {_num(t.eta_c_high)}]"
        print(
            f"{t.ratio:>6.2f} {t.eval_set:>9} {_num(t.eta_c):>10} {ci:>23} "
            f"{_num(t.sharpness):>10} {_num(t.loss_change):>10} {t.forwards:>5}"
        )
    print(
        f"\nrecommended pre-training ratio: {rec.ratio} (basis {rec.basis}, objective "
        f"{rec.objective}, confidence {rec.confidence})"
    )
    print(f"  {rec.reason}")
    print(
        f"  balanced ratio {rec.balanced_ratio}, loss-change rule {rec.least_forgetting_ratio}, "
        f"max stable lr {_num(rec.max_stable_lr)}"
    )
    for warning in rec.warnings:
        print(f"  warning: {warning}")


def _demo_key(settings: Settings) -> str:
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            tenant = create_tenant(session, "demo")
            _, key = create_api_key(session, tenant.id)
            return key
    finally:
        engine.dispose()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _redact(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

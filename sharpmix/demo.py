"""``make demo``: a real sweep over HTTP on the embedded default, on generated demo assets.

Builds (or reuses) the demo corpora and the tiny OLMo-2-style model pre-trained on the general
corpus, starts the API with an in-process worker on a free port, creates an API key, posts a
trajectory sweep of math fine-tuning mixed with general text (a first-step screen over eight
ratios, then real AdamW steps on the two around its boundary), waits for it, and prints the
per-ratio table, the trajectories with their forecasts, the recommendation and where the plots
were written. Then one small k = 3 sweep: three mixes of two pre-training sources (the general
corpus the model was trained on, and held-out general text it never saw) and the math set,
measured from one backward pass per source, with the recommended mix named per source.
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


# The k = 3 part: three mixes on the simplex, one small batch each (about 20 s on two cores).
DEMO_MIXES = [
    {"general": 0.05, "general_heldout": 0.05, "math": 0.9},
    {"general": 0.2, "general_heldout": 0.1, "math": 0.7},
    {"general": 0.1, "general_heldout": 0.4, "math": 0.5},
]


def demo_mix_spec(model_dir: Path, general: Path, heldout: Path, math: Path) -> dict[str, Any]:
    """The demo's k = 3 sweep: which mix of seen text, unseen text of the same kind, and math."""
    return {
        "model": {"path": str(model_dir)},
        "pretraining": [
            {"name": "general", "path": str(general)},
            {"name": "general_heldout", "path": str(heldout), "max": 0.5},
        ],
        "finetuning": [{"name": "math", "path": str(math)}],
        "mixes": DEMO_MIXES,
        "learning_rate": 1.5e-4,
        "seq_len": 128,
        # The held-out file holds about 15.6k tokens: a direction and an evaluation batch of 6k.
        "batch_tokens": 6144,
        "batches": 1,
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
    mixes = demo_mix_spec(
        assets.model_dir, assets.general_path, assets.general_eval_path, assets.math_path
    )
    code = demo_sweeps(settings, [spec, mixes], plot_dir=assets.model_dir.parent)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return code


def demo_sweep(settings: Settings, spec: dict[str, Any], *, plot_dir: Path) -> int:
    """Serve the API with an in-process worker, run ``spec`` over HTTP, print what it found.

    Returns:
        0 when the sweep succeeded, 1 otherwise.
    """
    return demo_sweeps(settings, [spec], plot_dir=plot_dir)


def demo_sweeps(settings: Settings, specs: list[dict[str, Any]], *, plot_dir: Path) -> int:
    """`demo_sweep` for several sweeps in turn on one server; stops at the first that fails.

    Returns:
        0 when every sweep succeeded, 1 otherwise.
    """
    server = EmbeddedServer(settings, port=0)
    url = server.start()
    _say(f"API with an in-process worker at {url} (database {_redact(settings)})")
    try:
        with SharpmixClient(url, _demo_key(settings)) as client:
            for spec in specs:
                if _one_sweep(client, spec, plot_dir) != 0:
                    return 1
    finally:
        server.shutdown()
    return 0


def _one_sweep(client: SharpmixClient, spec: dict[str, Any], plot_dir: Path) -> int:
    """Run one sweep on the served API and print what it found; 1 when it did not succeed."""
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
    if done.spec.mixes is not None or done.spec.mix_search is not None:
        _report_mixes(trials, rec)
    else:
        _report(trials, rec)
    if done.spec.trajectory is not None:
        _report_trajectories(client.trajectories(sweep.id))
        drawn = plot_dir / f"trajectories-{sweep.id}.png"
        drawn.write_bytes(client.trajectory_plot(sweep.id))
        print(f"trajectory plot: {drawn}")
    print(f"plot: {plot}")
    print(
        f"{done.progress.forwards} forward and {done.progress.backwards} backward passes, "
        f"{done.progress.optimizer_steps} optimizer steps, "
        f"{done.progress.compute_seconds:.0f} s of worker compute"
    )
    return 0


def _report_mixes(trials: list[TrialOut], rec: Recommendation) -> None:
    sets = list(dict.fromkeys(name for t in trials for name in t.weights or {}))
    head = " ".join(f"{name:>15}" for name in sets)
    print(f"\nk = {len(sets)} mixes\n{head} {'eval set':>15} {'eta_c':>10} {'dL at lr':>10}")
    for t in trials:
        shares = " ".join(f"{(t.weights or {}).get(name, 0.0):>15.3g}" for name in sets)
        print(f"{shares} {t.eval_set:>15} {_num(t.eta_c):>10} {_num(t.loss_change):>10}")
    named = ", ".join(f"{n} {w:.3g}" for n, w in (rec.weights or {}).items()) or "none qualifies"
    print(f"\nrecommended mix: {named} (pre-training total {rec.ratio}, objective {rec.objective})")
    print(f"  {rec.reason}")
    for warning in rec.warnings:
        print(f"  warning: {warning}")


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

"""The answer in the sweep's Optuna study: written when the sweep succeeds, and written again, with
its edition, when the sweep is reopened by added candidates and succeeds again."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from service.notify import DeliveryLoop
from tests.service.notify.conftest import ApiFactory
from tests.service.support import add_candidates, finish, finish_reopened

pytestmark = pytest.mark.db


def test_a_reopened_sweep_writes_its_new_answer_into_its_study(
    hooks_api: ApiFactory, db_url: str
) -> None:
    api = hooks_api()
    sweep = api.submit(ratios=[0.0, 0.25])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=sweep["study_name"], storage=db_url)
    for ratio in (0.0, 0.25, 0.75):
        trial = create_trial(
            params={"ratio": ratio},
            distributions={"ratio": FloatDistribution(0.0, 1.0)},
            value=ratio,
        )
        study.add_trial(trial)
    loop = DeliveryLoop(api.app.state.settings, api.app.state.session_factory)

    finish(api, sweep["id"], ratio=0.25)
    loop.run_once()
    attrs = optuna.load_study(study_name=sweep["study_name"], storage=db_url).user_attrs
    assert (attrs["edition"], attrs["answer_ratio"], attrs["answer_trial"]) == (1, 0.25, 1)

    add_candidates(api, sweep["id"], [0.75])
    finish_reopened(api, sweep["id"], ratio=0.75)
    loop.run_once()
    attrs = optuna.load_study(study_name=sweep["study_name"], storage=db_url).user_attrs
    assert (attrs["edition"], attrs["answer_ratio"], attrs["answer_trial"]) == (2, 0.75, 2)
    assert attrs["sweep_id"] == sweep["id"]

    rows = api.client.get(f"/v1/sweeps/{sweep['id']}/deliveries", headers=api.headers).json()
    optuna_rows = [(r["edition"], r["state"]) for r in rows if r["channel"] == "optuna"]
    assert optuna_rows == [(1, "delivered"), (2, "delivered")]

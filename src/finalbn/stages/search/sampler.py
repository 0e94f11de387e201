"""The study's sampler: TPE whose draws for a trial depend on the study's seed and the trial's
place among the sampled trials — not on which process asks, nor on how often the search restarted.

    sampler = TrialSeededSampler(seed=0)      # optuna.create_study(..., sampler=sampler)

A TPESampler(seed=s) seeds one random stream per process: a search resumed after a kill, or a
second worker, starts that stream again and draws the first trials' parameters again (a resumed
study of 12 trials would train its first configurations twice). Here the stream is set anew
before each trial (`before_trial`) from (seed, k), k the number of trials before it that were
sampled — not enqueued: a dead worker's trial retried with its own parameters takes no draw. So
the k-th sampled trial gets the k-th draw whatever happened before: with one worker a study
killed and resumed tries exactly the configurations an uninterrupted one tries (TPE, past its
random start-up trials, also reads the finished trials, which are then the same); with several,
each trial number still draws its own point (no two alike), in an order the timing decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from finalbn.infra.liveness import identity

RETRY_ATTRS = ("fixed_params", "failed_trial")  # system attributes of an enqueued trial, of a retried one


def sampled_before(study: optuna.Study, number: int) -> int:
    """How many trials numbered below `number` drew their parameters (not enqueued, not retries)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.number < number and not any(a in t.system_attrs for a in RETRY_ATTRS)
    )


def trial_seed(seed: int, k: int) -> int:
    """The seed of the k-th sampled trial's draws (numpy's SeedSequence of (seed, k))."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler (default TPESampler) made anew for each trial with seed `trial_seed(seed, k)`."""

    def __init__(self, seed: int, make: Callable[[int], optuna.samplers.BaseSampler] | None = None) -> None:
        self.seed = seed
        self._make = make or (lambda s: optuna.samplers.TPESampler(seed=s))
        self._inner = self._make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # the trial names its worker at once (`liveness.lease` renews it later): a kill between the trial's
        # creation and its lease would leave a RUNNING trial no restart can tell a dead worker's
        study._storage.set_trial_user_attr(trial._trial_id, "worker", identity())
        self._inner = self._make(trial_seed(self.seed, sampled_before(study, trial.number)))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

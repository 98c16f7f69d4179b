"""``model.init_seed``: independent particle draws of the same initial law on the same data."""

from __future__ import annotations

import numpy as np
import pytest

from gnflow import load_config
from gnflow.config import ConfigError
from gnflow.experiment import build_experiment

SMALL = ["data.n_train=12", "data.n_test=5", "model.width=40", 'device="cpu"']


def _draw(*overrides: str) -> tuple[np.ndarray, np.ndarray]:
    experiment = build_experiment(load_config(overrides=[*SMALL, *overrides]))
    return experiment.data.x_train, experiment.weights0.numpy()


def test_init_seed_draws_other_particles_on_the_same_data() -> None:
    x1, w1 = _draw("seed=1")
    x1_again, w1_other = _draw("seed=1", "model.init_seed=2")
    x2, w2 = _draw("seed=2")
    np.testing.assert_array_equal(x1, x1_again)  # the data follow `seed`
    assert not np.allclose(x1, x2)
    np.testing.assert_array_equal(w1_other, w2)  # the particles are those of seed 2
    assert not np.allclose(w1_other[:, :-1], w1[:, :-1])
    # unset and set to the run's own seed are the same draw
    np.testing.assert_array_equal(_draw("seed=1", "model.init_seed=1")[1], w1)


def test_init_seed_must_be_nonnegative() -> None:
    with pytest.raises(ConfigError, match=r"model\.init_seed: must be >= 0 \(or unset\), got -3"):
        load_config(overrides=[*SMALL, "model.init_seed=-3"])


def test_an_unset_init_seed_keeps_the_run_ids_of_runs_written_before_the_key() -> None:
    import hashlib
    import json

    from gnflow.config import config_hash
    from gnflow.config._parse import LOCATION_KEYS, config_to_dict

    config = load_config(overrides=SMALL)
    values = config_to_dict(config)
    values["model"].pop("init_seed", None)  # what a config without the key hashed
    for key in LOCATION_KEYS:
        section, name = key.split(".")
        values.get(section, {}).pop(name, None)
    for key in ("model.init_from", "flow.epsilon_scaling"):  # the other later keys, at their defaults
        section, name = key.split(".")
        values[section].pop(name, None)
    before = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(config) == before
    assert config_hash(load_config(overrides=[*SMALL, "model.init_seed=3"])) != before

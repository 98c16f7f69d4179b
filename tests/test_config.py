"""Config parsing: defaults, overrides, and one clear error per bad input."""

import re

import pytest

from gnflow.config import (
    ConfigError,
    FlowConfig,
    RunConfig,
    apply_overrides,
    config_fields,
    config_from_dict,
    config_from_json,
    config_to_json,
    load_config,
)


def test_defaults_match_spec():
    c = RunConfig()
    assert (c.seed, c.device, c.dtype) == (1, "auto", "float64")
    assert (c.data.kind, c.data.input_dim, c.data.teacher_width, c.data.n_train, c.data.n_test) == (
        "teacher",
        10,
        5,
        500,
        10000,
    )
    assert (c.model.width, c.model.activation, c.model.scaling, c.model.init_scale) == (5000, "silu", "mean_field", 1.0)
    assert (c.model.output_init, c.model.train) == ("zero", "all")
    assert (c.flow.kind, c.flow.damping, c.flow.epsilon) == ("gauss_newton", "eigmin", 1e-7)
    s = c.solver
    assert (s.method, s.rtol, s.atol, s.step_size, s.t_end, s.n_save) == ("dopri5", 1e-6, 1e-9, 10.0, 10000.0, 201)
    assert (s.save_spacing, s.stop_loss_ratio) == ("log", 1e-8)
    assert c.output.path == "data/runs/run.nc"


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[model]\nwidth = 100\nactivation = "tanh"\n[solver]\nrtol = 1e-8\n')
    c = load_config(path, ["model.width=200", "flow.kind=gradient", "solver.save_times=[1, 2.5]", "dtype=float32"])
    assert c.seed == 3 and c.model.width == 200 and c.model.activation == "tanh"
    assert c.flow.kind == "gradient" and c.solver.rtol == 1e-8
    assert c.solver.save_times == (1.0, 2.5)
    assert c.dtype == "float32"


def test_json_round_trip():
    c = config_from_dict({"model": {"width": 7}, "solver": {"save_times": [1.0, 3.0]}})
    assert config_from_json(config_to_json(c)) == c


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"widht": 10}}, "unknown key 'model.widht'; allowed in model: width, activation"),
        ({"modle": {"width": 10}}, "unknown key 'modle'; allowed in the top level: seed, device, dtype"),
        ({"model": {"width": "ten"}}, "model.width: expected an integer, got 'ten'"),
        ({"model": {"width": 0}}, "model.width: must be >= 1, got 0"),
        (
            {"model": {"activation": "sigmoid"}},
            "model.activation: unknown value 'sigmoid'; allowed: silu, tanh, gelu, relu",
        ),
        ({"solver": {"method": "rk45"}}, "solver.method: unknown value 'rk45'; allowed: dopri5"),
        ({"solver": {"rtol": -1.0}}, "solver.rtol: must be a finite number > 0, got -1.0"),
        ({"solver": {"stop_loss_ratio": 1.5}}, "solver.stop_loss_ratio: must lie in [0, 1), got 1.5"),
        ({"solver": {"save_times": [3.0, 1.0]}}, "solver.save_times: must be strictly increasing"),
        ({"solver": {"save_times": [1.0, 2e6]}}, "solver.save_times: every time must lie in [0, solver.t_end"),
        ({"flow": {"damping": "lm"}}, "flow.damping: unknown value 'lm'; allowed: eigmin, constant, relative"),
        ({"flow": {"kind": "adam"}}, "flow.kind: unknown value 'adam'; allowed: gauss_newton, gradient, ggn"),
        ({"flow": {"kind": 3}}, "flow.kind: expected a string, got 3"),
        ({"flow": {"epsilon": -1.0}}, "flow.epsilon: must be a finite number >= 0, got -1.0"),
        ({"data": {"kind": "mnist"}}, "data.kind: unknown data kind 'mnist'; allowed: teacher, file"),
        ({"data": {"kind": "file"}}, 'data.path: required when data.kind = "file"'),
        ({"device": "tpu"}, "device: unknown device 'tpu'"),
        ({"dtype": "float16"}, "dtype: unknown value 'float16'; allowed: float64, float32"),
        ({"output": {"path": "run.h5"}}, "output.path: must name a NetCDF file ending in .nc"),
        ({"observe": {"names": ["nonsense"]}}, "observe.names: unknown observable 'nonsense'"),
        ({"model": {"train": "hidden"}}, 'model.output_init: "zero" with model.train = "hidden" freezes'),
        ({"model": {"init_scale": True}}, "model.init_scale: expected a number, got True"),
        ({"model": 3}, "model: expected a table [model], got 3"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["model.width"])
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        apply_overrides({}, ["modle.width=3"])
    with pytest.raises(ConfigError, match=re.escape("KEY must be 'key' or 'section.key'")):
        apply_overrides({}, ["a.b.c=3"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nwidth = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_config_fields_cover_every_key():
    keys = {row[0] for row in config_fields()}
    assert {"seed", "model.width", "solver.rtol", "flow.epsilon", "output.path", "data.path"} <= keys


def test_registered_names_are_the_allowed_values():
    """flow.kind, flow.damping, data.kind and observe.names list what the registries hold."""
    from gnflow.registry import DAMPING_RULES, DATA_KINDS, FLOW_KINDS, OBSERVABLE_NAMES

    types = {key: type_name for key, type_name, *_ in config_fields()}
    for key, registry in (
        ("flow.kind", FLOW_KINDS),
        ("flow.damping", DAMPING_RULES),
        ("data.kind", DATA_KINDS),
        ("observe.names", OBSERVABLE_NAMES),
    ):
        assert len(registry) >= 2
        for name in registry.names():
            assert repr(name) in types[key], (key, name)
    assert types["flow.kind"] == "one of 'gauss_newton', 'gradient', 'ggn'"
    assert types["observe.names"].startswith("a list of names, each one of 'spectrum', ")


def test_sections_built_directly_are_validated_too():
    with pytest.raises(ConfigError, match=re.escape("flow.kind: unknown value 'adam'; allowed: gauss_newton")):
        FlowConfig(kind="adam")
    with pytest.raises(ConfigError, match=re.escape("flow.damping: unknown value 'lm'")):
        FlowConfig(damping="lm")


def test_every_name_other_modules_import_is_still_in_gnflow_config():
    import gnflow.config as config

    names = [
        "ADAPTIVE_METHODS",
        "EXPONENTIAL_METHODS",
        "FIXED_METHODS",
        "LOCATION_KEYS",
        "SECTIONS",
        "SolverMethod",
        "Activation",
        "apply_overrides",
        "config_fields",
        "config_from_dict",
        "config_from_json",
        "config_hash",
        "config_to_dict",
        "config_to_json",
        "data_kinds",
        "flatten_dotted",
        "get_dotted",
        "load_config",
        "observable_names",
        "register_data_kind",
        "register_observable",
        "set_dotted",
        "split_key",
        "_type_name",
    ]
    for name in names:
        assert hasattr(config, name), name
    # the public objects say where to import them from
    assert RunConfig.__module__ == "gnflow.config" and config_from_dict.__module__ == "gnflow.config"

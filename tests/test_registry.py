"""Registries: a toy damping rule and a toy flow join the config by one decorated class each.

The fixtures register them, the tests build them from a config like any user's run, and the
fixtures unregister them again; the last test checks that no branch on damping or flow classes is
left in the modules that implement them.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from problems import explicit_jacobian, relative_error, scatter_trained, small_problem

from gnflow.config import ConfigError, FlowConfig, config_fields, config_from_dict
from gnflow.damping import DampedGramSolver, EigminDamping, make_damping, register_damping
from gnflow.experiment import build_experiment, make_flow
from gnflow.flows import Flow, FlowDescription, GaussNewtonFlow, GradientFlow, flow_kind, register_flow
from gnflow.ggn import GramGaussNewtonFlow, ggn_schedule
from gnflow.model import Linearization, ParticleModel
from gnflow.registry import DAMPING_RULES, FLOW_KINDS, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 3,
    "device": "cpu",
    "data": {"input_dim": 2, "teacher_width": 2, "n_train": 9, "n_test": 4},
    "model": {"width": 15, "output_init": "normal"},
}


def tiny(**sections: dict[str, object]) -> dict[str, object]:
    return {**TINY, **sections}


# --- the generic registry -----------------------------------------------------------------------


def test_registry_keeps_order_and_names_the_allowed_values() -> None:
    colours: Registry[str] = Registry("paint.colour", "colour")
    colours.add("red", "#f00")
    assert colours.register("green")("#0f0") == "#0f0"
    assert colours.names() == ("red", "green") and "red" in colours and "blue" not in colours
    assert colours.get("green") == "#0f0"
    with pytest.raises(RegistryError, match=re.escape("unknown colour 'blue'; allowed: red, green")):
        colours.get("blue")
    with pytest.raises(RegistryError, match="'red' is registered already"):
        colours.add("red", "#e00")
    colours.add("red", "#f00")  # the same entry again: a module imported twice
    colours.unregister("red")
    assert colours.names() == ("green",)
    with pytest.raises(RegistryError, match="unknown colour 'red'"):
        colours.unregister("red")


# --- a toy damping rule -------------------------------------------------------------------------


@dataclass(frozen=True)
class HalfTraceDamping:
    """eps = kappa * trace(A) / 2: known before the factorization."""

    kappa: float
    name: ClassVar[str] = "toy_half_trace"
    requires: ClassVar[tuple[str, ...]] = ()

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        return self.kappa * torch.diagonal(gram).sum() / 2


@dataclass(frozen=True)
class LiftedEigminDamping:
    """eps = lambda_min(A) + eps0: needs lambda_min for every value (no floor above 0)."""

    eps0: float
    name: ClassVar[str] = "toy_lifted"
    requires: ClassVar[tuple[str, ...]] = ("lambda_min",)
    lambda_min_floor: ClassVar[float] = 0.0

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        lam = torch.linalg.eigvalsh(gram)[0] if lambda_min is None else torch.as_tensor(lambda_min, dtype=torch.float64)
        return lam + self.eps0


@pytest.fixture
def toy_dampings() -> Iterator[None]:
    register_damping(HalfTraceDamping)
    register_damping(LiftedEigminDamping)
    try:
        yield
    finally:
        DAMPING_RULES.unregister(HalfTraceDamping.name)
        DAMPING_RULES.unregister(LiftedEigminDamping.name)


def test_toy_damping_rule_runs_from_a_config(toy_dampings: None) -> None:
    config = config_from_dict(tiny(flow={"damping": "toy_half_trace", "epsilon": 0.3}))
    experiment = build_experiment(config)
    flow = experiment.flow
    assert flow.damping == HalfTraceDamping(0.3)
    w = experiment.weights0
    jac = explicit_jacobian(experiment.model, w, flow.x).numpy()
    a = jac @ jac.T
    eps = 0.3 * np.trace(a) / 2
    g = (experiment.model.predict(w, flow.x) - flow.y).numpy() / flow.n_samples
    expected = -jac.T @ np.linalg.solve(a + eps * np.eye(a.shape[0]), g)
    field = flow(torch.tensor(0.0), w)
    assert relative_error(field, scatter_trained(experiment.model, torch.as_tensor(expected), w.shape[0])) < 1e-9
    assert flow.solve_stats is not None
    assert flow.solve_stats.factorizations == 1 and flow.solve_stats.lanczos_steps == 0


def test_rule_that_requires_lambda_min_gets_it_from_the_lanczos_path(toy_dampings: None) -> None:
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    gram = torch.as_tensor((q * np.geomspace(1e-3, 1.0, 50)) @ q.T)
    g = torch.as_tensor(rng.standard_normal(50))
    solver = DampedGramSolver(make_damping("toy_lifted", 1e-2))
    out = solver(gram, g)
    eps = float(torch.linalg.eigvalsh(gram)[0]) + 1e-2
    assert float(out.epsilon) == pytest.approx(eps, rel=1e-10)
    z = np.linalg.solve(gram.numpy() + eps * np.eye(50), g.numpy())
    assert relative_error(out.direction, z) < 1e-10
    assert solver.stats.lanczos_steps > 0 and solver.stats.factorizations == 1


def test_unregistered_rules_leave_the_config(toy_dampings: None) -> None:
    assert "'toy_lifted'" in dict((k, t) for k, t, *_ in config_fields())["flow.damping"]
    DAMPING_RULES.unregister("toy_lifted")
    try:
        with pytest.raises(ConfigError) as info:
            config_from_dict({"flow": {"damping": "toy_lifted"}})
        assert str(info.value) == (
            "flow.damping: unknown value 'toy_lifted'; allowed: eigmin, constant, relative, toy_half_trace"
        )
    finally:
        register_damping(LiftedEigminDamping)


def test_damping_rules_must_declare_what_they_need() -> None:
    @dataclass(frozen=True)
    class NeedsSpectrum:
        eps0: float
        name: ClassVar[str] = "toy_spectrum"
        requires: ClassVar[tuple[str, ...]] = ("spectrum",)

        def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
            return torch.tensor(self.eps0)

    with pytest.raises(TypeError, match="unknown requirement 'spectrum'; allowed: lambda_min"):
        register_damping(NeedsSpectrum)

    @dataclass(frozen=True)
    class NoFloor(NeedsSpectrum):
        name: ClassVar[str] = "toy_no_floor"
        requires: ClassVar[tuple[str, ...]] = ("lambda_min",)

    with pytest.raises(TypeError, match="requires lambda_min but defines no lambda_min_floor"):
        register_damping(NoFloor)
    with pytest.raises(RegistryError, match="'eigmin' is registered already"):

        @register_damping
        @dataclass(frozen=True)
        class OtherEigmin(EigminDamping):
            pass

    assert DAMPING_RULES.names() == ("eigmin", "constant", "relative")


# --- a toy flow ---------------------------------------------------------------------------------


class ScaledGradientFlow(Flow):
    """dw/dt = -c J^T g, with c = flow.epsilon: the gradient flow in a rescaled time."""

    name = "toy_scaled_gradient"

    def __init__(self, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, scale: float, **kwargs: bool) -> None:
        super().__init__(model, x, y, **kwargs)
        self.scale = scale

    @classmethod
    def from_config(
        cls, config: FlowConfig, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False
    ) -> Flow:
        return cls(model, x, y, config.epsilon, allow_tf32=allow_tf32)

    def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
        return self.scale * residual / self.n_samples


@pytest.fixture
def toy_flow() -> Iterator[type[Flow]]:
    register_flow(ScaledGradientFlow)
    try:
        yield ScaledGradientFlow
    finally:
        FLOW_KINDS.unregister(ScaledGradientFlow.name)


def test_toy_flow_runs_from_a_config(toy_flow: type[Flow]) -> None:
    config = config_from_dict(tiny(flow={"kind": "toy_scaled_gradient", "epsilon": 2.5}))
    experiment = build_experiment(config)
    flow = experiment.flow
    assert type(flow) is toy_flow and flow.damping is None and flow.solve_stats is None
    w = experiment.weights0
    reference = GradientFlow(experiment.model, flow.x, flow.y)(torch.tensor(0.0), w)
    assert relative_error(flow(torch.tensor(0.0), w), 2.5 * reference) < 1e-14
    assert toy_flow.schedule(config.flow, 9, 0) is None
    described = toy_flow.describe(config, 9)
    assert described == FlowDescription(
        flow="toy_scaled_gradient",
        solver="dopri5 (rtol=1e-06, atol=1e-09)",
        title="gnflow toy_scaled_gradient flow of a two-layer network of 15 particles",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # first order: no relu warning
        relu = ParticleModel(input_dim=2, activation="relu")
        make_flow(config.flow, relu, flow.x, flow.y)


def test_second_order_flows_warn_for_relu() -> None:
    model, _, x, y = small_problem(activation="relu")
    for kind in ("gauss_newton", "ggn"):
        with pytest.warns(UserWarning, match="relu is not differentiable"):
            make_flow(FlowConfig(kind=kind, batch_size=5), model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_flow(FlowConfig(kind="gradient"), model, x, y)


def test_unregistered_flow_leaves_the_config(toy_flow: type[Flow]) -> None:
    assert "'toy_scaled_gradient'" in dict((k, t) for k, t, *_ in config_fields())["flow.kind"]
    FLOW_KINDS.unregister("toy_scaled_gradient")
    try:
        with pytest.raises(ConfigError) as info:
            config_from_dict({"flow": {"kind": "toy_scaled_gradient"}})
        assert str(info.value) == "flow.kind: unknown value 'toy_scaled_gradient'; allowed: gauss_newton, gradient, ggn"
        with pytest.raises(RegistryError, match="unknown flow 'toy_scaled_gradient'; allowed: gauss_newton"):
            flow_kind("toy_scaled_gradient")
    finally:
        register_flow(ScaledGradientFlow)


def test_flows_must_be_concrete_and_named() -> None:
    class Unnamed(GradientFlow):
        name = Flow.name

    with pytest.raises(TypeError, match="needs a class attribute name"):
        register_flow(Unnamed)

    class Abstract(Flow):
        name = "toy_abstract"

    with pytest.raises(TypeError, match="is abstract: function_space_direction"):
        register_flow(Abstract)
    assert FLOW_KINDS.names() == ("gauss_newton", "gradient", "ggn")


# --- the built-in entries -----------------------------------------------------------------------


def test_builtin_flow_kinds_and_their_hooks() -> None:
    model, _, x, y = small_problem(n_train=10)
    assert flow_kind("gauss_newton") is GaussNewtonFlow and flow_kind("gradient") is GradientFlow
    assert flow_kind("ggn") is GramGaussNewtonFlow
    gn = make_flow(FlowConfig(damping="relative", epsilon=0.2), model, x, y)
    assert type(gn) is GaussNewtonFlow and gn.damping == make_damping("relative", 0.2)
    ggn = make_flow(FlowConfig(kind="ggn", lam=2.0, alpha=0.5, batch_size=4), model, x, y)
    assert type(ggn) is GramGaussNewtonFlow and ggn.damping == make_damping("constant", 0.25)
    with pytest.raises(ConfigError, match=re.escape("flow.batch_size: must lie in 1..N = 1..10")):
        make_flow(FlowConfig(kind="ggn", batch_size=11), model, x, y)
    gd = make_flow(FlowConfig(kind="gradient"), model, x, y)
    assert gd.damping is None and gd.solve_stats is None

    config = FlowConfig(kind="ggn", batch_size=4, epochs=2, batch_order="shuffled")
    hooked = GramGaussNewtonFlow.schedule(config, 10, 7)
    direct = ggn_schedule(config, 10, 7)
    assert np.array_equal(hooked.step_sizes, direct.step_sizes) and np.array_equal(hooked.save, direct.save)
    assert all(np.array_equal(a, b) for a, b in zip(hooked.batches or (), direct.batches or (), strict=True))
    assert GaussNewtonFlow.schedule(config, 10, 7) is None and GradientFlow.schedule(config, 10, 7) is None


def test_descriptions_name_the_parameters() -> None:
    gn = config_from_dict(tiny(flow={"damping": "constant", "epsilon": 1e-3}, solver={"method": "rk4"}))
    assert GaussNewtonFlow.describe(gn, 9) == FlowDescription(
        flow="gauss_newton (constant damping, epsilon=0.001)",
        solver="rk4 (step_size=10)",
        title="gnflow gauss_newton flow of a two-layer network of 15 particles",
    )
    ggn = config_from_dict(tiny(flow={"kind": "ggn", "lam": 2.0, "alpha": 0.1, "batch_size": 4}))
    described = GramGaussNewtonFlow.describe(ggn, 9)
    assert described.solver == "euler (step_size = b / lam = 2 per full batch of b = 4)"
    assert described.flow.startswith("ggn (lam=2, alpha=0.1, batch_size=4, batch_order=cyclic)")
    assert described.flow.endswith("constant damping alpha/lam = 0.05")
    assert described.title == "gnflow ggn steps of a two-layer network of 15 particles"


# --- no type branches left ----------------------------------------------------------------------

IMPLEMENTATIONS = ("gnflow/flows.py", "gnflow/damping.py", "gnflow/ggn.py", "gnflow/experiment.py")


def _classes_defined(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}


def _names(node: ast.expr) -> set[str]:
    parts = [n for n in ast.walk(node) if isinstance(n, ast.Name | ast.Attribute)]
    return {n.id if isinstance(n, ast.Name) else n.attr for n in parts}


def _is_name_branch(node: ast.AST) -> bool:
    """``config.kind == "gradient"``, ``damping.name == "eigmin"``: a chain over registered names."""
    if not isinstance(node, ast.Compare):
        return False
    sides = (node.left, *node.comparators)
    on_name = any(isinstance(s, ast.Attribute) and s.attr in ("kind", "damping", "name") for s in sides)
    return on_name and any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides)


def test_no_type_branches_on_flows_or_damping_rules() -> None:
    """Dispatch goes through the registries and the classes' own attributes, never through types."""
    classes = set().union(*(_classes_defined(ROOT / p) for p in IMPLEMENTATIONS[:3]))
    assert {"EigminDamping", "GaussNewtonFlow", "GramGaussNewtonFlow", "Flow"} <= classes
    found = []
    for relative in IMPLEMENTATIONS:
        tree = ast.parse((ROOT / relative).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
                and _names(node.args[1]) & classes
            ):
                found.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
            if _is_name_branch(node):
                found.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "type or name branches left:\n" + "\n".join(found)

"""Chunked products over particles equal the unchunked ones; [compute] options; activations."""

from __future__ import annotations

import pytest
import torch
from problems import explicit_gram, explicit_jacobian, scatter_trained

from gnflow._blas import add_outer_product_syrk, blas_applies, eigh, torch_only
from gnflow.config import ConfigError, config_from_dict
from gnflow.damping import EigminDamping
from gnflow.experiment import build_experiment
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.model import ACTIVATIONS, ParticleModel, _add_outer_product, activation_and_derivative


def problem(n: int = 30, m: int = 97, d: int = 3, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(m, d + 2, generator=gen, dtype=torch.float64).to(dtype)
    return x, w


@pytest.mark.parametrize("train", ["all", "hidden", "output"])
@pytest.mark.parametrize("chunk", [1, 10, 96])
def test_chunked_products_equal_unchunked(train: str, chunk: int) -> None:
    x, w = problem()
    whole = ParticleModel(input_dim=3, train=train).linearize(w, x)
    chunked = ParticleModel(input_dim=3, train=train, chunk_size=chunk).linearize(w, x)
    assert whole.cached is not None and chunked.cached is None
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(30, generator=gen, dtype=torch.float64)
    delta = torch.randn(97, 5, generator=gen, dtype=torch.float64)
    gram = whole.gram()
    torch.testing.assert_close(chunked.gram(), gram, rtol=1e-13, atol=1e-15 * float(gram.abs().max()))
    torch.testing.assert_close(chunked.predict(), whole.predict(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(chunked.vjp(c), whole.vjp(c), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(chunked.jvp(delta), whole.jvp(delta), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(chunked.s, whole.s)
    torch.testing.assert_close(chunked.t, whole.t)


@pytest.mark.parametrize("threads", [1, 2])
def test_gram_equals_explicit_jacobian_product(threads: int) -> None:
    """A = J J^T with J from torch.func, by dsyrk (one thread) and by the split symmetric-block product."""
    x, w = problem(n=600, m=40, d=2)
    model = ParticleModel(input_dim=2, activation="gelu", chunk_size=15)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gram = model.linearize(w, x).gram()
    finally:
        torch.set_num_threads(before)
    if threads == 1:  # dsyrk computes one triangle and copies it
        assert torch.equal(gram, gram.T)
    oracle = torch.as_tensor(explicit_gram(model, w, x))
    torch.testing.assert_close(gram, oracle, rtol=1e-12, atol=1e-14 * float(gram.abs().max()))


@pytest.mark.parametrize("n", [7, 512, 801])
def test_symmetric_block_product(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    a, b = (torch.randn(n, k, generator=gen, dtype=torch.float64) for k in (13, 6))
    total = _add_outer_product(_add_outer_product(None, a), b)
    reference = a @ a.T + b @ b.T
    torch.testing.assert_close(total, reference, rtol=1e-13, atol=1e-13)


def test_float32_state_accumulates_gram_in_float64() -> None:
    x, w = problem()
    model = ParticleModel(input_dim=3, chunk_size=20)
    gram32 = model.linearize(w.float(), x.float()).gram()
    gram64 = model.linearize(w.float().double(), x.float().double()).gram()
    assert gram32.dtype == torch.float64
    # only the float32 activations differ: relative error of single precision, not of a sum of M terms
    torch.testing.assert_close(gram32, gram64, rtol=1e-5, atol=1e-6 * float(gram64.abs().max()))


@pytest.mark.parametrize("flow_kind", ["gauss_newton", "gradient"])
def test_chunked_field_equals_unchunked(flow_kind: str) -> None:
    x, w = problem()
    y = torch.sin(x[:, 0])
    fields = []
    for chunk in (0, 8):
        model = ParticleModel(input_dim=3, chunk_size=chunk)
        flow = (
            GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
            if flow_kind == "gauss_newton"
            else GradientFlow(model, x, y)
        )
        fields.append(flow(torch.tensor(0.0), w))
    torch.testing.assert_close(fields[1], fields[0], rtol=1e-9, atol=1e-12 * float(fields[0].abs().max()))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivative_matches_autograd(name: str) -> None:
    z = torch.linspace(-4, 4, 201, dtype=torch.float64).requires_grad_(True)
    value, derivative = activation_and_derivative(name, z.detach())
    reference = {
        "silu": torch.nn.functional.silu,
        "tanh": torch.tanh,
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
    }[name]
    out = reference(z)
    (grad,) = torch.autograd.grad(out.sum(), z)
    torch.testing.assert_close(value, out.detach(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(derivative, grad, rtol=1e-13, atol=1e-15)


def test_compute_section_reaches_the_model_and_flow() -> None:
    config = config_from_dict(
        {
            "device": "cpu",
            "data": {"n_train": 20, "n_test": 0},
            "model": {"width": 30},
            "compute": {"chunk_size": 7, "block_entries": 4096, "allow_tf32": True},
        }
    )
    experiment = build_experiment(config)
    assert experiment.model.chunk_size == 7 and experiment.model.block_entries == 4096
    assert experiment.flow.allow_tf32 is True
    assert experiment.model.particle_chunk(20, 30) == 7
    assert ParticleModel(input_dim=2, block_entries=100).particle_chunk(20, 30) == 5


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"chunk_size": -1}, "compute.chunk_size"),
        ({"block_entries": 0}, "compute.block_entries"),
        ({"chunks": 3}, "unknown key 'compute.chunks'"),
    ],
)
def test_compute_section_errors(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"compute": section})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_cuda_float32_field_matches_cpu_float64(allow_tf32: bool) -> None:
    x, w = problem(n=200, m=3000, d=5)
    y = torch.sin(x[:, 0])
    fields = {}
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    for device, dtype in (("cpu", torch.float64), ("cuda", torch.float32)):
        model = ParticleModel(input_dim=5, chunk_size=1000)
        flow = GaussNewtonFlow(
            model,
            x.to(device, dtype),
            y.to(device, dtype),
            EigminDamping(1e-7),
            allow_tf32=allow_tf32,
        )
        fields[device] = flow(torch.tensor(0.0), w.to(device, dtype)).cpu().double()
        assert flow.solver.stats.eigvalsh_fallbacks == 0
    assert torch.backends.cuda.matmul.allow_tf32 == tf32_before  # restored after the evaluation
    scale = float(fields["cpu"].abs().max())
    torch.testing.assert_close(fields["cuda"], fields["cpu"], rtol=0, atol=(1e-2 if allow_tf32 else 1e-3) * scale)


@pytest.mark.parametrize("n", [7, 512, 801])
def test_symmetric_block_product_under_autograd(n: int) -> None:
    """With a tensor that needs gradients the product stays in torch (split blocks), and its gradient is right."""
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    total = _add_outer_product(None, a)
    torch.testing.assert_close(total, a.detach() @ a.detach().T, rtol=1e-13, atol=1e-13)
    weight = torch.randn(n, n, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((total * weight).sum(), a)
    torch.testing.assert_close(grad, (weight + weight.T) @ a.detach(), rtol=1e-12, atol=1e-12)


def test_syrk_accumulates_exactly_symmetric_products_of_strided_blocks() -> None:
    """dsyrk over non-contiguous column chunks: the sum of the products, symmetric bit for bit."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 70, generator=gen, dtype=torch.float64)
    total = None
    for start in range(0, 70, 25):
        total = add_outer_product_syrk(total, a[:, start : start + 25])
    assert total is not None
    assert torch.equal(total, total.T)
    torch.testing.assert_close(total, a @ a.T, rtol=1e-13, atol=1e-13)


def test_syrk_only_at_one_torch_thread_with_its_blas_at_one_thread() -> None:
    """dsyrk runs when torch has one thread, and then its BLAS is held at one thread (the pools compete)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = torch.get_num_threads()
    a = torch.randn(40, 8, dtype=torch.float64)
    try:
        torch.set_num_threads(2)
        assert not blas_applies(a)
        torch.set_num_threads(1)
        assert blas_applies(a)
        assert not blas_applies(a.float()) and not blas_applies(a.clone().requires_grad_())
        add_outer_product_syrk(None, a)
        threadpoolctl.threadpool_limits(limits=2, user_api="blas")  # something else raises it
        add_outer_product_syrk(None, a)
        blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas), blas
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("train", ["all", "hidden", "output"])
@pytest.mark.parametrize("chunk", [0, 10])
def test_jvp_and_vjp_equal_the_autograd_jacobian_at_one_and_two_threads(
    threads: int, train: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """J delta and J^T c (numpy's BLAS at one torch thread, torch at two) against the N x P Jacobian."""
    monkeypatch.setattr("gnflow.model.PRODUCT_MIN_ENTRIES", 0)  # the BLAS path at this small size
    x, w = problem()
    model = ParticleModel(input_dim=3, train=train, chunk_size=chunk)
    jac = explicit_jacobian(model, w, x)
    mask = model.trainable_mask(dtype=torch.bool)
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(30, generator=gen, dtype=torch.float64)
    delta = torch.randn(97, 5, generator=gen, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        lin = model.linearize(w, x)
        assert blas_applies(lin.t, c) == (threads == 1)
        vjp, jvp = lin.vjp(c), lin.jvp(delta)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(vjp, scatter_trained(model, jac.T @ c, 97), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(jvp, jac @ delta[:, mask].reshape(-1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2])
def test_eigh_diagonalizes_at_one_and_two_threads(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's LAPACK at one torch thread, torch's at two: ascending eigenvalues equal to scipy's,
    orthonormal eigenvectors that rebuild the matrix."""
    monkeypatch.setattr("gnflow._blas.EIGH_MIN", 0)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(60, 200, generator=gen, dtype=torch.float64)
    a = g @ g.T
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        values, vectors = eigh(a)
    finally:
        torch.set_num_threads(before)
    reference = scipy_linalg.eigvalsh(a.numpy())
    np_values = values.numpy()
    assert (np_values[1:] >= np_values[:-1]).all()
    torch.testing.assert_close(values, torch.from_numpy(reference), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(60, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, a, rtol=1e-12, atol=1e-10)


def test_torch_only_keeps_every_product_in_torch() -> None:
    """Inside torch_only nothing goes to numpy's BLAS, at one thread too; the routing is back after it."""
    a = torch.randn(40, 8, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch_only():
            assert not blas_applies(a)
        assert blas_applies(a)
    finally:
        torch.set_num_threads(before)

"""Hochbruck and Ostermann's stiff-order-4 exponential Runge--Kutta step against kernel_etd4 (a route tried).

kernel_etd4 is Krogstad's ETDRK4-B: four stages, stiff order 3 (it satisfies the weak form of
the fourth-order conditions only). On the paper-size gradient flow its error falls about as
steps^-3.1 to steps^-3.4, and at the same steps it is only 2--6x more accurate than kernel_etd3 (20--60x at
N = 100). Hochbruck and Ostermann (SIAM J. Numer. Anal. 43, 2005, p. 1082) give a five-stage
method of stiff order 4; this script runs it on the same kernel splitting (:class:`HochOst4Solver`,
the same embedded estimate and controller as kernel_etd4, one more field evaluation per step)
paired with kernel_etd4 at each tolerance, one thread, fresh experiment per run, and writes
``data/studies/long_horizon/stiff_order_four/<scale>_tau<tau0>.{json,md}``: CPU seconds, steps,
evaluations, and the final-weight and test-loss errors against a reference run of either method.

    python studies/long_horizon/stiff_order_four.py --scale small --rtol 1e-4 1e-5 1e-6 --reference 1e-8
    python studies/long_horizon/stiff_order_four.py --scale paper --rtol 1e-5 1e-6 --reference 1e-8 \
        --reference-method kernel_etd4                                                      # ~20 min

Stages, with phi_{k,i} = phi_k(c_i h L), c = (0, 1/2, 1/2, 1, 1/2), v_i = h sum_j a_ij G(v_j):

    a21 = phi_{1,2} / 2
    a31 = phi_{1,3} / 2 - phi_{2,3},  a32 = phi_{2,3}
    a41 = phi_{1,4} - 2 phi_{2,4},    a42 = a43 = phi_{2,4}
    a52 = a53 = phi_{2,5} / 2 - phi_{3,4} + phi_{2,4} / 4 - phi_{3,5} / 2,   a54 = phi_{2,5} / 4 - a52,
    a51 = phi_{1,5} / 2 - 2 a52 - a54
    b1 = phi_1 - 3 phi_2 + 4 phi_3,  b2 = b3 = 0,  b4 = -phi_2 + 4 phi_3,  b5 = 4 phi_2 - 8 phi_3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import work_precision as wp

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.exponential import FrozenKernel, error_ratio
from gnflow.exponential_rk import KernelETD4Solver, _h_phi, _Splitting, phi_functions
from gnflow.studies import measurement_provenance

OUT = Path("data/studies/long_horizon/stiff_order_four")


def _phi(h: float, theta: float, phis: list[torch.Tensor], k: int, c: float) -> tuple[float, torch.Tensor]:
    """h c phi_k(theta h L) as (f(0), divided difference) for :meth:`_Splitting.apply`."""
    return _h_phi(h, theta, phis, {k: c / theta**k})


def _plus(*terms: tuple[float, torch.Tensor]) -> tuple[float, torch.Tensor]:
    f0 = sum(t[0] for t in terms)
    divided = terms[0][1]
    for t in terms[1:]:
        divided = divided + t[1]
    return f0, divided


class HochOst4Solver(KernelETD4Solver):
    """Hochbruck and Ostermann's five-stage exponential Runge--Kutta method of stiff order 4 on
    the kernel splitting, with kernel_etd4's embedded second-order estimate and controller; no
    continuous extension (states inside a step come from the kernel-exponential interpolant)."""

    def _etd4(self, kernel: FrozenKernel, h: float) -> tuple[torch.Tensor, float]:
        s = _Splitting(self, kernel)
        full = phi_functions(-h * s.mu_n, 4)
        half = phi_functions(-0.5 * h * s.mu_n, 4)
        g0 = s.remainder_at_start(kernel.residual)
        v2 = s.apply(*_phi(h, 0.5, half, 1, 0.5), g0)
        g2 = s.remainder(v2)
        v3 = s.combine((1.0, v2), (1.0, s.apply(*_phi(h, 0.5, half, 2, 1.0), s.combine((1.0, g2), (-1.0, g0)))))
        g3 = s.remainder(v3)
        pair = s.combine((1.0, g2), (1.0, g3), (-2.0, g0))  # G2 + G3 - 2 G0
        v4 = s.combine(
            (1.0, s.apply(*_phi(h, 1.0, full, 1, 1.0), g0)), (1.0, s.apply(*_phi(h, 1.0, full, 2, 1.0), pair))
        )
        g4 = s.remainder(v4)
        a52 = _plus(
            _phi(h, 0.5, half, 2, 0.5),
            _phi(h, 1.0, full, 3, -1.0),
            _phi(h, 1.0, full, 2, 0.25),
            _phi(h, 0.5, half, 3, -0.5),
        )
        a54 = _plus(_phi(h, 0.5, half, 2, 0.25), (-a52[0], -a52[1]))
        v5 = s.combine((1.0, v2), (1.0, s.apply(*a52, pair)), (1.0, s.apply(*a54, s.combine((1.0, g4), (-1.0, g0)))))
        g5 = s.remainder(v5)
        b1 = _plus(_phi(h, 1.0, full, 1, 1.0), _phi(h, 1.0, full, 2, -3.0), _phi(h, 1.0, full, 3, 4.0))
        b4 = _plus(_phi(h, 1.0, full, 2, -1.0), _phi(h, 1.0, full, 3, 4.0))
        b5 = _plus(_phi(h, 1.0, full, 2, 4.0), _phi(h, 1.0, full, 3, -8.0))
        v = s.combine((1.0, s.apply(*b1, g0)), (1.0, s.apply(*b4, g4)), (1.0, s.apply(*b5, g5)))
        # kernel_etd4's estimate: v - v2nd, v2nd = h [phi_1 G0 + 2 phi_2 (G2 - G0)]
        second = s.combine(
            (1.0, s.apply(*_phi(h, 1.0, full, 1, 1.0), g0)),
            (1.0, s.apply(*_phi(h, 1.0, full, 2, 2.0), s.combine((1.0, g2), (-1.0, g0)))),
        )
        d = s.combine((1.0, v), (-1.0, second))
        new = s.weights(v)
        err = s.lin.vjp(d.q).to(s.w0.dtype)
        if d.dense is not None:
            err = err + d.dense
        self._dense = None
        return new, error_ratio(s.w0, new - err, new, self.rtol, self.atol)


SOLVERS = {"kernel_etd4": KernelETD4Solver, "hochost4": HochOst4Solver}


def run(config, method: str, rtol: float) -> tuple[dict, np.ndarray]:
    """One run to the horizon on a fresh experiment: its record and final weights."""
    experiment = build_experiment(config)
    solver = SOLVERS[method](experiment.flow, experiment.weights0, rtol=rtol, atol=rtol * 1e-3)
    t_end, accepted, rejected = config.solver.t_end, 0, 0
    start = time.process_time()
    while solver.t < t_end:
        if solver.attempt(t_end) is None:
            rejected += 1
        else:
            accepted += 1
    cpu = time.process_time() - start
    weights = solver.kernel.weights
    record = {
        "method": method,
        "rtol": rtol,
        "cpu_s": cpu,
        "steps": accepted,
        "rejected": rejected,
        "evaluations": solver.nfe,
        "test_loss": wp._test_loss(experiment, weights),
    }
    return record, weights.double().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["smoke", "small", "paper"], default="small")
    parser.add_argument("--tau0", type=float, default=1.0)
    parser.add_argument("--rtol", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--reference", type=float, default=1e-8, help="rtol of the reference run")
    parser.add_argument("--reference-method", choices=sorted(SOLVERS), default="hochost4")
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = config_from_dict(wp.base_config(args.scale, "gradient", args.tau0, None))
    w0 = build_experiment(config).weights0.double().numpy()
    reference, ref_weights = run(config, args.reference_method, args.reference)
    print(json.dumps(reference), flush=True)
    records = []
    for rtol in args.rtol:
        for method in SOLVERS:
            record, weights = run(config, method, rtol)
            record["weight_error"] = float(np.linalg.norm(weights - ref_weights) / np.linalg.norm(ref_weights - w0))
            record["test_loss_error"] = abs(record["test_loss"] / reference["test_loss"] - 1.0)
            print(json.dumps(record), flush=True)
            records.append(record)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.scale}_tau{args.tau0:g}"
    result = {"provenance": measurement_provenance(), "load_average": list(os.getloadavg())}
    result |= {"scale": args.scale, "tau0": args.tau0}
    result |= {"reference": reference, "runs": records}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# hochost4 against kernel_etd4 ({args.scale}, tau0 = {args.tau0:g}, gradient flow)",
        "",
        f"Reference: {args.reference_method} at rtol {args.reference:g}"
        f" ({reference['steps']} steps, {reference['cpu_s']:.1f} CPU s);"
        " atol = rtol * 1e-3; one torch thread; errors relative to the weight change and to the test loss.",
        "",
        "| rtol | method | CPU s | steps | evaluations | weight error | test-loss error |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rtol']:g} | {r['method']} | {r['cpu_s']:.1f} | {r['steps']} | {r['evaluations']} |"
        f" {r['weight_error']:.2e} | {r['test_loss_error']:.2e} |"
        for r in records
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

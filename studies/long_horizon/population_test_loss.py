"""The test-loss errors of the paper-size runs on fresh test samples: sample accident or property of the solution?

The work-precision table measures each run's test loss on the study's one test sample (10^4
points). A run's error in the test loss is the sum of a part that any sample sees (the error in
the population risk) and a part that depends on the sample. This script evaluates the final weights
of every paper-size run of one tau0 (``kernel_etd3_paper.json``'s weights files, written by
``paper_etd3.py``) on ``--samples`` fresh test samples of 10^4 points from the same teacher (inputs
N(0, I_d) from a fixed seed, labels the teacher's outputs), and writes
``data/studies/long_horizon/paper/population_test_loss_tau<tau0>.{json,md}``: per run, the relative
test-loss error against the reference weights on the study's sample, on the pooled fresh samples
(the population estimate, 10^6 points by default), the population error's 95% interval, and the
spread (standard deviation) of the error over the fresh samples.

    python studies/long_horizon/population_test_loss.py --tau0 1 --reference kernel_etd4 4e-7   # ~1 min
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_etd3 as paper
import work_precision as wp

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.model import ParticleModel
from gnflow.studies import measurement_provenance

SAMPLE_SEED = 20261203
SAMPLE_SIZE = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau0", type=float, default=1.0)
    parser.add_argument("--reference", nargs=2, metavar=("METHOD", "RTOL"), default=["kernel_etd4", "4e-7"])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--directory", type=Path, default=paper.OUT.parent)
    parser.add_argument(
        "--scale", choices=sorted(wp.SCALES), default="paper", help="the runs' scale (paper_etd3.py: paper)"
    )
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error(f"--samples must be at least 2 (a spread needs two samples), got {args.samples}")
    torch.set_num_threads(1)
    config = config_from_dict(wp.base_config(args.scale, "gradient", args.tau0, None))
    experiment = build_experiment(config)
    data = experiment.data
    if data.teacher_weights is None:
        raise SystemExit("population_test_loss: the task has no teacher to draw fresh samples from")
    teacher = torch.as_tensor(data.teacher_weights)
    oracle = ParticleModel(input_dim=data.input_dim, activation=config.model.activation, scaling="mean_field")
    rng = np.random.default_rng(SAMPLE_SEED)
    samples = [(experiment.tensor(data.x_test), experiment.tensor(data.y_test))]
    for _ in range(args.samples):
        x = torch.as_tensor(rng.standard_normal((SAMPLE_SIZE, data.input_dim)))
        samples.append((experiment.tensor(x.numpy()), experiment.tensor(oracle.predict(teacher, x).numpy())))

    def losses(path: Path) -> np.ndarray:
        w = torch.as_tensor(np.load(path))
        return np.array([wp.half_mse(experiment, w, x, y) for x, y in samples])

    ref_method, ref_rtol = args.reference[0], float(args.reference[1])
    ref_path = paper._weights_path(args.tau0, ref_rtol, ref_method, args.directory)
    if not ref_path.exists():
        raise SystemExit(f"population_test_loss: no weights file {ref_path} (run paper_etd3.py for it first)")
    ref = losses(ref_path)
    records = json.loads((args.directory / paper.OUT.name).read_text())
    rows = []
    for key, record in sorted(records.items()):
        if record["tau0"] != args.tau0:
            continue
        method = paper._method(record)
        path = paper._weights_path(args.tau0, record["rtol"], method, args.directory)
        if path == ref_path or not path.exists():
            continue
        run = losses(path)
        standard = run[0] / ref[0] - 1.0
        fresh = run[1:] / ref[1:] - 1.0
        pooled = run[1:].mean() / ref[1:].mean() - 1.0
        rows.append(
            {
                "key": key,
                "method": method,
                "rtol": record["rtol"],
                "cpu_s": record["cpu_s"],
                "measured": wp.measured_at(record),
                "standard_sample": float(standard),
                "pooled_fresh": float(pooled),
                "fresh_sd": float(fresh.std(ddof=1)),
                # the population error's 95% interval from the per-sample errors (mean +- 1.96 sd / sqrt(K))
                "interval_95": [
                    float(fresh.mean() - 1.96 * fresh.std(ddof=1) / np.sqrt(len(fresh))),
                    float(fresh.mean() + 1.96 * fresh.std(ddof=1) / np.sqrt(len(fresh))),
                ],
            }
        )
    stem = f"population_test_loss_tau{args.tau0:g}"  # tau0 0.1: no suffix to replace
    json_path, md_path = args.directory / f"{stem}.json", args.directory / f"{stem}.md"
    result = {"provenance": measurement_provenance(), "tau0": args.tau0, "samples": args.samples}
    result |= {
        "sample_size": SAMPLE_SIZE,
        "sample_seed": SAMPLE_SEED,
        "reference": f"{ref_method} at rtol {ref_rtol:g}",
    }
    json_path.write_text(json.dumps(result | {"runs": rows}, indent=1))
    lines = [
        f"# Test-loss errors on fresh samples (paper size, tau0 = {args.tau0:g})",
        "",
        f"Relative test-loss error against {ref_method} at rtol {ref_rtol:g}: on the study's test sample"
        f" ({data.n_test} points), on {args.samples} fresh samples of {SAMPLE_SIZE} points from the same teacher"
        " pooled (the population estimate), the population error's 95% interval from the per-sample errors"
        " (mean +- 1.96 sd / sqrt(samples)), and the standard deviation of the error over the fresh samples."
        " CPU seconds as in the work-precision table (compare only runs measured together).",
        "",
        "| method | rtol | CPU s | measured (UTC, end; load) | study's sample | pooled fresh samples"
        " | 95% interval (population) | sd over samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['rtol']:g} | {r['cpu_s']:.1f} | {r['measured']} | {r['standard_sample']:+.2e} |"
        f" {r['pooled_fresh']:+.2e} | [{r['interval_95'][0]:+.2e}, {r['interval_95'][1]:+.2e}] | {r['fresh_sd']:.2e} |"
        for r in sorted(rows, key=lambda r: (r["method"], -r["rtol"]))
    ]
    md_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

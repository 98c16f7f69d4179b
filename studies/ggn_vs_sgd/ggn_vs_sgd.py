"""GGN versus SGD with momentum (and Adam) on a real regression task: loss per epoch and time.

Usage::

    gnflow study ggn_vs_sgd --scale small               # writes data/studies/ggn_vs_sgd/small/
    python studies/ggn_vs_sgd/ggn_vs_sgd.py --scale small --epochs 5 -o /tmp/quick

For each seed (train/test split, initial network, batch order) every optimizer trains the same
initial network on the same shuffled batches. SGD and Adam run for every learning rate of their
grid; the one with the lowest final training loss is kept. Each history is written as a NetCDF
file; ``summary.json`` holds every run of every seed, and ``report.md`` the two claims of Cai et
al. (2019) decided on per-seed paired ratios (:mod:`gnflow.verdicts`), with the loss per epoch and
the optimizer time per epoch of the first seed. The option
``epochs`` (the script's ``--epochs``) replaces the scale's number of epochs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from gnflow.config import ConfigError, DataConfig
from gnflow.data import make_data
from gnflow.dataset import atomic_write_json, write_dataset
from gnflow.ggn import GGN
from gnflow.studies import (
    Claim,
    StudyContext,
    StudyError,
    StudyReport,
    fmt,
    run_study,
    save_study_figure,
    table,
)
from gnflow.training import history_dataset, mlp, train_module
from gnflow.verdicts import paired_comparison

logger = logging.getLogger("ggn_vs_sgd")

TITLE = "Cai et al. (2019) on real data: mini-batch GGN against SGD with momentum and Adam"
OPTIONS = ("epochs",)


def run(settings: dict[str, Any], context: StudyContext) -> StudyReport:
    """Train GGN, SGD (every learning rate) and Adam (every learning rate) from one network per seed."""
    unknown = sorted(set(context.options) - set(OPTIONS))
    if unknown:
        raise StudyError(f"ggn_vs_sgd: unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    s = settings
    epochs = int(context.options.get("epochs", s["epochs"]))
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    out = context.out_dir
    seeds = [int(seed) for seed in s["seeds"]]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"ggn_vs_sgd: seeds must be at least two distinct seeds, got {seeds}")
    per_seed = {seed: _train_all(s, epochs, seed, out) for seed in seeds}
    first = per_seed[seeds[0]]
    chosen, ratios, data, net0, common = first["chosen"], first["ratios"], first["data"], first["net0"], first["common"]
    g = s["ggn"]
    network = f"{data.input_dim}-{'-'.join(map(str, s['hidden']))}-1 {s['activation']}, float64"
    summary = {
        "data": data.name,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "network": network,
        "n_parameters": sum(p.numel() for p in net0.parameters()),
        "torch_threads": torch.get_num_threads(),
        **{k: v for k, v in common.items() if k != "seed"},
        "seeds": seeds,
        "per_seed": {
            str(seed): {"best": r["chosen"], **r["ratios"], "all_runs": r["results"]} for seed, r in per_seed.items()
        },
    }
    atomic_write_json(out / "summary.json", summary)
    setup = [
        f"{data.name}: N = {data.n_train} train / {data.n_test} test; network {network} "
        f"({summary['n_parameters']} parameters); loss ||f(X) - y||^2 / (2N) on standardized targets",
        f"batch {common['batch_size']} ({common['batch_order']}), {epochs} epochs, seeds {seeds} (each seed "
        "draws the train/test split, the initial network and the batch order; every optimizer of a seed starts "
        f"from the same network on the same batches), "
        f"{summary['torch_threads']} torch thread(s)",
        f"GGN lam = {g['lam']:g}, alpha = {g['alpha']:g}; SGD momentum {s['sgd']['momentum']:g}, lr in "
        f"{s['sgd']['lr']}; Adam lr in {s['adam']['lr']}; the best final training loss of each grid is reported",
    ]
    return StudyReport(
        title=TITLE,
        setup=setup,
        claims=_claims(per_seed, seeds, float(s["overhead_limit"])),
        figures=_figures(chosen, ratios, context, seeds[0]),
        sections={f"Loss per epoch and time (seed {seeds[0]})": _tables(chosen, ratios, epochs)},
    )


def _train_all(s: dict[str, Any], epochs: int, seed: int, out: Path) -> dict[str, Any]:
    """GGN, SGD (every learning rate) and Adam (every learning rate) from one network of ``seed``."""
    data = make_data(DataConfig(kind=s["data"], test_fraction=s["test_fraction"]), activation="tanh", seed=seed)
    net0 = mlp(data.input_dim, s["hidden"], s["activation"], seed)
    common = {"epochs": epochs, "batch_size": s["batch_size"], "batch_order": s["batch_order"], "seed": seed}

    def train(label: str, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> dict[str, Any]:
        net = copy.deepcopy(net0)
        optimizer = make_optimizer(net)
        history = train_module(net, optimizer, data, **common)
        ds = history_dataset(
            history,
            optimizer=label,
            model=net,
            data=data,
            **{k: common[k] for k in ("batch_size", "batch_order", "seed")},
        )
        write_dataset(ds, out / f"seed{seed}_{label.replace(' ', '_').replace('=', '')}.nc")
        epoch_times = np.diff(history.wall_time_s)
        cpu_times = np.diff(history.cpu_time_s)
        result = {
            "optimizer": label,
            "status": history.status,
            "train_loss": history.train_loss,
            "test_loss": history.test_loss,
            "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times.size else float("nan"),
            "min_seconds_per_epoch": float(np.min(epoch_times)) if epoch_times.size else float("nan"),
            "cpu_seconds_per_epoch": float(np.mean(cpu_times)) if cpu_times.size else float("nan"),
        }
        logger.info(
            "seed %d %s: final train %.4g, test %.4g, %.3f s/epoch (min %.3f, CPU %.3f) (%s)",
            seed,
            label,
            history.train_loss[-1],
            history.test_loss[-1],
            result["seconds_per_epoch"],
            result["min_seconds_per_epoch"],
            result["cpu_seconds_per_epoch"],
            history.status,
        )
        return result

    g = s["ggn"]
    results = {
        "ggn": [
            train(
                f"GGN lam={g['lam']:g} alpha={g['alpha']:g}",
                lambda n: GGN(n.parameters(), lam=g["lam"], alpha=g["alpha"]),
            )
        ]
    }
    results["sgd"] = [
        train(
            f"SGD lr={lr:g} momentum={s['sgd']['momentum']:g}",
            lambda n, lr=lr: torch.optim.SGD(n.parameters(), lr=lr, momentum=s["sgd"]["momentum"]),
        )
        for lr in s["sgd"]["lr"]
    ]
    results["adam"] = [
        train(f"Adam lr={lr:g}", lambda n, lr=lr: torch.optim.Adam(n.parameters(), lr=lr)) for lr in s["adam"]["lr"]
    ]

    def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
        # chosen on the training loss the claims are about (never on the test set)
        finite = [r for r in runs if np.isfinite(r["train_loss"][-1])]
        return min(finite, key=lambda r: r["train_loss"][-1]) if finite else runs[0]

    chosen = {k: best(v) for k, v in results.items()}
    ratios = {
        name: {k: v[key] / chosen["sgd"][key] for k, v in chosen.items()}
        for name, key in (
            ("time_ratio_to_sgd", "seconds_per_epoch"),
            ("min_time_ratio_to_sgd", "min_seconds_per_epoch"),
            ("cpu_time_ratio_to_sgd", "cpu_seconds_per_epoch"),
        )
    }
    return {"data": data, "net0": net0, "common": common, "results": results, "chosen": chosen, "ratios": ratios}


def _claims(per_seed: dict[int, dict[str, Any]], seeds: list[int], limit: float) -> list[Claim]:
    """Both claims decided on per-seed paired ratios (gnflow.verdicts), one value per seed."""

    def final(seed: int, arm: str) -> float:
        loss = per_seed[seed]["chosen"][arm]["train_loss"][-1]
        return float(loss) if np.isfinite(loss) else float("inf")  # a diverged run never reached a loss

    def cpu(seed: int, arm: str) -> float:
        return float(per_seed[seed]["chosen"][arm]["cpu_seconds_per_epoch"])

    sgd_label = per_seed[seeds[0]]["chosen"]["sgd"]["optimizer"].split(" lr=")[0]
    loss = paired_comparison(
        [final(seed, "ggn") for seed in seeds],
        [final(seed, "sgd") for seed in seeds],
        claim="final training loss GGN / best SGD",
        numerator_label="GGN",
        denominator_label=f"best {sgd_label}",
        seeds=seeds,
        direction="less",
    )
    overhead = paired_comparison(
        [cpu(seed, "ggn") for seed in seeds],
        [limit * cpu(seed, "sgd") for seed in seeds],
        claim=f"CPU time per epoch GGN / ({limit:g} x SGD)",
        numerator_label="GGN",
        denominator_label=f"{limit:g} x SGD",
        seeds=seeds,
        direction="less",
    )
    return [
        Claim(
            "Mini-batch GGN reaches a lower training loss than SGD with momentum in the same number of epochs.",
            "",
            loss.verdict,
            "SGD's learning rate is the best of its grid per seed, chosen on the training loss",
            comparison=loss,
        ),
        Claim(
            "GGN's cost per epoch is a small overhead over SGD's (so it also wins per second).",
            "",
            overhead.verdict,
            f"small overhead: at most {limit:g} times SGD's CPU time per epoch, on this machine's CPU",
            comparison=overhead,
        ),
    ]


def _tables(chosen: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]], epochs: int) -> list[str]:
    losses = [
        [str(e), *[fmt(v["train_loss"][e], 4) if e < len(v["train_loss"]) else "nan" for v in chosen.values()]]
        for e in range(epochs + 1)
    ]
    lines = table(["epoch", *[f"{v['optimizer']} train" for v in chosen.values()]], losses)
    times = [
        [
            v["optimizer"],
            fmt(v["train_loss"][-1], 4),
            fmt(v["test_loss"][-1], 4),
            fmt(v["seconds_per_epoch"], 4),
            fmt(v["min_seconds_per_epoch"], 4),
            fmt(v["cpu_seconds_per_epoch"], 4),
            *[fmt(ratios[name][k]) for name in ("time_ratio_to_sgd", "min_time_ratio_to_sgd", "cpu_time_ratio_to_sgd")],
        ]
        for k, v in chosen.items()
    ]
    header = ["optimizer", "final train", "final test", "wall s/epoch (mean)", "(min)", "CPU s/epoch"]
    return [*lines, "", *table([*header, "wall / SGD", "min / SGD", "CPU / SGD"], times)]


def _figures(
    chosen: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]], context: StudyContext, seed: int
) -> list[tuple[Path, str]]:
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in chosen.values():
        ax.semilogy(np.arange(len(v["train_loss"])), v["train_loss"], "o-", label=v["optimizer"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    losses = save_study_figure(fig, context, "loss_per_epoch")
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(chosen)
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("seconds_per_epoch", "wall clock"), ("cpu_seconds_per_epoch", "CPU"))):
        ax.bar(x + (k - 0.5) * 0.38, [chosen[n][key] for n in names], 0.38, label=label)
    ax.set_xticks(x, [chosen[n]["optimizer"] for n in names], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("optimizer seconds per epoch")
    ax.set_title(f"GGN / SGD CPU time: {ratios['cpu_time_ratio_to_sgd']['ggn']:.3g}")
    ax.legend(fontsize=8)
    times = save_study_figure(fig, context, "time_per_epoch")
    return [
        (losses, f"training loss per epoch of GGN and of the best SGD and Adam runs (seed {seed})"),
        (times, f"optimizer seconds per epoch, wall clock and CPU (seed {seed})"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", help="smoke | small (default: small)")
    parser.add_argument("--config", type=Path, help="another scale file (default: ggn_vs_sgd.toml of the study)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("-o", "--output", type=Path, help="output folder (default: data/studies/ggn_vs_sgd/SCALE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    options = {"epochs": args.epochs} if args.epochs is not None else {}
    try:
        report = run_study("ggn_vs_sgd", args.scale, args.output, options=options, settings_path=args.config)
    except (StudyError, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GGN versus SGD with momentum (and Adam) on a real regression task: loss per epoch and time.

Usage (from the repository root)::

    python studies/ggn_vs_sgd/ggn_vs_sgd.py [studies/ggn_vs_sgd/config.toml] [--epochs K] [--out DIR]

Every optimizer trains the same initial network on the same shuffled batches. SGD and Adam run
for every learning rate of their grid; the one with the lowest final training loss is reported.
Each history is written as a NetCDF file; ``summary.json`` and ``summary.md`` hold the loss per
epoch of the best runs and the mean optimizer time per epoch, with ratios against SGD measured in
the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch

from gnflow.config import DataConfig
from gnflow.data import make_data
from gnflow.dataset import write_dataset
from gnflow.ggn import GGN
from gnflow.training import history_dataset, mlp, train_module

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(HERE / "config.toml"))
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--out", help="output folder (default: output.dir of the config)")
    args = parser.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    epochs = args.epochs or cfg["epochs"]
    out = Path(args.out or cfg["output"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.get("threads", 2))
    logging.basicConfig(level=logging.WARNING)

    data = make_data(
        DataConfig(kind=cfg["data"], test_fraction=cfg["test_fraction"]), activation="tanh", seed=cfg["seed"]
    )
    net0 = mlp(data.input_dim, cfg["hidden"], cfg["activation"], cfg["seed"])
    common = {"epochs": epochs, "batch_size": cfg["batch_size"], "batch_order": cfg["batch_order"], "seed": cfg["seed"]}

    def run(label: str, make_optimizer) -> dict:
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
        write_dataset(ds, out / f"{label.replace(' ', '_').replace('=', '')}.nc")
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
        print(
            f"{label:>24s}: final train {history.train_loss[-1]:.4g}, test {history.test_loss[-1]:.4g}, "
            f"{result['seconds_per_epoch']:.3f} s/epoch (min {result['min_seconds_per_epoch']:.3f}, "
            f"CPU {result['cpu_seconds_per_epoch']:.3f}) ({history.status})",
            file=sys.stderr,
        )
        return result

    g = cfg["ggn"]
    results = {
        "ggn": [
            run(
                f"GGN lam={g['lam']:g} alpha={g['alpha']:g}",
                lambda n: GGN(n.parameters(), lam=g["lam"], alpha=g["alpha"]),
            )
        ]
    }
    results["sgd"] = [
        run(
            f"SGD lr={lr:g} momentum={cfg['sgd']['momentum']:g}",
            lambda n, lr=lr: torch.optim.SGD(n.parameters(), lr=lr, momentum=cfg["sgd"]["momentum"]),
        )
        for lr in cfg["sgd"]["lr"]
    ]
    results["adam"] = [
        run(f"Adam lr={lr:g}", lambda n, lr=lr: torch.optim.Adam(n.parameters(), lr=lr)) for lr in cfg["adam"]["lr"]
    ]

    def best(runs: list[dict]) -> dict:
        finite = [r for r in runs if np.isfinite(r["train_loss"][-1])]
        return min(finite, key=lambda r: r["train_loss"][-1]) if finite else runs[0]

    chosen = {k: best(v) for k, v in results.items()}
    sgd_time = chosen["sgd"]["seconds_per_epoch"]
    summary = {
        "data": data.name,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "network": f"{data.input_dim}-{'-'.join(map(str, cfg['hidden']))}-1 {cfg['activation']}, float64",
        "n_parameters": sum(p.numel() for p in net0.parameters()),
        "torch_threads": torch.get_num_threads(),
        **common,
        "best": chosen,
        "time_ratio_to_sgd": {k: v["seconds_per_epoch"] / sgd_time for k, v in chosen.items()},
        "min_time_ratio_to_sgd": {
            k: v["min_seconds_per_epoch"] / chosen["sgd"]["min_seconds_per_epoch"] for k, v in chosen.items()
        },
        "cpu_time_ratio_to_sgd": {
            k: v["cpu_seconds_per_epoch"] / chosen["sgd"]["cpu_seconds_per_epoch"] for k, v in chosen.items()
        },
        "all_runs": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"# GGN vs SGD on {data.name}",
        "",
        f"N = {data.n_train} train / {data.n_test} test, network {summary['network']} "
        f"({summary['n_parameters']} parameters), batch {common['batch_size']} ({common['batch_order']}), "
        f"{epochs} epochs, {summary['torch_threads']} torch thread(s). "
        "Loss = ||f(X) - y||^2 / (2N) on standardized targets.",
        "",
        "| epoch | " + " | ".join(f"{v['optimizer']} train" for v in chosen.values()) + " |",
        "|---|" + "---|" * len(chosen),
    ]
    for e in range(epochs + 1):
        lines.append(
            f"| {e} | "
            + " | ".join(f"{v['train_loss'][e]:.4g}" if e < len(v["train_loss"]) else "nan" for v in chosen.values())
            + " |"
        )
    lines += [
        "",
        "Optimizer time per epoch: wall-clock mean and minimum over the epochs, and processor (CPU) time "
        "mean; ratios are against SGD in this run.",
        "",
        "| optimizer | final train | final test | wall s/epoch (mean) | (min) | CPU s/epoch "
        "| wall / SGD | min / SGD | CPU / SGD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in chosen.items():
        lines.append(
            f"| {v['optimizer']} | {v['train_loss'][-1]:.4g} | {v['test_loss'][-1]:.4g} | "
            f"{v['seconds_per_epoch']:.4f} | {v['min_seconds_per_epoch']:.4f} | {v['cpu_seconds_per_epoch']:.4f} | "
            f"{summary['time_ratio_to_sgd'][k]:.2f} | {summary['min_time_ratio_to_sgd'][k]:.2f} | "
            f"{summary['cpu_time_ratio_to_sgd'][k]:.2f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

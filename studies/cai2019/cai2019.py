"""Cai et al. (2019), "Gram-Gauss-Newton Method: Learning Overparameterized Neural Networks for
Regression Problems": quadratic convergence of full-batch GGN on wide networks, mini-batch GGN
against SGD with momentum and Adam on real regression data, and the (lam, alpha) sensitivity map.

Run with ``gnflow study cai2019 [--scale smoke|small|paper] [-o DIR]``; the sizes of each scale
are the tables of ``cai2019.toml``.

- ``theory``: the network of the paper's theorem (NTK scaling, output weights +-1 fixed, hidden
  layer trained) on teacher-student data; full-batch GGN (lam = 1, alpha = ``theory_alpha``) for
  each width M, through the sweep engine (``flow.kind = "ggn"``, one saved state per step).
- ``minibatch``: an MLP (PyTorch default initialization) trained on concrete and diabetes by
  :func:`gnflow.training.train_module` with GGN, SGD + momentum (every learning rate of a grid)
  and Adam (idem), all from the same initial network on the same shuffled batches.
- ``sensitivity``: training loss after ``sensitivity_epochs`` epochs of GGN for every (lam, alpha).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np
import torch

from gnflow.config import DataConfig
from gnflow.data import make_data
from gnflow.dataset import write_dataset
from gnflow.ggn import GGN
from gnflow.studies import (
    Claim,
    StudyContext,
    StudyReport,
    fmt,
    loglog_slope,
    run_grid,
    save_study_figure,
    table,
)
from gnflow.training import TrainingHistory, history_dataset, mlp, train_module

TITLE = "Cai et al. (2019): Gram-Gauss-Newton, quadratic convergence and mini-batch training"


def run(s: dict[str, Any], context: StudyContext) -> StudyReport:
    """Run the three parts, measure the claims and draw the figures."""
    theory = _theory(s, context)
    minibatch = {name: _minibatch(s, context, name) for name in s["datasets"]}
    sensitivity = _sensitivity(s, context)
    claims = _claims(s, theory, minibatch, sensitivity)
    figures = _figures(s, context, theory, minibatch, sensitivity)
    (context.out_dir / "summary.json").write_text(
        json.dumps(
            {
                "theory": theory,
                "sensitivity": sensitivity,
                "minibatch": {k: {o: r["summary"] for o, r in v.items()} for k, v in minibatch.items()},
            },
            indent=1,
        )
    )
    setup = [
        f"Theory network: f(x) = M^(-1/2) sum_i v_i silu(u_i.x + b_i), v_i = +-1 fixed, u, b ~ N(0, 1) trained; "
        f"teacher-student data, N = {s['theory_n_train']}; full-batch GGN with lam = 1, alpha = {s['theory_alpha']:g} "
        f"for {s['theory_iterations']} steps; widths M = {list(s['widths'])}.",
        f"Mini-batch: MLP d-{'-'.join(map(str, s['hidden']))}-1 ({s['activation']}, float64) on "
        f"{', '.join(s['datasets'])} (standardized, {100 * s['test_fraction']:g}% test), batch {s['batch_size']} "
        f"reshuffled every epoch, {s['epochs']} epochs, seed {s['seed']}; GGN lam = {s['ggn_lam']:g}, "
        f"alpha = {s['ggn_alpha']:g}; SGD momentum {s['sgd_momentum']:g} with lr in {list(s['sgd_lr'])}, "
        f"Adam with lr in {list(s['adam_lr'])}: the best final training loss of each grid is reported.",
        f"Sensitivity: {s['sensitivity_data']}, training loss after {s['sensitivity_epochs']} epochs for lam in "
        f"{list(s['lam_grid'])} and alpha in {list(s['alpha_grid'])}.",
        f"Times are processor seconds of the optimizer steps (torch threads: {torch.get_num_threads()}); loss "
        "evaluations are not counted. The machine was shared, so compare ratios measured in one run.",
    ]
    sections = {"Full-batch GGN residual per step": _theory_table(theory)}
    for name, results in minibatch.items():
        sections[f"Mini-batch training on {name}"] = table(
            [
                "optimizer",
                "final train loss",
                "final test loss",
                "CPU s / epoch",
                "epochs to SGD's final loss",
                "CPU s to SGD's final loss",
            ],
            [
                [
                    r["summary"]["label"],
                    fmt(r["summary"]["final_train"]),
                    fmt(r["summary"]["final_test"]),
                    fmt(r["summary"]["cpu_per_epoch"]),
                    fmt(r["summary"]["epochs_to_sgd"]),
                    fmt(r["summary"]["cpu_to_sgd"]),
                ]
                for r in results.values()
            ],
        )
    sections["Training loss after the sensitivity epochs"] = table(
        ["lam \\ alpha", *[f"{a:g}" for a in s["alpha_grid"]]],
        [[f"{lam:g}", *[fmt(v) for v in row]] for lam, row in zip(s["lam_grid"], sensitivity["loss"], strict=True)],
    )
    return StudyReport(title=TITLE, setup=setup, claims=claims, figures=figures, sections=sections)


def _theory(s: dict[str, Any], context: StudyContext) -> dict[str, Any]:
    n = int(s["theory_n_train"])
    base = {
        "seed": s["seed"],
        "data": {"kind": "teacher", "n_train": n, "n_test": 0},
        "model": {"scaling": "ntk", "train": "hidden", "output_init": "sign", "init_scale": 1.0},
        "flow": {
            "kind": "ggn",
            "lam": 1.0,
            "alpha": s["theory_alpha"],
            "batch_size": n,
            "iterations": s["theory_iterations"],
            "save_every": "iteration",
            "batch_order": "cyclic",
        },
        "solver": {"stop_loss_ratio": 0.0},
    }
    runs = run_grid(context, "theory", base, grid={"model.width": s["widths"]})
    residuals = {}
    for r in runs:
        loss = r.dataset["train_loss"].values
        residuals[int(r.value("model.width"))] = np.sqrt(2 * n * np.maximum(loss, 0.0)).tolist()
    orders = {m: _order(np.asarray(res), float(s["residual_floor"])) for m, res in residuals.items()}
    return {"n_train": n, "residual": residuals, "order": orders}


def _order(residual: np.ndarray, floor: float) -> float:
    """Slope of log r_{k+1} against log r_k over the steps above ``floor`` x r_0 (2 = quadratic)."""
    keep = residual > floor * residual[0]
    r = residual[keep]
    if r.size < 3:
        return float("nan")
    return float(np.polyfit(np.log(r[:-1]), np.log(r[1:]), 1)[0])


def _theory_table(theory: dict[str, Any]) -> list[str]:
    widths = sorted(theory["residual"])
    steps = len(theory["residual"][widths[0]])
    header = ["step k", *[f"M = {m}" for m in widths]]
    rows = [[str(k), *[fmt(theory["residual"][m][k]) for m in widths]] for k in range(steps)]
    rows.append(["order (slope of log r_k+1 vs log r_k)", *[fmt(theory["order"][m]) for m in widths]])
    return ["||f(X) - y|| after each full-batch GGN step:", "", *table(header, rows)]


def _train(
    s: dict[str, Any], data: Any, net0: torch.nn.Module, optimizer: Any, epochs: int
) -> tuple[TrainingHistory, torch.nn.Module]:
    net = copy.deepcopy(net0)
    history = train_module(
        net,
        optimizer(net),
        data,
        epochs=epochs,
        batch_size=s["batch_size"],
        batch_order="shuffled",
        seed=s["seed"],
    )
    return history, net


def _data(s: dict[str, Any], name: str) -> Any:
    return make_data(
        DataConfig(kind=name, test_fraction=s["test_fraction"]),
        activation=s["activation"],
        seed=s["seed"],
    )


def _minibatch(s: dict[str, Any], context: StudyContext, name: str) -> dict[str, dict[str, Any]]:
    data = _data(s, name)
    net0 = mlp(data.input_dim, list(s["hidden"]), s["activation"], s["seed"])
    epochs = int(s["epochs"])
    candidates: dict[str, list[tuple[str, Any]]] = {
        "GGN": [
            (
                f"GGN lam={s['ggn_lam']:g} alpha={s['ggn_alpha']:g}",
                lambda n: GGN(n.parameters(), lam=s["ggn_lam"], alpha=s["ggn_alpha"]),
            )
        ],
        "SGD": [
            (
                f"SGD lr={lr:g} momentum={s['sgd_momentum']:g}",
                lambda n, lr=lr: torch.optim.SGD(n.parameters(), lr=lr, momentum=s["sgd_momentum"]),
            )
            for lr in s["sgd_lr"]
        ],
        "Adam": [(f"Adam lr={lr:g}", lambda n, lr=lr: torch.optim.Adam(n.parameters(), lr=lr)) for lr in s["adam_lr"]],
    }
    folder = context.out_dir / "minibatch" / name
    folder.mkdir(parents=True, exist_ok=True)
    best: dict[str, dict[str, Any]] = {}
    for family, options in candidates.items():
        for label, make in options:
            history, net = _train(s, data, net0, make, epochs)
            ds = history_dataset(
                history,
                optimizer=label,
                model=net,
                data=data,
                batch_size=s["batch_size"],
                batch_order="shuffled",
                seed=s["seed"],
            )
            write_dataset(ds, folder / f"{label.replace(' ', '_').replace('=', '')}.nc")
            final = history.train_loss[-1] if np.isfinite(history.train_loss[-1]) else np.inf
            if family not in best or final < best[family]["history"].train_loss[-1]:
                best[family] = {"label": label, "history": history}
    sgd_level = best["SGD"]["history"].train_loss[-1]
    for entry in best.values():
        h: TrainingHistory = entry["history"]
        train = np.asarray(h.train_loss)
        reached = np.nonzero(train <= sgd_level)[0]
        cpu = np.asarray(h.cpu_time_s)
        entry["summary"] = {
            "label": entry["label"],
            "train_loss": h.train_loss,
            "test_loss": h.test_loss,
            "cpu_time_s": h.cpu_time_s,
            "final_train": float(train[-1]),
            "final_test": float(h.test_loss[-1]),
            "cpu_per_epoch": float(cpu[-1] / max(1, len(cpu) - 1)),
            "epochs_to_sgd": float(reached[0]) if reached.size else float("inf"),
            "cpu_to_sgd": float(cpu[reached[0]]) if reached.size else float("inf"),
        }
    return best


def _sensitivity(s: dict[str, Any], context: StudyContext) -> dict[str, Any]:
    data = _data(s, s["sensitivity_data"])
    net0 = mlp(data.input_dim, list(s["hidden"]), s["activation"], s["seed"])
    loss = []
    for lam in s["lam_grid"]:
        row = []
        for alpha in s["alpha_grid"]:
            history, _ = _train(
                s,
                data,
                net0,
                lambda n, lam=lam, alpha=alpha: GGN(n.parameters(), lam=lam, alpha=alpha),
                int(s["sensitivity_epochs"]),
            )
            value = history.train_loss[-1]
            row.append(float(value) if np.isfinite(value) and history.status == "completed" else float("inf"))
        loss.append(row)
    return {"lam": list(s["lam_grid"]), "alpha": list(s["alpha_grid"]), "loss": loss}


def _claims(s: dict[str, Any], theory: dict[str, Any], minibatch: dict[str, Any], sens: dict[str, Any]) -> list[Claim]:
    claims = []
    widths = sorted(theory["residual"])
    k = int(s["theory_compare_step"])
    after = [theory["residual"][m][k] for m in widths]
    orders = [theory["order"][m] for m in widths]
    quadratic = np.isfinite(orders[-1]) and orders[-1] >= 1.5
    better = all(b < a for a, b in itertools.pairwise(after))
    slope = loglog_slope(widths, after)
    claims.append(
        Claim(
            "Full-batch GGN converges quadratically on a wide network, and better as the width M grows.",
            "; ".join(
                f"M={m}: order {fmt(o)}, r_{k}/r_0 = {fmt(a / theory['residual'][m][0])}"
                for m, o, a in zip(widths, orders, after, strict=True)
            )
            + f"; slope of r_{k} against M (log-log) {fmt(slope)}",
            "supported" if quadratic and better else "not supported",
            "r_k = norm of the residual f(X) - y after k steps; order = slope of log r_(k+1) against log r_k "
            "(1 linear, 2 quadratic), over the steps above "
            f"{s['residual_floor']:g} x r_0; 'better' = smaller residual after step {k}.",
        )
    )
    per_epoch, per_second, parts_e, parts_s = True, True, [], []
    for name, best in minibatch.items():
        g, sgd = best["GGN"]["summary"], best["SGD"]["summary"]
        epochs_sgd = len(sgd["train_loss"]) - 1
        per_epoch &= g["final_train"] < sgd["final_train"] and g["epochs_to_sgd"] < epochs_sgd
        per_second &= g["cpu_to_sgd"] < sgd["cpu_time_s"][-1]
        parts_e.append(
            f"{name}: final train GGN {fmt(g['final_train'])} vs SGD {fmt(sgd['final_train'])} "
            f"({sgd['label']}), GGN reaches SGD's final loss at epoch {fmt(g['epochs_to_sgd'])} of {epochs_sgd}"
        )
        parts_s.append(
            f"{name}: GGN reaches SGD's final loss after {fmt(g['cpu_to_sgd'])} CPU s vs SGD "
            f"{fmt(sgd['cpu_time_s'][-1])} s; CPU s/epoch GGN {fmt(g['cpu_per_epoch'])}, "
            f"SGD {fmt(sgd['cpu_per_epoch'])}"
        )
    claims.append(
        Claim(
            "Mini-batch GGN converges faster than SGD with momentum per epoch.",
            "; ".join(parts_e),
            "supported" if per_epoch else "not supported",
        )
    )
    claims.append(
        Claim(
            "Mini-batch GGN converges faster than SGD with momentum per second.",
            "; ".join(parts_s),
            "supported" if per_second else "not supported",
            "Processor time of the optimizer steps on this machine's CPU; the paper timed GPUs.",
        )
    )
    loss = np.asarray(sens["loss"])
    best_per_lam = loss.min(axis=1)
    best_lam = sens["lam"][int(np.argmin(best_per_lam))]
    claims.append(
        Claim(
            f"lam near 1 trains fastest (training loss after {s['sensitivity_epochs']} epochs, best alpha per lam).",
            "; ".join(f"lam={lam:g}: {fmt(v)}" for lam, v in zip(sens["lam"], best_per_lam, strict=True))
            + f"; best lam = {best_lam:g}",
            "supported" if 0.5 <= best_lam <= 2 else "not supported",
            "Near 1 = within a factor 2.",
        )
    )
    row = loss[sens["lam"].index(1.0)] if 1.0 in sens["lam"] else loss[int(np.argmin(best_per_lam))]
    spread = float(np.max(row) / np.min(row))
    claims.append(
        Claim(
            "alpha matters little at a good lam (lam = 1).",
            "lam=1: "
            + ", ".join(f"alpha={a:g}: {fmt(v)}" for a, v in zip(sens["alpha"], row, strict=True))
            + f"; max/min = {fmt(spread)}",
            "supported" if spread <= float(s["alpha_spread_tolerance"]) else "not supported",
            f"'Little' = the largest loss within a factor {s['alpha_spread_tolerance']:g} "
            "of the smallest across alpha.",
        )
    )
    return claims


def _figures(
    s: dict[str, Any],
    context: StudyContext,
    theory: dict[str, Any],
    minibatch: dict[str, Any],
    sens: dict[str, Any],
) -> list[tuple[Any, str]]:
    figures = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in sorted(theory["residual"]):
        res = np.asarray(theory["residual"][m])
        ax.semilogy(np.arange(res.size), res, "o-", label=f"M = {m} (order {fmt(theory['order'][m], 2)})")
    ax.set_xlabel("GGN step k")
    ax.set_ylabel("||f(X) - y||")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Full-batch GGN on the theory network, N = {theory['n_train']}")
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "ggn_residual"),
            "Residual norm per full-batch GGN step for each width M.",
        )
    )

    names = list(minibatch)
    fig, axes = plt.subplots(len(names), 3, figsize=(15, 4 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for _family, best in minibatch[name].items():
            sm = best["summary"]
            epochs = np.arange(len(sm["train_loss"]))
            axes[row, 0].semilogy(epochs, sm["train_loss"], "o-", ms=3, label=sm["label"])
            axes[row, 1].semilogy(epochs, sm["test_loss"], "o-", ms=3, label=sm["label"])
            axes[row, 2].semilogy(np.asarray(sm["cpu_time_s"]), sm["train_loss"], "o-", ms=3, label=sm["label"])
        for col, (xl, yl) in enumerate(
            (("epoch", "train loss"), ("epoch", "test loss"), ("optimizer CPU s", "train loss"))
        ):
            axes[row, col].set_xlabel(xl)
            axes[row, col].set_ylabel(f"{name}: {yl}")
            axes[row, col].grid(True, alpha=0.3)
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "minibatch"),
            "Mini-batch GGN, SGD with momentum and Adam (best learning rate of each grid): train and test "
            "loss per epoch and train loss against optimizer processor time.",
        )
    )

    fig, ax = plt.subplots(figsize=(6, 4.5))
    loss = np.asarray(sens["loss"])
    shown = np.where(np.isfinite(loss), loss, np.nan)
    logs = np.log10(shown)
    low = float(np.nanmin(logs))
    # as in the paper: lighter = higher loss; diverged runs saturate at 1000 x the best loss
    image = ax.imshow(logs.T, origin="lower", cmap="gray", aspect="auto", vmin=low, vmax=low + 3)
    for i, row in enumerate(loss):
        for j, value in enumerate(row):
            ax.text(i, j, fmt(value, 2), ha="center", va="center", fontsize=7, color="tab:red")
    ax.set_xticks(range(len(sens["lam"])), [f"{v:g}" for v in sens["lam"]])
    ax.set_yticks(range(len(sens["alpha"])), [f"{v:g}" for v in sens["alpha"]])
    ax.set_xlabel("lam")
    ax.set_ylabel("alpha")
    fig.colorbar(image, ax=ax, label=f"log10 train loss after {s['sensitivity_epochs']} epochs")
    ax.set_title(f"GGN sensitivity on {s['sensitivity_data']}")
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "sensitivity"),
            "Training loss after the sensitivity epochs for each (lam, alpha) (their Fig. 2c); lighter is higher.",
        )
    )
    return figures

"""The rivals of the final BN at each field prevalence, the strongest of them named, and the data-needs answer.

    table = rivals_table(at_pi)                  # one row per (dataset, arch, method, π)
    line = best_rival_line(table, [0.5, 0.05])   # the verdict's sentence on the strongest rival at each π
    rivals_section(page, table, prevalences); needs_section(page, needs_json, figure)

Every baseline method of the grid (`grid.baselines.methods`: the losses, the sampler, the post-hoc
maps, the final BN removed at inference, PatchCore) and the two references, none (63) and BN only
(31), at each prevalence π of `report.prevalences`: minority F1 at the cut each cell's own
validation predictions choose for π (`cut_f1_1`: the test set chooses nothing), with the paired
per-replicate difference against BN only (same split, same seed) and its 95 % t interval; Holm
over every method and π of one (dataset, arch), family `rivals`. The strongest rival at π is the
method with the highest mean F1 there — a description of what the test set shows, not a choice of
model: nothing downstream uses it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from finalbn.infra.io import write_csv
from finalbn.stages.report.markdown import Page, interval_text
from finalbn.stages.report.tables import BN_ID, NONE_ID
from finalbn.stats.inference import clipped, holm, t_interval

FAMILY = "rivals"
BN_LABEL, NONE_LABEL = "BN only (31)", "none (63)"
COLUMNS = [
    "dataset",
    "arch",
    "method",
    "config_id",
    "prevalence",
    "replicates",
    "f1_cut",
    "f1_argmax",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "p",
    "p_holm",
    "family",
]
NAMES = {
    "focal": "focal loss (Lin 2017)",
    "logit_adjusted": "logit-adjusted loss = Balanced Softmax (Menon 2021; Ren 2020)",
    "class_balanced": "class-balanced loss (Cui 2019)",
    "ldam_drw": "LDAM-DRW (Cao 2019)",
    "balanced_sampling": "class-balanced sampling (oversampling)",
    "temperature": "temperature scaling (Guo 2017)",
    "posthoc_logit_adjustment": "post-hoc logit adjustment (Menon 2021)",
    "vector_scaling": "vector scaling (Guo 2017)",
    "logit_standardisation": "logit standardisation (a final BN's map, untrained)",
    "tau_norm": "τ-normalisation (Kang 2020)",
    "crt": "classifier re-training, cRT (Kang 2020)",
    "lws": "learnable weight scaling, LWS (Kang 2020)",
    "final_bn_removed": "final BN trained, removed at inference (Kocaman 2021)",
    "patchcore": "PatchCore, healthy images only (Roth 2022)",
}


def label(method: str) -> str:
    """A method's name in the report (its reference in brackets)."""
    return NAMES.get(method, method)


def _groups(sub: pd.DataFrame) -> list[tuple[str, int, pd.DataFrame]]:
    paper = sub[sub["baseline"] == ""]
    out = [
        (NONE_LABEL, NONE_ID, paper[paper["config_id"] == NONE_ID]),
        (BN_LABEL, BN_ID, paper[paper["config_id"] == BN_ID]),
    ]
    for method, g in sub[sub["baseline"] != ""].groupby("baseline", sort=False):
        out.append((label(str(method)), int(g["config_id"].iloc[0]), g))
    return out


def rivals_table(at_pi: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, arch, method, π) of the last epoch's rows of `at_pi` (`prevalence.cell_table`)."""
    if at_pi.empty or "baseline" not in at_pi:
        return pd.DataFrame(columns=COLUMNS)
    last = at_pi[at_pi["protocol"] == "last"]
    rows = []
    for (ds, arch, pi), sub in last.groupby(["dataset", "arch", "prevalence"], sort=True):
        groups = _groups(sub)
        bn = groups[1][2].set_index("replicate")["cut_f1_1"].astype(float)
        for name, cid, g in groups:
            if g.empty:
                continue
            x = g.set_index("replicate")["cut_f1_1"].astype(float)
            both = x.index.intersection(bn.index)
            t = clipped(t_interval((x.loc[both] - bn.loc[both]).to_numpy()), -1.0, 1.0) if name != BN_LABEL else None
            rows.append(
                {
                    "dataset": ds,
                    "arch": arch,
                    "method": name,
                    "config_id": cid,
                    "prevalence": float(pi),
                    "replicates": int(len(g)),
                    "f1_cut": float(x.mean()),
                    "f1_argmax": float(g["f1_1"].astype(float).mean()),
                    **{k: (t[k] if t is not None else np.nan) for k in ("estimate", "ci_low", "ci_high", "p")},
                    "n": int(t["n"]) if t is not None else 0,
                    "p_holm": np.nan,
                    "family": FAMILY,
                }
            )
    table = pd.DataFrame(rows, columns=COLUMNS)
    for _, idx in table.groupby(["dataset", "arch"], sort=False).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p"].to_numpy(float))
    return table


def _standing(r: pd.Series) -> str:
    if not np.isfinite(r["p_holm"]):
        return "not testable (fewer than 2 paired replicates)"
    if r["p_holm"] < 0.05:
        return "beats the final BN" if r["estimate"] > 0 else "falls short of the final BN"
    return "is not distinguishable from the final BN after Holm's adjustment"


def best_rival_line(table: pd.DataFrame, prevalences) -> str | None:
    """The verdict's sentence on the strongest rival at each π of `prevalences` (highest mean F1 at its
    validation cut; a description of the test set, not a choice), per (dataset, arch); the final BN
    removed at inference is the final BN itself (the sensitivity stage's level), not a rival. None
    without rivals."""
    rivals_only = table[~table["method"].isin([BN_LABEL, NONE_LABEL, label("final_bn_removed")])]
    parts = []
    for (ds, arch), sub in rivals_only.groupby(["dataset", "arch"], sort=True):
        mine = table[(table["dataset"] == ds) & (table["arch"] == arch) & (table["method"] == BN_LABEL)]
        scope = f"{ds}/{arch}: " if table[["dataset", "arch"]].drop_duplicates().shape[0] > 1 else ""
        at = []
        for pi in sorted(prevalences, reverse=True):
            here = sub[np.isclose(sub["prevalence"], pi)]
            bn = mine[np.isclose(mine["prevalence"], pi)]
            if here.empty or bn.empty:
                continue
            r = here.loc[here["f1_cut"].idxmax()]
            at.append(
                f"π = {pi:g}: {r['method']} {r['f1_cut']:.3f} against {float(bn['f1_cut'].iloc[0]):.3f}, Δ "
                f"{interval_text(r['estimate'], r['ci_low'], r['ci_high'])} (Holm p = {r['p_holm']:.2g}): it {_standing(r)}"
            )
        if at:
            parts.append(scope + "; ".join(at))
    if not parts:
        return None
    return (
        "**The strongest rival at each prevalence** (minority F1, each model at the cut its validation chose for π; "
        f"{int(rivals_only['n'].max())} paired replicates, family `{FAMILY}`): " + " — ".join(parts) + "."
    )


def shown(table: pd.DataFrame, prevalences) -> pd.DataFrame:
    """Method × π: "F1 (Δ vs BN [interval])" cells, the Holm p of each Δ."""
    rows = []
    for (ds, arch, method), g in table.groupby(["dataset", "arch", "method"], sort=False):
        row = {"dataset": ds, "arch": arch, "method": method, "replicates": int(g["replicates"].max())}
        for pi in sorted(prevalences, reverse=True):
            r = g[np.isclose(g["prevalence"], pi)]
            if r.empty:
                continue
            r0 = r.iloc[0]
            delta = interval_text(r0["estimate"], r0["ci_low"], r0["ci_high"]) if r0["n"] else "reference"
            p = f", p {r0['p_holm']:.2g}" if np.isfinite(r0["p_holm"]) else ""
            row[f"π = {pi:g}: F1, Δ vs BN"] = f"{r0['f1_cut']:.3f}, {delta}{p}"
        rows.append(row)
    return pd.DataFrame(rows)


def rivals_section(page: Page, table: pd.DataFrame, prevalences) -> None:
    """rivals.csv and the section: every rival at every field prevalence against the final BN."""
    write_csv(page.out / "rivals.csv", table)
    title = "The rivals at each field prevalence"
    if table.empty:
        page.section(title, "", ["no baseline cells with test predictions: no rival at any prevalence"])
        return
    page.section(
        title,
        page.table(shown(table, prevalences))
        + "\n\nMinority F1 at the cut each cell's own validation predictions choose for π (so every rival is "
        "judged at a decision rule fitted for the prevalence, as the final BN is), mean over replicates; Δ: "
        "paired per-replicate difference against BN only (31) with a 95 % t interval; p: Holm-adjusted over "
        f"every method and π of the (dataset, arch) (family `{FAMILY}`). The post-hoc rivals change a model "
        "trained without a final BN (63) after training, fitted on its training or validation images; PatchCore "
        "is fitted on healthy training images only. rivals.csv holds the argmax F1 too.",
    )


FAR = 4  # an estimate beyond FAR x the largest count measured is no estimate: the curve's form decides it


def _count(x: float | None) -> str:
    return "∞" if x is None else f"{x:.0f}"


def _needed_row(method: str, need: dict, needs: dict) -> dict:
    """One method's row of the planner's table: the images needed with its interval, flagged where the
    curve is extrapolated (beyond FAR x the largest count measured: not an estimate)."""
    if "error" in need:
        return {"method": method, "images needed": f"not fitted: {need['error']}"}
    n, lo, hi, top = need.get("n"), need.get("ci_low"), need.get("ci_high"), need.get("n_max") or float("nan")
    if n is None:
        what = "never (the curve levels off below the target)"
    elif n > FAR * top:
        what = f"more than {FAR * top:.0f} ({FAR}x the {top:.0f} measured): not estimable from these counts"
    else:
        what = f"{math.ceil(n)}" + (
            f" (extrapolated beyond the {top:.0f} measured)" if need.get("extrapolated") else ""
        )
    far = (n is not None and n > FAR * top) or (lo is not None and lo > FAR * top)
    interval = "—" if lo is None or far else f"{_count(lo)}–{_count(hi)}"
    asymptote = (needs.get("curves", {}).get(method) or {}).get("asymptote", float("nan"))
    return {"method": method, "images needed": what, "95 % interval": interval, "curve's asymptote": f"{asymptote:.3f}"}


def needs_section(page: Page, needs: dict | None, figure: Path | None) -> str | None:
    """The data-needs planner's section (needs.png, the table of images needed); its sentence."""
    title = "How many defect images? The data-needs planner"
    if not needs:
        page.section(title, "", ["no planner output (results/needs/needs.json): run `finalbn needs`"])
        return None
    if figure is not None and figure.is_file():
        shutil.copyfile(figure, page.out / "needs.png")
    rows = [_needed_row(method, need, needs) for method, need in needs.get("needed", {}).items()]
    page.section(
        title,
        f"{needs.get('sentence', '')}\n\n"
        + page.table(pd.DataFrame(rows))
        + f"\n\nMinority F1 at π = {needs.get('prevalence')} (each cell at its validation cut) against the number of "
        "minority training images, majority fixed; an inverse power-law learning curve per method (Figueroa et al. "
        "2012), the images needed for the target F1 with a bootstrap interval over replicates (MLflow run "
        f"`{needs.get('mlflow_run_id', '?')}`, experiment `needs`).\n\n![](needs.png)",
    )
    return str(needs.get("sentence") or "") or None

"""Metric names as the MLflow store holds them: grouped by a `/` after their group, so that MLflow's
UI, which puts a run's charts into one section per part before the first `/`, shows a few sections
instead of one flat list of some 150 charts.

    stored("val_last_auroc") == "val/last_auroc"      # every write of a metric (`runs`)
    read("val/last_auroc") == "val_last_auroc"        # every read (`query`)
    stored("lr") == "lr"                              # no group: as it is

The groups, and what lands in each (the names a cell, a parent and the report log):
- `final_bn`: the final BN's per-epoch running mean and variance, gamma and beta per class
  (`final_bn_running_mean_0`, `final_bn_gamma_1`, ...: `models.head.final_bn_stats`);
- `val`: per-epoch validation metrics (`val_auroc`, `val_loss`, ...) and the validation numbers
  at the last and the selected epoch (`val_last_*`, `val_sel_*`);
- `test`: test metrics at the last epoch (`test_*`, per-disease recall `test_recall_1__<class>`
  included) and at the selected epoch (`test_sel_*`);
- `train`: the per-epoch training loss and the cell's timing (`train_loss`, `train_seconds`,
  `train_images_per_second`);
- `posthoc`: what a post-hoc rival fitted on validation (`posthoc_*`);
- `selection`: on a grid parent, its standing in the export's choice (`selection_val_auroc`, the
  number the choice uses; `selection_rank`, 1 = the champion: `tracking.standing`).
Everything else keeps its name: `lr`, `selected_epoch`, `temperature`, the ceiling's
`ceiling_auroc`, the search study's `trials` and `best_value`, the planner's `n_needed_*`, the
report's contrasts (`bn_vs_none_f1_estimate`, ...): a section of one or two charts helps no one.

The rest of finalbn speaks the names with `_` only (`test_f1_1`); only `finalbn.tracking` sees the
stored ones. `read` turns any `group/rest` back into `group_rest` whatever the group, so a store
written before names were grouped (no `/`) reads the same, and so would one written with other groups.
finalbn's own metric names hold no `/`.
"""

from __future__ import annotations

# each a name's first word, except `final_bn` (two words: the section is named for the layer)
GROUPS = ("final_bn", "posthoc", "selection", "train", "test", "val")


def stored(name: str) -> str:
    """The store's name of finalbn metric `name`: `<group>/<rest>` when `name` is `<group>_<rest>`
    for one of `GROUPS` (`test_f1_1` -> `test/f1_1`), else `name` unchanged (a name that already
    holds a `/` too). Raises ValueError on an empty name."""
    if not name:
        raise ValueError("a metric name is empty")
    if "/" in name:
        return name
    for group in GROUPS:
        if name.startswith(f"{group}_") and len(name) > len(group) + 1:
            return f"{group}/{name[len(group) + 1 :]}"
    return name


def read(name: str) -> str:
    """The finalbn name of stored metric `name`: `group/rest` -> `group_rest` (the first `/`
    only); a name without `/` (a store written before the groups) unchanged."""
    group, slash, rest = name.partition("/")
    return f"{group}_{rest}" if slash else name

"""The pipeline's stages, side by side, one module (or small package) per `dvc.yaml` stage.

    synthesize -> prepare -> ceiling -> grid -> search -> report -> export   (+ pretrain, train)

Each has `main(cfg, args) -> exit code` (what `finalbn <stage>` runs: it reads the command
line's paths, calls the stage, prints its lines) and the stage itself as a function of explicit
arguments returning its summary. Stages never import each other: they meet through files
(splits, results/, report/, models/) and the tracking store.
"""

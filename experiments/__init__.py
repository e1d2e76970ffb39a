"""Experiment tools: evaluate a checkpoint (evaluate.py), compare cores over a grid of runs
(compare.py), tabulate and plot a comparison (report.py), Atari reference scores (atari_scores.py).
They train through runtime.driver and read run directories; nothing here is needed to train."""

# The evaluation protocols (evaluate.py); here, not there, so that launch.py offers them without
# importing torch: a refused command line stays quick.
PROTOCOLS = ("games", "paper")

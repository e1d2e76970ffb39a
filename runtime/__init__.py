"""The runtime: the whole loop in one process without Ray (serial.py: read it first), the Ray
service that runs it distributed, owning the rollout actors and the learner (service.py, with
batcher.py, credits.py and weights_holder.py), the Ray session and the resources a run needs
(cluster.py), and the driver that owns a run directory (driver.py: config.yaml, checkpoint.pt,
episodes.csv, TensorBoard, signals, checkpoint cadence, progress). `launch.py train`, `compare` and
the benchmarks all train through `driver.Training`."""

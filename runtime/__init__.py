"""The runtime: the Ray service that owns the rollout actors and the learner (service.py), the
Ray session and the resources a run needs (cluster.py), and the driver that owns a run directory
(driver.py: config.yaml, checkpoint.pt, episodes.csv, TensorBoard, signals, checkpoint cadence,
progress). `launch.py train`, `compare` and the benchmarks all train through `driver.Training`."""

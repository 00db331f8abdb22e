"""Ray Tune's side of `benches/vs_ray_tune.sh`: the same two cases as `flare bench tune-overhead`.

Usage: ray_tune_bench.py --case trivial|asha [--num-cpus 2]; prints one JSON object.
The wall time covers `Tuner.fit()` only (ray.init and imports excluded), as on Flare's side.
"""
import argparse, json, os, tempfile, time

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler


def trivial(config):
    tune.report({"score": config["x"]})


def curve(config):
    for t in range(1, 101):
        tune.report({"acc": config["x"] * (1.0 - 1.0 / t)})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--case", default="trivial")
    p.add_argument("--num-cpus", type=float, default=2)
    a = p.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, logging_level="ERROR")
    storage = tempfile.mkdtemp()
    space = {"x": tune.uniform(0.0, 1.0)}
    if a.case == "trivial":
        tuner = tune.Tuner(tune.with_resources(trivial, {"cpu": 0.5}), param_space=space,
                           tune_config=tune.TuneConfig(num_samples=200, metric="score", mode="max"),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
    else:
        tuner = tune.Tuner(tune.with_resources(curve, {"cpu": 0.5}), param_space=space,
                           tune_config=tune.TuneConfig(num_samples=20, metric="acc", mode="max",
                                                       scheduler=ASHAScheduler(max_t=100, grace_period=1, reduction_factor=4)),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    reports = sum(len(r.metrics_dataframe) if r.metrics_dataframe is not None else 0 for r in results)
    print(json.dumps({"impl": "ray-tune", "case": a.case, "wall_s": wall, "trials": len(results), "reports": reports,
                      "errors": results.num_errors, "ray": ray.__version__}))

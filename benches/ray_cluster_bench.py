"""Ray's side of `flare bench cluster`: a head with no CPUs and two worker nodes with 2 CPUs
each (real `ray start` processes on this machine), this script as the driver.

Transfer: the driver puts a fresh 1 GiB array each round; a task pinned to node n1 (custom
resource) takes it and returns its length; submit to result, median of ROUNDS. Throughput:
TASKS 1-CPU no-op tasks pinned to n1, then free to use both nodes. Prints one JSON line.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

# Ray 2.60 clusters authenticate with a token; every process of this one shares a fresh one
# (set before Ray is imported: it reads its settings then).
token_file = os.path.join(tempfile.mkdtemp(prefix="ray-token-"), "auth_token")
with open(token_file, "w") as f:
    f.write(os.urandom(16).hex())
os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file)
os.environ.pop("RAY_AUTH_TOKEN", None)

import numpy as np
import ray

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=1 << 30)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--tasks", type=int, default=20000)
a = p.parse_args()

ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
tmp = tempfile.mkdtemp(prefix="ray-cluster-bench-")
port = "6390"
store = str(3 << 30)
env = dict(os.environ)
def sh(*args):
    subprocess.run([ray_bin, *args], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sh("start", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--num-cpus", "0", "--include-dashboard=false", "--temp-dir", tmp, "--object-store-memory", store)
try:
    for n in ("n1", "n2"):
        sh("start", "--node-ip-address", "127.0.0.1", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--resources", json.dumps({n: 100}), "--object-store-memory", store)
    ray.init(address=f"127.0.0.1:{port}", _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    deadline = time.time() + 60
    while sum(1 for n in ray.nodes() if n["Alive"]) < 3:
        assert time.time() < deadline, "the worker nodes never joined"
        time.sleep(0.2)

    @ray.remote(num_cpus=1)
    def byte_len(x):
        return len(x)

    @ray.remote(num_cpus=1)
    def noop(i):
        return i

    on_n1 = {"resources": {"n1": 1}}
    ray.get(byte_len.options(**on_n1).remote(np.ones(16, dtype=np.uint8)))
    ray.get(byte_len.options(resources={"n2": 1}).remote(np.ones(16, dtype=np.uint8)))
    pulls = []
    for r in range(a.rounds):
        obj = ray.put(np.full(a.size, r, dtype=np.uint8))
        t0 = time.perf_counter()
        n = ray.get(byte_len.options(**on_n1).remote(obj))
        pulls.append(time.perf_counter() - t0)
        assert n == a.size
        del obj

    def rate(opts):
        t0 = time.perf_counter()
        refs = [noop.options(**opts).remote(i) for i in range(a.tasks)]
        out = ray.get(refs)
        assert out == list(range(a.tasks))
        return a.tasks / (time.perf_counter() - t0)

    one = rate(on_n1)
    two = rate({})
    pull = statistics.median(pulls)
    print(json.dumps({"impl": "ray", "object_bytes": a.size, "pull_s_median": pull, "gb_per_s": a.size / pull / 1e9,
                      "tasks": a.tasks, "tasks_per_s_one_node": one, "tasks_per_s_two_nodes": two, "two_over_one": two / one}))
finally:
    ray.shutdown()
    subprocess.run([ray_bin, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

"""PyTorch DDP (gloo) step time, broken down as `flare bench train` breaks down Flare's.

Same MLP (Linear+ReLU, no activation on the output), same global batch split over the
ranks, Adam (foreach=False, as Flare's follows the single-tensor kernels), one thread per
rank, ranks as processes. DDP all-reduces in backward hooks (overlapped), so "backward" is
measured under `no_sync()` in separate steps and "allreduce" is the extra time a synced
backward takes (what the overlap did not hide).

Usage: ddp_torch.py --ranks 1,2 --widths 784,1024,1024,10 --batch 256 --steps 30 --warmup 5
Prints one JSON object per world size.
"""
import argparse, json, os, socket, statistics, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP


def mlp(widths):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def worker(rank, n, args, port, q):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    widths = [int(w) for w in args.widths.split(",")]
    per = args.batch // n
    torch.manual_seed(rank)
    model = mlp(widths)
    ddp = DDP(model) if n > 1 else model
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3, foreach=False)
    x = torch.randn(per, widths[0])
    y = torch.tensor([(i * 7 + rank) % widths[-1] for i in range(per)])
    fwd, bwd_sync, opt_t, step, bwd_nosync = [], [], [], [], []

    def one(sync):
        dist.barrier()
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if sync or n == 1:
            loss.backward()
        else:
            with ddp.no_sync():
                loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3

    for i in range(args.warmup + args.steps):
        f, b, o, s = one(True)
        if i >= args.warmup:
            fwd.append(f); bwd_sync.append(b); opt_t.append(o); step.append(s)
        _, b2, _, _ = one(False)
        if i >= args.warmup:
            bwd_nosync.append(b2)
    med = [statistics.median(v) for v in (fwd, bwd_nosync, bwd_sync, opt_t, step)]
    t = torch.tensor(med, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        f, bn, bs, o, s = t.tolist()
        q.put({"impl": "torch-ddp-gloo", "ranks": n, "widths": widths, "batch": args.batch, "forward_ms": f,
               "backward_ms": bn, "allreduce_ms": max(bs - bn, 0.0), "optimizer_ms": o, "step_ms": s,
               "samples_per_s": args.batch / (s / 1e3), "torch": torch.__version__})
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--widths", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    for n in [int(r) for r in args.ranks.split(",")]:
        q = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=worker, args=(r, n, args, port, q)) for r in range(n)]
        for pr in procs:
            pr.start()
        print(json.dumps(q.get(timeout=600)), flush=True)
        for pr in procs:
            pr.join()

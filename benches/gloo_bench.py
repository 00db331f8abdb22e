"""torch.distributed gloo collectives, timed the way `flare bench collectives` times its own.

Each rank is a process (torch.multiprocessing.spawn); per size: `warmup` untimed operations,
a barrier, `iters` timed ones; the time is the slowest rank's mean. Prints one JSON row per
size, with the fields and bus-bandwidth factors of `flare bench collectives --json`.
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BUS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
}


def worker(rank, args, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world_size)
    n = args.world_size
    for size in args.sizes:
        count = max(size // 4, 1)
        buf = torch.ones(count, dtype=torch.float32)
        part = (count + n - 1) // n
        if args.op == "all_gather":
            inp = buf[:part].clone()
            outs = [torch.empty(part) for _ in range(n)]
            step = lambda: dist.all_gather(outs, inp)
            moved = part * n * 4
        elif args.op == "reduce_scatter":
            # gloo has no reduce_scatter; torch emulates none either. Report it missing.
            raise SystemExit("gloo does not implement reduce_scatter")
        elif args.op == "broadcast":
            step = lambda: dist.broadcast(buf, 0)
            moved = count * 4
        else:
            step = lambda: dist.all_reduce(buf)
            moved = count * 4
        for _ in range(args.warmup):
            step()
        dist.barrier()
        t = time.perf_counter()
        for _ in range(args.iters):
            step()
        secs = torch.tensor([(time.perf_counter() - t) / args.iters], dtype=torch.float64)
        dist.all_reduce(secs, op=dist.ReduceOp.MAX)
        if rank == 0:
            algbw = moved / secs.item() / 1e9
            print(json.dumps({
                "op": args.op, "backend": "gloo", "world_size": n, "bytes": moved, "count": moved // 4,
                "dtype": "float", "time_us": secs.item() * 1e6, "algbw_gbps": algbw,
                "busbw_gbps": algbw * BUS[args.op](n),
            }), flush=True)
    dist.destroy_process_group()


def parse_size(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1].upper(), 1)
    return int(s[:-1] if mul > 1 else s) * mul


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--op", default="all_reduce")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--sizes", default="1M,16M")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(args, port), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()

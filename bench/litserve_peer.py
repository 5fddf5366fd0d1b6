"""The peer a user would pick instead of ``psr serve``: the same reward hosted by LitServe.

``python -m bench.litserve_peer --config rewards.yaml --reward clip_t --port P [--max-batch-size 32
--batch-timeout 0.01]`` serves ``POST /predict``. The model work is our reward's own ``score`` (so
both servers compute the very same numbers); decoding uses the same codecs. Everything around
it -- HTTP, queues between processes, batching, response encoding -- is LitServe's.

Bodies: JSON ``{"image": <base64 PNG/JPEG>, "prompt": str}``, or (LitServe's binary path,
multipart form) ``image`` = raw RGB bytes as a file part, ``shape`` = ``"h,w,3"``, ``prompt``.
Answer: ``{"score": float | null}``. Needs the optional ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import litserve as ls

from shared.images import b64decode, decode_compressed, decode_raw
from shared.protocol import Sample


class RewardAPI(ls.LitAPI):
    """One configured reward as a LitServe API (batched when ``max_batch_size`` > 1)."""

    def __init__(self, config_path: str, reward: str, threads: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.config_path, self.reward_name, self.threads = config_path, reward, threads

    def setup(self, device: str) -> None:
        import torch

        from reward_server.config import ServerConfig
        from reward_server.models.quiet import quiet_model_libraries
        from reward_server.registry import build_rewards, load_rewards
        from shared.config import load_config

        quiet_model_libraries()
        torch.set_num_threads(self.threads)
        config = load_config(ServerConfig, self.config_path)
        self.reward = build_rewards(config, only=[self.reward_name])[self.reward_name]
        load_rewards({self.reward_name: self.reward})

    def decode_request(self, request) -> Sample:  # unannotated: LitServe then passes the parsed body
        if isinstance(request, dict):  # JSON
            return Sample(decode_compressed(b64decode(request["image"])), request.get("prompt", ""))
        shape = [int(x) for x in str(request["shape"]).split(",")]  # multipart form
        return Sample(decode_raw(request["image"].file.read(), shape), str(request.get("prompt", "")))

    def predict(self, x: Any) -> Any:
        batched = isinstance(x, list)
        results = self.reward.score(x if batched else [x])
        return results if batched else results[0]

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"score": output.score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--reward", default="clip_t")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queues instead of multiprocessing")
    args = parser.parse_args()
    api = RewardAPI(args.config, args.reward, args.threads, max_batch_size=args.max_batch_size,
                    batch_timeout=args.batch_timeout if args.max_batch_size > 1 else 0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60, fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()

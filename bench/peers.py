"""``psr serve`` side by side with LitServe, the server a user would pick instead, in one run.

    python -m bench.peers [--quick] [--rounds 3] [--duration 3] [--threads 1]

Both host the same reward (clip_t, cosine) on the same random CLIP: a tiny one (hidden 32,
2 layers, 64 px input, patch 8) and a ~10M-parameter one (hidden 256, 9 layers, 224 px input,
patch 16); LitServe runs our reward's own ``score`` inside its ``LitAPI`` (bench/litserve_peer.py),
so the model work and the scores are identical and only the serving differs. Same load: a
closed loop of 1, 8 and 32 callers, one 64 px image per request, either a JSON body with a
base64 PNG or each server's binary path (msgpack with raw RGB for psr; a multipart file upload
of raw RGB for LitServe); plus 512 px images, JSON/PNG against the binary path. Same batching
limits: at most 32 samples per model call and 10 ms of waiting for more (LitServe fills a batch
for up to ``batch_timeout=0.01``; psr, ``max_wait_ms: 10``, waits only under load, for the callers
it just answered: a request that finds the model idle runs at once); for reference also psr with
``max_wait_ms: 0`` and LitServe with batching off. Same torch threads,
same uvicorn (uvloop + httptools) under both. The load generator (bench/loadgen.py) is a
minimal asyncio HTTP client, so it takes little CPU from the servers.

Printed per row: images/s, median latency, and CPU milliseconds per image summed over every
process of the server (less sensitive than throughput to what else runs on the machine). On a
small shared machine absolute figures and even ratios move with the load of others, so: every
server is started once and frozen (SIGSTOP) while another is measured; measurements alternate
between servers load by load, the order flipping every round; each figure is the median over
rounds. ``--quick`` (2 short rounds, ~5 minutes) is a check; quote the full run (~12 minutes).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.loadgen import HttpRequest, build_post, paired_latencies, post_once, run_load
from reward_server.serving import free_port
from shared.images import encode_image, encode_image_json
from shared.protocol import JSON, MSGPACK, pack
from tests.servers import REPO, psr_command, repo_env, wait_for

HOST = "127.0.0.1"
PROMPT = "a dog on a sofa"
MAX_BATCH, WINDOW_MS = 32, 10.0
MODELS = {  # name -> write_clip arguments
    "tiny": {"image_size": 64, "hidden_size": 32, "num_layers": 2, "patch_size": 8, "projection_dim": 32},
    "10M": {"image_size": 224, "hidden_size": 256, "num_layers": 9, "patch_size": 16, "projection_dim": 256},
}


# -- the servers --------------------------------------------------------------------------------
@dataclass
class Peer:
    """A running server process group that can be frozen while another one is measured."""

    label: str
    kind: str  # "psr" or "litserve"
    port: int
    proc: subprocess.Popen
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every process of the server's group."""
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # process group
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def freeze(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)
        time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _healthy(port: int, path: str) -> bool:
    import httpx

    try:
        return httpx.get(f"http://{HOST}:{port}{path}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_peer(label: str, kind: str, config: Path, workdir: Path, threads: int, max_batch: int = MAX_BATCH,
               window_ms: float = WINDOW_MS) -> Peer:
    port = free_port()
    if kind == "psr":
        cmd = psr_command("serve", "--config", str(config), "--port", str(port), "--set",
                          f"rewards.clip_t.max_batch_size={max_batch}", "--set", f"rewards.clip_t.max_wait_ms={window_ms}")
        ready = "/readyz"
    else:
        cmd = [sys.executable, "-m", "bench.litserve_peer", "--config", str(config), "--port", str(port),
               "--max-batch-size", str(max_batch), "--batch-timeout", str(window_ms / 1000), "--threads", str(threads)]
        ready = "/health"
    log = workdir / f"{config.stem}-{label.replace(' ', '_').replace('/', '_')}.log"
    env = repo_env(OMP_NUM_THREADS=str(threads), PSR_API_KEYS="")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    peer = Peer(label, kind, port, proc, log)
    try:
        wait_for(lambda: _healthy(port, ready), 180, f"{label} on port {port}", proc)
    except AssertionError:
        peer.stop()
        raise AssertionError(f"{label} did not start; its log:\n{log.read_text()[-3000:]}") from None
    return peer


# -- the load -----------------------------------------------------------------------------------
def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients plus noise: PNG-compressible like generated images, every one different."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        across, down = np.meshgrid(ramp, ramp)
        base = np.stack([a * across, b * down, c * across * down], axis=-1)
        noise = rng.normal(0, 8, (size, size, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


def _multipart(raw: bytes, shape: tuple[int, ...], prompt: str) -> tuple[bytes, str]:
    boundary = "psrbenchboundary7d1c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="shape"\r\n\r\n{",".join(map(str, shape))}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{prompt}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image.raw"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + raw + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def requests_for(kind: str, port: int, images: list[np.ndarray], wire: str) -> list[HttpRequest]:
    """One single-image request per image, in ``wire`` form ("json" or "binary") for server ``kind``."""
    out = []
    for image in images:
        if kind == "psr":
            if wire == "json":
                body = json.dumps({"rewards": {"clip_t": 1.0},
                                   "samples": [{"image": encode_image_json(image, "png"), "prompt": PROMPT}]}).encode()
                out.append(build_post(HOST, port, "/v1/score", body, JSON))
            else:
                body = pack({"rewards": {"clip_t": 1.0}, "samples": [{"image": encode_image(image, "raw"),
                                                                       "prompt": PROMPT}]})
                out.append(build_post(HOST, port, "/v1/score", body, MSGPACK))
        elif wire == "json":
            png = encode_image(image, "png")
            body = json.dumps({"image": base64.b64encode(png).decode(), "prompt": PROMPT}).encode()
            out.append(build_post(HOST, port, "/predict", body, JSON))
        else:
            body, content_type = _multipart(np.ascontiguousarray(image).tobytes(), image.shape, PROMPT)
            out.append(build_post(HOST, port, "/predict", body, content_type))
    return out


def score_of(kind: str, answer: bytes) -> float:
    data = json.loads(answer)
    return data["scores"]["clip_t"][0] if kind == "psr" else data["score"]


# -- measuring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    images_per_s: float
    p50_ms: float
    cpu_ms_per_image: float
    errors: int


@dataclass
class Results:
    runs: dict[tuple, list[Run]] = field(default_factory=lambda: defaultdict(list))
    model_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fixed_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def median(self, key: tuple) -> Run:
        """Medians over rounds (errors summed)."""
        rs = self.runs.get(key, [])
        if not rs:
            return Run(float("nan"), float("nan"), float("nan"), 0)
        return Run(statistics.median(r.images_per_s for r in rs), statistics.median(r.p50_ms for r in rs),
                   statistics.median(r.cpu_ms_per_image for r in rs), sum(r.errors for r in rs))


class ModelClock:
    """The reward alone in this process, timed on one image: the model's share of a request."""

    def __init__(self, config: Path, image: np.ndarray, threads: int):
        import torch

        from reward_server.config import ServerConfig
        from reward_server.registry import build_rewards, load_rewards
        from shared.config import load_config
        from shared.protocol import Sample

        torch.set_num_threads(threads)
        self.reward = build_rewards(load_config(ServerConfig, config), only=["clip_t"])["clip_t"]
        load_rewards({"clip_t": self.reward})
        self.sample = [Sample(image, PROMPT)]
        self.cpu_ms: list[float] = []
        for _ in range(20):  # warm-up
            self.ms_once()

    def ms_once(self) -> float:
        """Milliseconds of one ``score`` call on one image (its CPU milliseconds go to ``cpu_ms``)."""
        start, cpu = time.perf_counter(), time.process_time()
        self.reward.score(self.sample)
        self.cpu_ms.append((time.process_time() - cpu) * 1000)
        return (time.perf_counter() - start) * 1000


def measure_phase(model: str, peers: dict[str, Peer], loads: list[tuple[str, str, int, int]], results: Results,
                  rounds: int, duration: float, images: dict[int, list[np.ndarray]], clock: ModelClock) -> None:
    """``loads``: (peer label, wire, image size, callers). Alternates peers load by load; after each
    one-caller JSON psr run, pairs requests with the model alone (the fixed cost is the difference)."""
    requests = {(label, wire, size): requests_for(peers[label].kind, peers[label].port, images[size], wire)
                for label, wire, size, _ in loads}
    grouped: dict[tuple[str, int, int], list[str]] = defaultdict(list)  # same load, different peers
    for label, wire, size, callers in loads:
        grouped[(wire, size, callers)].append(label)
    current: Peer | None = None
    for r in range(rounds):
        for (wire, size, callers), labels in grouped.items():
            for label in labels if r % 2 == 0 else labels[::-1]:
                peer = peers[label]
                if current is not peer:
                    if current is not None:
                        current.freeze()
                    peer.thaw()
                    current = peer
                cpu = peer.cpu_seconds()
                result = run_load(HOST, peer.port, requests[(label, wire, size)], callers, duration)
                cpu = peer.cpu_seconds() - cpu
                results.runs[(model, label, wire, size, callers)].append(
                    Run(result.images_per_s, result.p50_ms, 1000 * cpu / max(1, result.answered), result.errors))
                if result.errors:
                    print(f"  ! {label} {wire} {size}px x{callers}: {result.errors} errors, e.g. {result.first_error}")
                if label == "psr" and wire == "json" and size == 64 and callers == 1:
                    # fixed cost per request: round trip minus the model alone, timed moments apart
                    pairs = paired_latencies(HOST, peer.port, requests[(label, wire, size)][0], 60, clock.ms_once)
                    results.fixed_ms[model].extend(http - alone for http, alone in pairs)
                    results.model_ms[model].extend(alone for _, alone in pairs)
        print(f"  {model}: round {r + 1}/{rounds} done", flush=True)
    if current is not None:
        current.freeze()


# -- the report ---------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def print_table(results: Results, title: str, rows: list[tuple[str, tuple, tuple]], left: str,
                right: str) -> list[float]:
    """rows: (row label, key of the left server, key of the right server); returns right/left per row."""
    print(f"\n{title}")
    print(f"| callers | {left} img/s | {right} img/s | {right} / {left} | p50 ms {left} / {right} "
          f"| CPU ms per image {left} / {right} | errors |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for label, key_left, key_right in rows:
        a, b = results.median(key_left), results.median(key_right)
        ratios.append(_ratio(b.images_per_s, a.images_per_s))
        print(f"| {label} | {a.images_per_s:.0f} | {b.images_per_s:.0f} | {ratios[-1]:.2f} | "
              f"{a.p50_ms:.1f} / {b.p50_ms:.1f} | {a.cpu_ms_per_image:.2f} / {b.cpu_ms_per_image:.2f} | "
              f"{a.errors + b.errors} |")
    return ratios


def report(results: Results, agree: list[tuple[str, str, float]], overhead: tuple[float, float] | None,
           model_cpu: dict[str, float], rounds: int, quick: bool) -> None:
    spread = max(abs(a[2] - b[2]) for a in agree for b in agree if a[0] == b[0])
    print(f"\nevery server gives the same score for the same image (largest difference {spread:.1e}); "
          f"figures are medians of {rounds} alternating rounds")

    def rows(model: str, wire: str, size: int, left: str = "LitServe", right: str = "psr"):
        suffix = "" if model == "tiny" else f", {model} CLIP at 224 px"
        return [(f"{c}{suffix}", (model, left, wire, size, c), (model, right, wire, size, c)) for c in (1, 8, 32)]

    json_ratios = print_table(results, "64 px images, JSON body with a base64 PNG, clip_t on the tiny and the ~10M CLIP",
                              rows("tiny", "json", 64) + rows("10M", "json", 64), "LitServe", "psr")
    print_table(results, "64 px images, binary bodies (psr: msgpack with raw RGB; LitServe: multipart upload of "
                "raw RGB), tiny CLIP", rows("tiny", "binary", 64), "LitServe", "psr")
    print_table(results, "reference configurations, tiny CLIP, JSON: psr with max_wait_ms 0 (no regroup wait), "
                "LitServe with batching off", rows("tiny", "json", 64, "LitServe nobatch", "psr wait0"),
                "LitServe nobatch", "psr wait0")
    print("\n512 px images, 8 callers, tiny CLIP: JSON/PNG against each server's binary path")
    print("| server | JSON/PNG img/s | binary img/s | binary / JSON |")
    print("|---|---|---|---|")
    fast_path = {}
    for label in ("psr", "LitServe"):
        j = results.median(("tiny", label, "json", 512, 8)).images_per_s
        b = results.median(("tiny", label, "binary", 512, 8)).images_per_s
        fast_path[label] = _ratio(b, j)
        print(f"| {label} | {j:.0f} | {b:.0f} | {fast_path[label]:.2f} |")
    psr1 = results.median(("tiny", "psr", "json", 64, 1)).images_per_s
    wait0 = results.median(("tiny", "psr wait0", "json", 64, 1)).images_per_s
    fixed = statistics.median(results.fixed_ms["tiny"]) if results.fixed_ms["tiny"] else float("nan")
    model = statistics.median(results.model_ms["tiny"]) if results.model_ms["tiny"] else float("nan")
    print("\ngoals of issue 12, on this run's medians:")
    goals = [
        ("1 caller, tiny: psr / LitServe (batched) >= 2", json_ratios[0], 2.0, True),
        ("1 caller, tiny: psr (max_wait_ms 10) / psr with max_wait_ms 0 >= 0.9 (a lone caller never waits)",
         _ratio(psr1, wait0), 0.9, True),
        ("8 callers, tiny: psr / LitServe >= 1.5", json_ratios[1], 1.5, True),
        ("32 callers, tiny: psr / LitServe >= 1.5", json_ratios[2], 1.5, True),
        *((f"{c} callers, 10M: psr / LitServe >= 1.0", r, 1.0, True) for c, r in zip((1, 8, 32), json_ratios[3:], strict=True)),
        ("512 px, psr: msgpack/raw / JSON/PNG >= 2", fast_path["psr"], 2.0, True),
        (f"fixed cost of a one-image JSON request: round trip - model alone ({model:.2f} ms), median of "
         f"{len(results.fixed_ms['tiny'])} pairs <= 1.5 ms", fixed, 1.5, False),
    ]
    if overhead is not None:
        from bench.serving import OVERHEAD_GOAL_MS

        goals.append((f"in-process service overhead, 16 images/request (bench/serving.py [0]) <= {OVERHEAD_GOAL_MS} ms",
                      overhead[1] - overhead[0], OVERHEAD_GOAL_MS, False))
    for text, value, goal, at_least in goals:
        met = value >= goal if at_least else value <= goal
        print(f"  [{'met' if met else 'MISSED'}] {text}: {value:.2f}")
    cpu1 = results.median(("tiny", "psr", "json", 64, 1)).cpu_ms_per_image
    print(f"  (the same in CPU time, blind to how long woken threads wait for a core on a busy machine: psr's CPU "
          f"per image at 1 caller {cpu1:.2f} ms - the model's CPU per call {model_cpu.get('tiny', float('nan')):.2f} "
          f"ms = {cpu1 - model_cpu.get('tiny', float('nan')):.2f} ms)")
    if quick:
        print("(--quick: 2 short rounds, a check; run without --quick for figures to quote)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 short rounds: a check, not a result")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 3; quick 2)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measurement on the tiny CLIP, 3x that on the 10M (default 3; quick 1.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model in both servers")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs, models)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    duration = args.duration or (1.5 if args.quick else 3.0)
    try:
        import litserve
    except ImportError:
        print("bench.peers needs LitServe: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import torch

    from bench.serving import make_samples, service_overhead
    from reward_server.config import ServerConfig
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.tiny.clip import write_clip
    from shared.config import load_config

    quiet_model_libraries()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="psr-peers-"))
    print(f"psr vs LitServe {litserve.__version__}: clip_t (cosine), max batch {MAX_BATCH}, window {WINDOW_MS:g} ms, "
          f"{args.threads} torch thread(s) per server, closed loop, {rounds} rounds x {duration:g} s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    images = {64: make_images(64, 64), 512: make_images(16, 512, seed=1)}
    configs = {}
    for name, shape in MODELS.items():
        write_clip(workdir / name, **shape)
        configs[name] = workdir / f"{name}.yaml"
        configs[name].write_text(json.dumps({"rewards": {"clip_t": {
            "type": "clip_t", "model": str(workdir / name), "device": "cpu", "max_batch_size": MAX_BATCH,
            "max_wait_ms": WINDOW_MS, "options": {"mode": "cosine"}}}}))
    overhead = service_overhead(load_config(ServerConfig, configs["tiny"]), "clip_t", make_samples(16, 64))
    callers = (1, 8, 32)
    phases = {
        "tiny": (
            [("psr", "psr", {}), ("LitServe", "litserve", {}), ("psr wait0", "psr", {"window_ms": 0.0}),
             ("LitServe nobatch", "litserve", {"max_batch": 1})],
            [*((p, w, 64, c) for c in callers for w in ("json", "binary") for p in ("psr", "LitServe")),
             *((p, "json", 64, c) for c in callers for p in ("psr wait0", "LitServe nobatch")),
             *((p, w, 512, 8) for w in ("json", "binary") for p in ("psr", "LitServe"))],
            duration,
        ),
        "10M": (
            [("psr", "psr", {}), ("LitServe", "litserve", {})],
            [*((p, "json", 64, c) for c in callers for p in ("psr", "LitServe"))],
            3 * duration,  # a batch of 32 at 224 px takes seconds on a small CPU
        ),
    }
    results, agree, model_cpu = Results(), [], {}
    for model, (servers, loads, seconds) in phases.items():
        clock = ModelClock(configs[model], images[64][0], args.threads)
        peers: dict[str, Peer] = {}
        try:
            for label, kind, kw in servers:
                print(f"  starting {label} ({model} CLIP)...", flush=True)
                peers[label] = start_peer(label, kind, configs[model], workdir, args.threads, **kw)
                first = requests_for(kind, peers[label].port, images[64][:1], "json")[0]
                status, answer = post_once(HOST, peers[label].port, first)
                if status != 200:
                    raise AssertionError(f"{label} answered {status}: {answer[:300]!r}")
                agree.append((model, label, score_of(kind, answer)))
                peers[label].freeze()
            measure_phase(model, peers, loads, results, rounds, seconds, images, clock)
            model_cpu[model] = statistics.median(clock.cpu_ms)
        finally:
            for peer in peers.values():
                peer.stop()
    report(results, agree, overhead, model_cpu, rounds, quick=args.quick)
    if args.keep:
        print(f"logs and models kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

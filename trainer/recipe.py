"""``psr demo --recipe``: the paper's whole recipe on tiny models, on the CPU, in a few minutes.

data -> SFT -> Flow-GRPO from the SFT LoRA (PSR rewards 0.4 / 0.4 / 0.2 served in-process) ->
export -> PSRBench generate + score. Each stage calls what a user would run (``run_training`` as
``psr train`` does, ``psr export``, ``psr bench generate/score``), so the folder it leaves is the
same as from the commands in the README. Tiny random models: the numbers show the plumbing works,
not image quality.
"""

from __future__ import annotations

import time
from pathlib import Path

from shared.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "configs" / "tiny_sft_cpu.yaml"
SIZE = 32  # the tiny configs' resolution
# The paper's total: 0.4 subject consistency + 0.4 VLM judge + 0.2 HPSv3 (psr make-tiny's reward names).
RECIPE_REWARDS = {"subject": 0.4, "judge": 0.4, "hpsv3": 0.2}


def make_data(workdir: Path, items_per_task: int) -> Path:
    """Stage 1: the training dataset (``dataset.json`` with targets and tasks).

    A synthetic stand-in for ``psr datagen``, which writes the same format: swap this call for
    ``psr datagen`` on its tiny config and the later stages are unchanged."""
    from trainer.evaluation.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(workdir / "data", items_per_task, SIZE, seed=0).parent


def stage(n: int, text: str) -> None:
    print(f"[{n}/6] {text}", flush=True)


def run_recipe(workdir: Path, sft_steps: int = 20, grpo_steps: int = 3, items_per_task: int = 2) -> int:
    """Run every stage under ``workdir``; prints what each produced and the final PSRBench table."""
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.serving import BackgroundServer
    from reward_server.tiny import make_tiny
    from shared.cli import main as psr
    from shared.client import RewardClient
    from trainer.config import TrainConfig, tiny_run_config
    from trainer.evaluation.scoring import BenchConfig
    from trainer.export import export_checkpoint
    from trainer.train import run_training

    quiet_model_libraries()
    start = time.perf_counter()
    workdir = workdir.resolve()
    stage(1, f"tiny models -> {workdir / 'models'}; synthetic training data -> {workdir / 'data'}")
    config_path = make_tiny(workdir / "models")
    generator = workdir / "models" / "generator"
    data = make_data(workdir, items_per_task)

    stage(2, "SFT: flow matching on the dataset's targets (references mixed 2/3/4 by data.reference_mix)")
    sft_cfg = load_config(TrainConfig, SFT_CONFIG, [
        f"model.path={generator}", f"data.file={data}", f"run.output_dir={workdir / 'sft'}",
        f"run.steps={sft_steps}", f"run.save_every={sft_steps}", f"run.image_every={max(sft_steps // 2, 1)}",
    ])
    sft = run_training(sft_cfg, progress=True)
    print(f"      loss {sft['loss'][0]:.4f} -> {sft['loss'][-1]:.4f}; validation grid {sft['sample_grid']}")

    server = load_config(ServerConfig, config_path)
    needed = set(RECIPE_REWARDS) | {name for name in BenchConfig().rewards.model_dump().values() if name}
    server.rewards = {name: spec for name, spec in server.rewards.items() if name in needed}  # load only these
    with BackgroundServer(create_app(server)) as url, RewardClient(url) as client:
        client.wait_until_ready()
        weights = ", ".join(f"{w} {k}" for k, w in RECIPE_REWARDS.items())
        stage(3, f"Flow-GRPO from the SFT LoRA (model.init_lora), rewards {weights} on {url}")
        grpo_cfg = tiny_run_config(generator, url, workdir / "grpo", [
            f"model.init_lora={sft['checkpoint']}", f"data.file={data}", "data.prompts=[]",
            f"rewards.reward_weights={RECIPE_REWARDS}", "rewards.required=[]", f"run.steps={grpo_steps}",
            f"run.save_every={grpo_steps}", "sampling.group_size=4", "sampling.prompts_per_batch=2",
            "sampling.batches_per_step=1",
        ])
        grpo = run_training(grpo_cfg, client, progress=True)
        rewards = " -> ".join(f"{r:.4f}" for r in grpo["reward_mean"])
        print(f"      mean reward per step {rewards}; checkpoint {grpo['checkpoint']}")

        stage(4, "export: the GRPO checkpoint with the SFT LoRA under it, merged into one pipeline folder")
        exported = export_checkpoint(grpo["checkpoint"], workdir / "export", "merged", dtype="float32")
        print(f"      {exported}")

        stage(5, "PSRBench generate: the exported model on the dataset's items (grouped by task)")
        steps = str(grpo_cfg.sampling.num_steps)
        code = psr(["--log-level", "WARNING", "bench", "generate", "--data", str(data), "--model", str(exported),
                    "--out", str(workdir / "bench-gen"), "--steps", steps, "--size", str(SIZE),
                    "--device", "cpu", "--cpu-threads", "1", "--no-progress"])
        if code:
            return code
        stage(6, "PSRBench score: subject consistency, semantic alignment, aesthetics")
        code = psr(["--log-level", "WARNING", "bench", "score", "--data", str(data),
                    "--results", str(workdir / "bench-gen"), "--server", url, "--out", str(workdir / "bench"),
                    "--label", "sft+grpo", "--no-progress"])
    print(f"recipe done in {time.perf_counter() - start:.0f} s; everything is under {workdir}")
    return code

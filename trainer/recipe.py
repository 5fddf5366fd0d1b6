"""``psr demo --recipe``: the paper's whole recipe on tiny models, on the CPU, in about a minute.

data (``psr datagen`` on the tiny config ``psr make-tiny`` writes) -> SFT -> Flow-GRPO from the SFT
LoRA (PSR rewards 0.4 / 0.4 / 0.2) -> export -> PSRBench generate + score, with every reward served
in-process. Each stage calls what a user would run (``psr datagen``, ``run_training`` as ``psr train``
does, ``psr export``, ``psr bench generate/score``), so the folder it leaves is the same as from the
commands in the README. Tiny random models: the numbers show the plumbing works, not image quality.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from shared.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "configs" / "tiny_sft_cpu.yaml"
SIZE = 32  # the tiny configs' resolution
# The paper's total: 0.4 subject consistency + 0.4 VLM judge + 0.2 HPSv3 (psr make-tiny's reward names).
RECIPE_REWARDS = {"subject": 0.4, "judge": 0.4, "hpsv3": 0.2}
# The paper's SFT reference mix (2 / 3 / 4 references), restricted to the counts the data has.
PAPER_MIX = {2: 0.9, 3: 0.05, 4: 0.05}
OUTPUTS = ("data", "sft", "grpo", "export", "bench-gen", "bench")


def stage(n: int, text: str) -> None:
    print(f"[{n}/6] {text}", flush=True)


def reference_mix(counts: list[int]) -> dict[int, float]:
    """``PAPER_MIX`` over the reference counts present (a few tiny items may lack 3 or 4), renormalised."""
    present = {k: p for k, p in PAPER_MIX.items() if k in counts}
    if not present:
        raise ConfigError(f"the dataset has no items with 2-4 references (counts: {sorted(set(counts))})")
    total = sum(present.values())
    return {k: round(p / total, 4) for k, p in present.items()}


def served_rewards(datagen_config: Path) -> set[str]:
    """The rewards the recipe's stages ask for: GRPO's, PSRBench's and the datagen filters'."""
    from trainer.evaluation.scoring import BenchConfig

    filters = yaml.safe_load(datagen_config.read_text()).get("filters", {})
    datagen = {filters.get("aesthetic_reward"), filters.get("identity_reward")}
    bench = set(BenchConfig().rewards.model_dump().values())
    return {name for name in set(RECIPE_REWARDS) | bench | datagen if name}


def run_recipe(workdir: Path, sft_steps: int = 20, grpo_steps: int = 3, items: int = 16) -> int:
    """Run every stage under ``workdir``; prints what each produced and the final PSRBench table."""
    workdir = workdir.resolve()
    taken = [name for name in OUTPUTS if (workdir / name).exists()]
    if taken:
        raise ConfigError(f"{workdir} already holds a recipe run ({', '.join(taken)}): choose a new --workdir "
                          "or remove those folders")
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.serving import BackgroundServer
    from reward_server.tiny import make_tiny
    from shared.cli import main as psr
    from shared.client import RewardClient
    from trainer.config import TrainConfig, tiny_run_config
    from trainer.dataset import SFT_RULES, load_dataset
    from trainer.export import export_checkpoint
    from trainer.train import run_training

    quiet_model_libraries()
    start = time.perf_counter()
    data = workdir / "data"
    stage(1, f"data: tiny models -> {workdir / 'models'}; psr datagen ({items} items, tiny config) -> {data}")
    config_path = make_tiny(workdir / "models")
    generator = workdir / "models" / "generator"
    datagen_config = workdir / "models" / "datagen.yaml"
    server = load_config(ServerConfig, config_path)
    needed = served_rewards(datagen_config)
    server.rewards = {name: spec for name, spec in server.rewards.items() if name in needed}  # load only these
    with BackgroundServer(create_app(server)) as url, RewardClient(url) as client:
        client.wait_until_ready()
        code = psr(["--log-level", "WARNING", "datagen", "--config", str(datagen_config), "--out", str(data),
                    "--set", f"filters.server={url}", "--set", f"items={items}", "--no-progress"])
        if code:
            return code
        _, kept = load_dataset(data, SFT_RULES)
        mix = reference_mix([len(it.input_paths) for it in kept])

        stage(2, f"SFT: flow matching on the dataset's targets, references mixed {mix} (data.reference_mix)")
        sft_cfg = load_config(TrainConfig, SFT_CONFIG, [
            f"model.path={generator}", f"data.file={data}", f"run.output_dir={workdir / 'sft'}",
            f"data.reference_mix={mix}", f"run.steps={sft_steps}", f"run.save_every={sft_steps}",
            f"run.image_every={max(sft_steps // 2, 1)}",
        ])
        sft = run_training(sft_cfg, progress=True)
        print(f"      loss {sft['loss'][0]:.4f} -> {sft['loss'][-1]:.4f}; validation grid {sft['sample_grid']}")

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
        steps, guidance = str(grpo_cfg.sampling.num_steps), str(grpo_cfg.model.guidance_scale)  # as trained
        code = psr(["--log-level", "WARNING", "bench", "generate", "--data", str(data), "--model", str(exported),
                    "--out", str(workdir / "bench-gen"), "--steps", steps, "--size", str(SIZE),
                    "--guidance", guidance, "--device", "cpu", "--cpu-threads", "1", "--no-progress"])
        if code:
            return code
        stage(6, "PSRBench score: subject consistency, semantic alignment, aesthetics")
        code = psr(["--log-level", "WARNING", "bench", "score", "--data", str(data),
                    "--results", str(workdir / "bench-gen"), "--server", url, "--out", str(workdir / "bench"),
                    "--label", "sft+grpo", "--no-progress"])
    print(f"recipe done in {time.perf_counter() - start:.0f} s; everything is under {workdir}")
    return code

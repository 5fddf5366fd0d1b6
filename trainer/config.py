"""Strict, documented configuration of a training run (``psr train --config run.yaml``).

``algorithm`` picks the trainer: ``grpo`` (Flow-GRPO against a reward server) or ``sft``
(supervised flow matching on dataset targets). Both share the model, data, LoRA, optimizer and
run sections. Names follow trl's GRPOConfig where they fit (``reward_weights``,
``scale_rewards``, ``multi_objective_aggregation``). Rules spanning fields are checked when the
config is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.client import check_service_url
from shared.config import StrictModel


class ModelConfig(StrictModel):
    """The generator and how it is run."""

    path: str = Field(description="FLUX.1 Kontext-style pipeline folder or hub id (model_index.json layout)")
    resolution: int = Field(default=512, ge=16, description="generated image side in pixels (multiple of 16)")
    reference_size: int | None = Field(
        default=None, ge=16, description="reference side in pixels (default: resolution)"
    )
    max_sequence_length: int = Field(default=512, ge=1, le=512, description="T5 prompt tokens")
    guidance_scale: float = Field(default=2.5, description="embedded guidance for guidance-distilled models")
    device: str = Field(default="auto", description="'auto' (accelerate's device), 'cpu', 'cuda'")
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        default="auto",
        description="'auto' = bf16 on GPU, fp32 on CPU; frozen weights in that dtype, LoRA in fp32",
    )
    gradient_checkpointing: bool = Field(default=False, description="trade compute for activation memory")
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads while training on the CPU (1 is fastest for tiny models)",
    )
    init_lora: str | None = Field(
        default=None,
        description="start from this LoRA (a psr train checkpoint, e.g. an SFT result, or a PEFT folder): "
        "merged into the base weights before the new LoRA is added, so the reference model of the KL "
        "(adapters off) is the SFT model",
    )

    @field_validator("resolution", "reference_size")
    @classmethod
    def _multiple_of_16(cls, v: int | None) -> int | None:
        if v is not None and v % 16:
            raise ValueError(f"image sides must be multiples of 16 (VAE x8, 2x2 packing), got {v}")
        return v


class PromptItem(StrictModel):
    """One training prompt with its subjects."""

    prompt: str = Field(min_length=1, description="the instruction")
    references: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="reference images: file paths, or 'solid:R,G,B' for a plain colour image (tests, demo)",
    )
    categories: list[str] = Field(default_factory=list, description="category word per reference, e.g. 'dog'")

    @model_validator(mode="after")
    def _categories_match(self) -> PromptItem:
        if self.categories and len(self.categories) != len(self.references):
            raise ValueError(f"{len(self.categories)} categories for {len(self.references)} references")
        return self


class DataConfig(StrictModel):
    """Where training items come from: inline prompts (GRPO) and/or a dataset file or folder."""

    prompts: list[PromptItem] = Field(default_factory=list, description="inline prompt items (GRPO only)")
    file: str | None = Field(
        default=None,
        description="a dataset (README 'Data': the dataset format): its dataset.json or its folder, e.g. psr "
        "datagen's OUT; SFT needs target_path in every item",
    )
    reference_mix: dict[int, float] | None = Field(
        default=None,
        description="draw items by reference count with these probabilities, e.g. {2: 0.9, 3: 0.05, 4: 0.05} "
        "(the paper's SFT mix); null = every item equally likely",
    )

    @model_validator(mode="after")
    def _some_prompts(self) -> DataConfig:
        if not self.prompts and not self.file:
            raise ValueError("no training prompts: set data.prompts or data.file")
        mix = self.reference_mix
        if mix is not None:
            bad = sorted(k for k in mix if not 0 <= k <= 4)
            if bad or any(p < 0 for p in mix.values()) or abs(sum(mix.values()) - 1.0) > 1e-6:
                raise ValueError(
                    f"data.reference_mix {mix} must map reference counts 0-4 to probabilities >= 0 that sum to 1"
                )
        return self


class SamplingConfig(StrictModel):
    """Rollouts: SDE sampling of groups of images."""

    num_steps: int = Field(default=28, ge=1, le=1000, description="denoising steps per image")
    noise_level: float = Field(
        default=0.7, gt=0, description="SDE noise scale a in sigma_t = a sqrt(t/(1-t))"
    )
    group_size: int = Field(default=6, ge=1, description="images per prompt (G)")
    prompts_per_batch: int = Field(
        default=1, ge=1, description="prompts per sampling batch (batch = this x G)"
    )
    batches_per_step: int = Field(
        default=2, ge=1, description="sampling batches per training step (per process)"
    )
    cfg_scale: float = Field(default=1.0, ge=1.0, description="true classifier-free guidance scale (1 = off)")
    negative_prompt: str = Field(
        default="", description="prompt of the unconditional branch when cfg_scale > 1"
    )


class RewardsConfig(StrictModel):
    """The reward service and how its rewards combine."""

    url: str | None = Field(
        default=None, description="reward server URL, e.g. http://127.0.0.1:8000, or redis://host:6379/0 for the queue"
    )
    api_key: None = Field(
        default=None, description="not read: the key comes from PSR_API_KEY or PSR_API_KEY_FILE (never the config)"
    )
    reward_weights: dict[str, float] = Field(description="reward name -> weight (trl's reward_weights)")
    required: list[str] = Field(default_factory=list, description="rewards whose failure stops training")
    timeout_s: float = Field(default=600.0, gt=0, description="longest wait for one scoring request")
    ready_timeout_s: float = Field(
        default=600.0, ge=0, description="how long to wait at start-up for the server to load the rewards"
    )
    connect_timeout_s: float = Field(
        default=60.0, ge=0, description="how long to retry a server that does not answer at all (one started just "
        "before may not listen yet); then stop and say so"
    )
    max_retries: int = Field(default=3, ge=0, description="retries on 408/429/5xx")
    image_format: Literal["raw", "jpeg", "png"] = Field(
        default="raw", description="image encoding on the wire"
    )
    overlap: bool = Field(default=True, description="sample the next batch while the previous one is scored")
    send_subjects: bool = Field(
        default=True, description="send categories and reference images with each sample"
    )

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, url: str | None) -> str | None:
        return None if url is None else check_service_url(url)

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_key_in_config(cls, value: object) -> None:
        if value is not None:  # --set shows in `ps` and launcher errors; a YAML file gets copied around
            raise ValueError("API keys are not read from the config or --set: put the key in PSR_API_KEY, "
                             "or in a file named by PSR_API_KEY_FILE")
        return None

    @model_validator(mode="after")
    def _required_known(self) -> RewardsConfig:
        if not self.reward_weights:
            raise ValueError("rewards.reward_weights is empty: name at least one reward")
        unknown = sorted(set(self.required) - set(self.reward_weights))
        if unknown:
            raise ValueError(f"rewards.required names {unknown}, which are not in reward_weights")
        return self


class GRPOConfig(StrictModel):
    """Advantages and the policy loss."""

    scale_rewards: Literal["group", "batch", "none"] = Field(default="group", description="std used to scale")
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = Field(
        default="sum_then_normalize",
        description="trl's meaning: 'sum_then_normalize' = weighted sum, then normalised as scale_rewards says; "
        "'normalize_then_sum' (GDPO) = each reward normalised in its group, weighted sum, then the sum "
        "normalised over the step's samples",
    )
    min_valid_per_group: int = Field(
        default=2, ge=1, description="groups with fewer valid samples are dropped"
    )
    clip_range: float = Field(default=1e-4, gt=0, description="PPO ratio clip epsilon")
    adv_clip_max: float = Field(default=5.0, gt=0, description="advantages are clamped to +-this")
    beta: float = Field(
        default=0.0,
        ge=0,
        description="weight of the KL to the reference (LoRA disabled); the KL is the exact Gaussian KL of each "
        "SDE step, i.e. flow_grpo's KL divided by the step's |dt|: flow_grpo's beta b equals ours "
        "b * mean|dt| over the trained steps (trainer.grpo.flow_grpo_equivalent_beta)",
    )
    timestep_fraction: float = Field(
        default=1.0, gt=0, le=1, description="fraction of steps trained, evenly spaced"
    )
    train_timesteps: list[int] | None = Field(default=None, description="explicit step indices to train on")
    inner_epochs: int = Field(default=1, ge=1, description="passes over each rollout batch")
    update_policy: bool = Field(default=True, description="false: sample and score only (a control run)")


# Common FLUX LoRA practice (flow_grpo's Kontext trainer, diffusers' FLUX DreamBooth scripts, kohya's
# linear1/linear2): attention of both streams, both feed-forward nets of the double blocks, and the single
# blocks' fused MLP-in (proj_mlp) and attention+MLP-out (proj_out); not the model's final proj_out.
DEFAULT_LORA_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "single_transformer_blocks.*.proj_mlp",
    "single_transformer_blocks.*.proj_out",
]


class LoraConfig(StrictModel):
    """LoRA adapters on the transformer (peft)."""

    rank: int = Field(default=64, ge=1)
    alpha: float = Field(default=128.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        description="modules to adapt: a name X matches modules named X or ending in .X (peft's rule); a name "
        "with * or ? is a glob over full module names",
    )


class OptimConfig(StrictModel):
    """AdamW and the learning-rate schedule."""

    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    betas: tuple[float, float] = Field(default=(0.9, 0.999))
    eps: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    train_batch_size: int = Field(default=4, ge=1, description="samples per update micro-batch")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(default="constant")
    warmup_steps: int = Field(default=0, ge=0, description="optimizer steps of warm-up")
    ema: bool = Field(
        default=False,
        description="keep an exponential moving average of the LoRA weights; checkpoints save it beside the raw "
        "weights and validation, psr bench generate and psr export use it",
    )
    ema_decay: float = Field(
        default=0.99, gt=0, lt=1, description="EMA decay, reached after a warm-up: min(ema_decay, (1 + n) / (10 + n)) "
        "at update n, as diffusers' EMAModel"
    )


class RunConfig(StrictModel):
    """Length, seeds, outputs."""

    steps: int = Field(default=100, ge=1, description="training steps (sample, score, update)")
    seed: int = Field(default=0)
    output_dir: str = Field(default="runs/psr", description="checkpoints, TensorBoard logs, sample grids")
    save_every: int = Field(default=50, ge=1, description="checkpoint every this many steps (and at the end)")
    image_every: int = Field(
        default=10, ge=1, description="sample grid every this many steps (GRPO: rollouts; SFT: validation)"
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="older checkpoints are deleted")


class SFTConfig(StrictModel):
    """Supervised flow matching on (references, instruction, target) items (``algorithm: sft``)."""

    weighting_scheme: Literal["logit_normal", "mode", "none", "sigma_sqrt", "cosmap"] = Field(
        default="logit_normal",
        description="diffusers' names: logit_normal / mode sample timesteps non-uniformly; none = uniform; "
        "sigma_sqrt / cosmap sample uniformly and weight the loss instead",
    )
    logit_mean: float = Field(default=0.0, description="mean of the logit-normal timestep density")
    logit_std: float = Field(default=1.0, gt=0, description="std of the logit-normal timestep density")
    mode_scale: float = Field(default=1.29, description="scale of the 'mode' timestep density")
    timestep_shift: Literal["auto", "none"] = Field(
        default="auto",
        description="auto: shift sampled noise levels as the scheduler shifts sampling at model.resolution "
        "(FLUX's resolution-dependent shift); none: unshifted, as diffusers' FLUX DreamBooth scripts",
    )
    loss_buckets: int = Field(default=4, ge=1, le=20, description="loss is also logged per noise-level bucket")
    validation_items: int = Field(
        default=4, ge=0, description="the dataset's first items, generated every run.image_every steps (0 = none)"
    )
    validation_steps: int | None = Field(
        default=None, ge=1, description="ODE steps of validation images (default sampling.num_steps)"
    )


class TrainConfig(StrictModel):
    """Top level of a training config."""

    algorithm: Literal["grpo", "sft"] = Field(
        default="grpo", description="grpo: Flow-GRPO against a reward server; sft: supervised flow matching"
    )
    model: ModelConfig
    data: DataConfig
    rewards: RewardsConfig | None = Field(default=None, description="the reward service (GRPO)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.algorithm == "sft":
            if not self.data.file:
                raise ValueError("algorithm sft needs data.file: a dataset whose items have target_path")
            if self.data.prompts:
                raise ValueError("algorithm sft trains on dataset targets: remove data.prompts (they have no target)")
            return self
        if self.rewards is None:
            raise ValueError("algorithm grpo needs a rewards section (rewards.url and rewards.reward_weights)")
        if self.sampling.group_size < self.grpo.min_valid_per_group:
            raise ValueError(
                f"sampling.group_size ({self.sampling.group_size}) is below grpo.min_valid_per_group "
                f"({self.grpo.min_valid_per_group}): every group would be dropped"
            )
        bad = [k for k in self.grpo.train_timesteps or [] if not 0 <= k < self.sampling.num_steps]
        if bad:
            raise ValueError(f"grpo.train_timesteps {bad} outside 0..{self.sampling.num_steps - 1}")
        if self.grpo.multi_objective_aggregation == "normalize_then_sum" and self.grpo.scale_rewards != "group":
            raise ValueError(
                "grpo.multi_objective_aggregation normalize_then_sum scales each reward by its group std and the "
                "sum by the step's std (trl's rule); leave grpo.scale_rewards at 'group'"
            )
        return self

    def train_step_indices(self) -> list[int]:
        """Which denoising steps the loss uses."""
        if self.grpo.train_timesteps:
            return sorted(set(self.grpo.train_timesteps))
        n = self.sampling.num_steps
        count = max(1, round(n * self.grpo.timestep_fraction))
        return sorted({int(i * n / count) for i in range(count)})


TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def tiny_run_config(
    generator: str | Path, reward_url: str | None, output_dir: str | Path, overrides: list[str] | None = None
) -> TrainConfig:
    """``configs/tiny_cpu.yaml`` pointed at a tiny generator and a reward server (what ``psr demo`` trains)."""
    from shared.config import load_config

    base = [f"model.path={generator}", f"run.output_dir={output_dir}"]
    if reward_url:
        base.append(f"rewards.url={reward_url}")
    return load_config(TrainConfig, TINY_CONFIG, base + list(overrides or []))

"""The ``psr datagen`` config: typed, documented, strict (unknown keys are an error), ``--set`` overrides.

With no file at all the defaults are the paper-scale setting (FLUX.1-dev targets, FLUX.1 Kontext
references and edits, Grounding DINO, Qwen2.5 writer and Qwen2.5-VL re-captioner);
``configs/datagen_flux.yaml`` spells it out and ``psr make-tiny DIR`` writes ``DIR/datagen.yaml``
for the tiny CPU models. Relative model paths start at the config file's folder.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from reward_server.models.detectors import DetectorOptions
from shared.config import StrictModel, config_hash
from trainer.datagen import instructions
from trainer.dataset import TASKS

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
EDIT_TASKS = ("attribute", "action", "background", "complex")
SUBJECTS_PER_TASK = {"three": 3, "four": 4}  # every other task has two subjects
# Settings that change how a stage runs, not what it makes: a run may resume with other values.
EXEC_FIELDS = frozenset(
    {"device", "dtype", "batch_size", "concurrency", "timeout_s", "max_retries", "api_key_env", "endpoint", "server"}
)


def subjects_for(task: str) -> int:
    """How many subjects an item of ``task`` has."""
    return SUBJECTS_PER_TASK.get(task, 2)


class Placement(StrictModel):
    """Where a model runs."""

    device: str = Field(default="auto", description="'auto' (cuda:LOCAL_RANK when on a GPU, else cpu), 'cpu', 'cuda:1'")
    dtype: Dtype = Field(default="auto", description="'auto' = bfloat16 on a GPU, float32 on the CPU")


def _check_format(template: str, where: str, **values: str) -> None:
    try:
        template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        names = ", ".join("{" + k + "}" for k in values)
        raise ValueError(f"{where}: bad placeholder {exc} in {template!r}; available: {names}") from exc


class LanguageModelConfig(Placement):
    """A language model run in process (``transformers``) or behind an OpenAI-compatible endpoint (``openai``)."""

    kind: str
    model: str | None = Field(default=None, description="checkpoint (transformers), or the served model name (openai)")
    revision: str | None = Field(default=None, description="hub revision of the checkpoint")
    endpoint: str | None = Field(default=None, description="openai: base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(default=None, description="openai: environment variable holding the API key")
    max_new_tokens: int = Field(default=96, ge=8, le=1024, description="most tokens of one answer")
    concurrency: int = Field(default=16, ge=1, description="openai: requests in flight")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: per request")
    max_retries: int = Field(default=2, ge=0, description="openai: retries on 408/429/5xx/connection errors")

    def check_backend(self, section: str) -> None:
        """A model for a model kind; an endpoint for ``openai``."""
        if self.kind in ("transformers", "openai") and not self.model:
            raise ValueError(f"{section}.kind {self.kind!r} needs {section}.model")
        if self.kind == "openai" and not self.endpoint:
            raise ValueError(f"{section}.kind 'openai' needs {section}.endpoint, e.g. http://localhost:8000/v1")


class WriterConfig(LanguageModelConfig):
    """The language model that writes scene prompts and edit instructions."""

    kind: Literal["template", "transformers", "openai"] = Field(
        default="transformers",
        description="transformers (in-process causal LM), openai (an OpenAI-compatible endpoint, e.g. vLLM), "
        "or template (deterministic fill-ins from scene_templates / edit_templates: offline tests, no LM)",
    )
    model: str | None = Field(default="Qwen/Qwen2.5-7B-Instruct", description="checkpoint, or the served model name")
    temperature: float = Field(default=0.7, ge=0, le=2, description="sampling temperature (0: greedy)")
    top_p: float = Field(default=0.95, gt=0, le=1, description="nucleus sampling mass (with temperature > 0)")
    batch_size: int = Field(default=32, ge=1, description="items per stage batch")
    scene_instruction: str = Field(default=instructions.SCENE, description="asks for 'Prompt: ...' ({subjects})")
    edit_instructions: dict[str, str] = Field(
        default_factory=lambda: dict(instructions.EDIT),
        description="per edit task, asks for 'Edit: ...' ({prompt}, {subjects})",
    )
    scene_templates: list[str] = Field(
        default_factory=lambda: list(instructions.SCENE_TEMPLATES), description="template: {subjects}, {place}"
    )
    edit_templates: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in instructions.EDIT_TEMPLATES.items()},
        description="template: per edit task ({subject}, {other}, {colour}, {place})",
    )
    places: list[str] = Field(default_factory=lambda: list(instructions.PLACES), min_length=1,
                              description="template: the {place} fill-ins")
    colours: list[str] = Field(default_factory=lambda: list(instructions.COLOURS), min_length=1,
                               description="template: the {colour} fill-ins")

    @model_validator(mode="after")
    def _consistent(self) -> WriterConfig:
        self.check_backend("writer")
        _check_format(self.scene_instruction, "writer.scene_instruction", subjects="x")
        if set(self.edit_instructions) != set(EDIT_TASKS) or set(self.edit_templates) != set(EDIT_TASKS):
            raise ValueError(f"writer.edit_instructions and writer.edit_templates need exactly the tasks {EDIT_TASKS}")
        for task, text in self.edit_instructions.items():
            _check_format(text, f"writer.edit_instructions.{task}", prompt="x", subjects="x")
        if not self.scene_templates or not all(self.edit_templates.values()):
            raise ValueError("writer.scene_templates and every writer.edit_templates list need at least one template")
        for text in self.scene_templates:
            _check_format(text, "writer.scene_templates", subjects="x", place="x")
        for task, texts in self.edit_templates.items():
            for text in texts:
                _check_format(text, f"writer.edit_templates.{task}", subject="x", other="x", colour="x", place="x")
        return self


class T2IConfig(Placement):
    """The text-to-image model that draws the multi-subject target: any diffusers pipeline."""

    model: str = Field(default="black-forest-labs/FLUX.1-dev", description="loaded with DiffusionPipeline.from_pretrained")
    revision: str | None = Field(default=None, description="hub revision of the pipeline")
    steps: int = Field(default=28, ge=1, le=1000, description="sampling steps")
    guidance_scale: float = Field(default=3.5, ge=0, description="the pipeline's guidance_scale")
    size: int = Field(default=512, ge=16, description="image side in pixels (multiple of 16)")
    batch_size: int = Field(default=4, ge=1, description="images per pipeline call (and items per stage batch)")
    call_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more keyword arguments of the pipeline call, e.g. max_sequence_length"
    )

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"t2i.size must be a multiple of 16, got {v}")
        return v


class DetectConfig(Placement):
    """The open-vocabulary detector (the reward server's own detector code) and the box rules."""

    detector: DetectorOptions = Field(default_factory=DetectorOptions, description="kind, model, thresholds, NMS")
    min_box_area: float = Field(
        default=0.01, ge=0, lt=1, description="a subject's box must cover at least this fraction of the image"
    )
    crop_margin: float = Field(default=0.05, ge=0, le=1, description="crop padding, as a fraction of the box side")
    batch_size: int = Field(default=16, ge=1, description="items per stage batch")


class GeneratorConfig(Placement):
    """A FLUX.1 Kontext-style model run by the trainer's multi-reference pipeline with one reference."""

    model: str = Field(default="black-forest-labs/FLUX.1-Kontext-dev", description="pipeline folder or hub id")
    lora: str | None = Field(default=None, description="a PEFT adapter folder or a psr train checkpoint")
    lora_alpha: float | None = Field(default=None, gt=0, description="needed with a psr train checkpoint")
    steps: int = Field(default=28, ge=1, le=1000, description="sampling steps (ODE)")
    size: int = Field(default=512, ge=16, description="output side in pixels (multiple of 16)")
    reference_size: int | None = Field(default=None, ge=16, description="side the input image is resized to")
    guidance_scale: float = Field(default=2.5, ge=0, description="distilled guidance of FLUX.1 Kontext")
    batch_size: int = Field(default=4, ge=1, description="images per pipeline call (and items per stage batch)")

    @field_validator("size", "reference_size")
    @classmethod
    def _multiple_of_16(cls, v: int | None) -> int | None:
        if v is not None and v % 16:
            raise ValueError(f"image sides must be multiples of 16, got {v}")
        return v


class ReferencesConfig(GeneratorConfig):
    """Personalisation: each subject's crop redrawn in a new scene becomes its reference image."""

    prompt: str = Field(default=instructions.REFERENCE_PROMPT, description="{category}, {place}")
    places: list[str] = Field(default_factory=lambda: list(instructions.PLACES), min_length=1,
                              description="the {place} fill-ins of the prompt (one drawn per subject)")

    @model_validator(mode="after")
    def _placeholders(self) -> ReferencesConfig:
        _check_format(self.prompt, "references.prompt", category="x", place="x")
        return self


class EditConfig(GeneratorConfig):
    """Task diversity: the target edited by its instruction (attribute, action, background, complex)."""

    check_subjects: bool = Field(
        default=True, description="detect every subject again in the edited image (the detect stage's rules)"
    )


class CaptionConfig(LanguageModelConfig):
    """The re-captioner: a vision-language model describing the target without the subjects' appearance."""

    kind: Literal["none", "transformers", "openai"] = Field(
        default="transformers",
        description="transformers (Qwen2.5-VL in process, the judge's code), openai (an endpoint), or none "
        "(keep the writer's prompt, plus the edit: offline tests)",
    )
    model: str | None = Field(default="Qwen/Qwen2.5-VL-7B-Instruct", description="checkpoint or served model name")
    min_pixels: int | None = Field(default=None, description="Qwen-VL processor bounds on image size")
    max_pixels: int | None = Field(default=None, description="Qwen-VL processor bounds on image size")
    batch_size: int = Field(default=8, ge=1, description="items per stage batch (and per VLM forward pass)")
    instruction: str = Field(default=instructions.CAPTION, description="asks for 'Caption: ...' ({subjects}, {edit})")
    edit_context: str = Field(default=instructions.CAPTION_EDIT_CONTEXT, description="fills {edit} when edited")

    @model_validator(mode="after")
    def _consistent(self) -> CaptionConfig:
        self.check_backend("caption")
        _check_format(self.instruction, "caption.instruction", subjects="x", edit="x")
        _check_format(self.edit_context, "caption.edit_context", edit="x")
        return self


class FiltersConfig(StrictModel):
    """Quality filters that are rewards, computed by the reward service (``psr serve`` / ``psr worker``)."""

    server: str | None = Field(default=None, description="reward service: http(s)://host:port or redis://host:6379/0")
    api_key_env: str | None = Field(default=None, description="environment variable holding the service's API key")
    timeout_s: float = Field(default=600.0, gt=0, description="per scoring request")
    aesthetic_reward: str | None = Field(default="aesthetic", description="served reward scoring targets (null: off)")
    aesthetic_floor: float = Field(default=5.0, description="targets scoring below are dropped")
    identity_reward: str | None = Field(
        default="dino_i", description="served similarity of an image to a reference (image_similarity; null: off)"
    )
    identity_floor: float = Field(default=0.5, description="a reference less similar to its crop is dropped")
    copy_paste_ceiling: float = Field(default=0.9, description="a reference more similar to its crop is dropped")

    @model_validator(mode="after")
    def _consistent(self) -> FiltersConfig:
        if (self.aesthetic_reward or self.identity_reward) and not self.server:
            raise ValueError(
                "filters.server is not set: give the reward service URL (psr serve), or set "
                "filters.aesthetic_reward and filters.identity_reward to null to run without those filters"
            )
        if self.identity_floor >= self.copy_paste_ceiling:
            raise ValueError(
                f"filters.identity_floor ({self.identity_floor}) must be below filters.copy_paste_ceiling "
                f"({self.copy_paste_ceiling}): no reference could pass"
            )
        return self


class ContactSheetConfig(StrictModel):
    """The PNG a person looks at to judge the data."""

    items: int = Field(default=16, ge=0, description="kept items shown (evenly spread over the run)")
    thumb: int = Field(default=160, ge=32, le=1024, description="thumbnail side in pixels")


def default_task_weights() -> dict[str, float]:
    # Two subjects 90% of the time, three and four 5% each: the paper's SFT reference mix.
    return {"attribute": 0.18, "action": 0.18, "background": 0.18, "position": 0.18, "complex": 0.18,
            "three": 0.05, "four": 0.05}


class DatagenConfig(StrictModel):
    """Top level of a ``psr datagen`` config."""

    seed: int = Field(default=0, description="run seed: item ids, categories, tasks and every model seed follow from it")
    items: int = Field(default=1000, ge=1, description="items to attempt (before sharding)")
    categories: str | list[str] = Field(
        default="objects365", description="'objects365' (bundled list of 365), a text file (one per line), or a list"
    )
    tasks: dict[str, float] = Field(default_factory=default_task_weights, description="task -> sampling weight")
    writer: WriterConfig = Field(default_factory=WriterConfig, description=WriterConfig.__doc__)
    t2i: T2IConfig = Field(default_factory=T2IConfig, description=T2IConfig.__doc__)
    detect: DetectConfig = Field(default_factory=DetectConfig, description=DetectConfig.__doc__)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig, description=ReferencesConfig.__doc__)
    edit: EditConfig = Field(default_factory=EditConfig, description=EditConfig.__doc__)
    caption: CaptionConfig = Field(default_factory=CaptionConfig, description=CaptionConfig.__doc__)
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description=FiltersConfig.__doc__)
    contact_sheet: ContactSheetConfig = Field(default_factory=ContactSheetConfig, description=ContactSheetConfig.__doc__)
    cpu_threads: int | None = Field(
        default=None, ge=1, description="torch threads while models run on the CPU (1 is fastest for tiny models)"
    )

    @field_validator("categories")
    @classmethod
    def _some_categories(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not [c for c in v if c.strip()]:
            raise ValueError("the category list is empty: give category words, a file, or 'objects365'")
        if isinstance(v, str) and not v.strip():
            raise ValueError("categories is empty: use 'objects365', a file path or a list")
        return v

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {', '.join(TASKS)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("task weights must be >= 0 with a positive sum")
        return v


# What each stage's output depends on (besides the stage before it): a change means --rerun.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "prompts": ("seed", "tasks", "writer"),
    "targets": ("t2i", "filters.aesthetic_reward", "filters.aesthetic_floor"),
    "detect": ("detect",),
    "references": ("references", "filters.identity_reward", "filters.identity_floor", "filters.copy_paste_ceiling"),
    "edit": ("edit", "detect", "filters.aesthetic_reward", "filters.aesthetic_floor"),
    "caption": ("caption",),
}


# The reward filters each stage applies (``filters`` keys): their served versions are part of what
# a stage made, so a run resumes only against a service hosting the same versions.
STAGE_REWARDS: dict[str, tuple[str, ...]] = {
    "targets": ("aesthetic_reward",),
    "references": ("identity_reward",),
    "edit": ("aesthetic_reward",),
}


def _strip_exec(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_exec(v) for k, v in value.items() if k not in EXEC_FIELDS}
    return value


def stage_settings(cfg: DatagenConfig, stage: str) -> dict[str, Any]:
    """The settings a stage's output depends on, without the execution-only fields."""
    data = cfg.model_dump(mode="json")
    out = {}
    for dotted in STAGE_SETTINGS[stage]:
        node: Any = data
        for key in dotted.split("."):
            node = node[key]
        out[dotted] = _strip_exec(node)
    return out


def stage_hashes(cfg: DatagenConfig, categories: list[str], stages: list[str]) -> dict[str, str]:
    """A hash per stage over its settings and every earlier stage's (so a change upstream shows downstream)."""
    hashes, previous = {}, config_hash(categories)
    for stage in stages:
        previous = config_hash([previous, stage_settings(cfg, stage)])
        hashes[stage] = previous
    return hashes


def resolve_model_paths(cfg: DatagenConfig) -> DatagenConfig:
    """A copy whose local model paths (and a category file) are absolute, by the project's one rule
    (``shared.paths``): relative to the config file's folder, or to the current folder for a
    ``--set`` value. Hub ids stay as written; a local path that does not exist stays for
    ``models.check_model_paths`` to report."""
    from shared.paths import resolve_path

    out = cfg.model_copy(deep=True)

    def resolve(key: str, value: str | None, always_local: bool = False) -> str | None:
        return resolve_path(value, cfg.path_base(key), always_local) if value else value

    if cfg.writer.kind == "transformers":
        out.writer.model = resolve("writer.model", cfg.writer.model)
    if cfg.caption.kind == "transformers":
        out.caption.model = resolve("caption.model", cfg.caption.model)
    out.t2i.model = resolve("t2i.model", cfg.t2i.model)
    out.detect.detector.model = resolve("detect.detector.model", cfg.detect.detector.model)
    for name in ("references", "edit"):
        section: GeneratorConfig = getattr(cfg, name)
        getattr(out, name).model = resolve(f"{name}.model", section.model)
        getattr(out, name).lora = resolve(f"{name}.lora", section.lora)
    if isinstance(cfg.categories, str) and cfg.categories != "objects365":
        out.categories = resolve("categories", cfg.categories, always_local=True)
    out._source, out._cli_keys = cfg._source, cfg._cli_keys
    return out

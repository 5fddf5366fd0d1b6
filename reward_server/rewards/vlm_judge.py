"""``vlm_judge``: semantic alignment rated 0-10 by a vision-language judge, reported on 0-1.

The judge sees the subjects' reference images (optional), the generated image and a prompt
template chosen by task kind -- ``attribute``, ``action``, ``background``, ``complex`` or
``generic`` -- from ``reward_server/prompts/<kind>.txt``; ``prompts_dir`` points at a folder whose
``<kind>.txt`` files replace the built-in ones. Templates may use ``{instruction}`` and
``{subjects}``. With ``task: auto`` the kind comes from ``metadata["task"]`` (e.g. PSRBench's
subset name) and falls back to ``generic``.

Backends: ``transformers`` (Qwen2.5-VL / Qwen2-VL in process, ``spec.model`` is the checkpoint;
expected score from digit probabilities) or ``openai`` (``endpoint`` = an OpenAI-compatible base
URL such as ``http://host:8000/v1``, ``spec.model`` = the served model name; strict
``Score: N`` parsing). A judgement that cannot be read is a failed score, never a default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from reward_server.models.device import resolve_device, resolve_dtype
from reward_server.models.judge import JudgeQuery
from reward_server.rewards import register
from reward_server.rewards.base import PROMPT, Reward, ScoreResult
from shared.config import MODEL_REF, ConfigError, StrictModel
from shared.protocol import Sample

TASKS = ("attribute", "action", "background", "complex", "generic")
BUILTIN_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


class JudgeOptions(StrictModel):
    """Options of the VLM judge reward."""

    backend: Literal["transformers", "openai"] = Field(default="transformers", description="in-process model or HTTP endpoint")
    task: Literal["auto", "attribute", "action", "background", "complex", "generic"] = Field(
        default="auto", description="prompt template; 'auto' reads metadata['task'] and falls back to generic"
    )
    prompts_dir: str | None = Field(
        default=None, description="folder of <task>.txt files replacing the built-in templates", json_schema_extra=MODEL_REF
    )
    include_references: bool = Field(default=True, description="show the subjects' reference images to the judge")
    # transformers backend
    min_pixels: int | None = Field(default=None, ge=1, description="transformers: processor min_pixels per image")
    max_pixels: int | None = Field(default=None, ge=1, description="transformers: processor max_pixels per image (bounds tokens)")
    min_digit_mass: float = Field(
        default=0.5, ge=0, le=1, description="transformers: least probability the score digits must hold, else failure"
    )
    judge_batch_size: int = Field(default=8, ge=1, description="transformers: prompts per forward pass")
    # openai backend
    endpoint: str | None = Field(default=None, description="openai: base URL of the API, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(default=None, description="openai: environment variable holding the API key")
    concurrency: int = Field(default=8, ge=1, le=1024, description="openai: most requests in flight")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: per-request timeout")
    max_retries: int = Field(default=2, ge=0, le=10, description="openai: retries on 408/429/5xx/connection errors")
    retry_backoff_s: float = Field(default=0.5, ge=0, description="openai: first retry delay, doubled each retry")
    max_tokens: int = Field(default=32, ge=1, description="openai: answer length limit")
    image_format: Literal["jpeg", "png"] = Field(default="jpeg", description="openai: how images are sent")

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> JudgeOptions:
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs options.endpoint, e.g. http://localhost:8000/v1")
        return self


def load_templates(prompts_dir: str | None) -> dict[str, str]:
    """Built-in templates, with ``prompts_dir``'s ``<task>.txt`` files taking precedence; checked now."""
    templates = {task: (BUILTIN_PROMPTS / f"{task}.txt").read_text() for task in TASKS}
    if prompts_dir is not None:
        folder = Path(prompts_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"prompts_dir {folder} is not a folder")
        for task in TASKS:
            if (folder / f"{task}.txt").is_file():
                templates[task] = (folder / f"{task}.txt").read_text()
    for task, text in templates.items():
        try:
            text.format(instruction="x", subjects="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt template {task!r} has a bad placeholder ({exc!r}); use {{instruction}} and {{subjects}}") from exc
    return templates


@register
class VlmJudgeReward(Reward):
    """Instruction following judged by Qwen2.5-VL (in process) or an OpenAI-compatible endpoint."""

    type_name = "vlm_judge"
    description = "semantic alignment: a VLM rates 0-10 how well the image follows the instruction (reported 0-1)"
    inputs = frozenset({PROMPT})
    Options = JudgeOptions

    def model_refs(self) -> dict[str, str]:
        refs = super().model_refs()
        if self.options.backend == "openai":
            refs.pop("model", None)  # the served model's name, not a checkpoint
        return refs

    def check(self) -> None:
        super().check()
        env = self.options.api_key_env
        if self.options.backend == "openai" and env and not os.environ.get(env):
            raise ConfigError(f"{self.origin('options.api_key_env')}: the environment variable {env} (the endpoint's "
                              f"API key) is not set; export {env}=... where this reward runs")

    def load(self) -> None:
        opts = self.options
        self.templates = load_templates(opts.prompts_dir)
        if not self.spec.model:
            raise ValueError("vlm_judge needs `model`: a checkpoint (transformers) or the served model name (openai)")
        if opts.backend == "openai":
            from reward_server.models.judge_endpoint import EndpointJudge

            self.judge = EndpointJudge(
                opts.endpoint, self.spec.model, opts.api_key_env, opts.concurrency, opts.timeout_s,
                opts.max_retries, opts.max_tokens, opts.image_format, opts.retry_backoff_s,
            )
        else:
            from reward_server.models.judge import TransformersJudge

            device = resolve_device(self.spec.device)
            self.judge = TransformersJudge(
                self.spec.model, device, resolve_dtype(self.spec.dtype, device), opts.min_pixels, opts.max_pixels,
                opts.min_digit_mass, opts.judge_batch_size,
            )

    def task_of(self, sample: Sample) -> str:
        if self.options.task != "auto":
            return self.options.task
        asked = str(sample.metadata.get("task", "")).lower()
        return asked if asked in TASKS else "generic"

    def query(self, sample: Sample) -> JudgeQuery:
        """References (labelled), then the generated image, then the task's instructions."""
        content: list[dict[str, Any]] = []
        images = []
        if self.options.include_references:
            for k, subject in enumerate(sample.subjects):
                if subject.reference is not None:
                    content.append({"type": "text", "text": f"Reference image {k + 1} ({subject.category}):"})
                    content.append({"type": "image"})
                    images.append(subject.reference)
        content.append({"type": "text", "text": "Generated image:"})
        content.append({"type": "image"})
        images.append(sample.image)
        subjects = ", ".join(s.category for s in sample.subjects) or "the requested subjects"
        text = self.templates[self.task_of(sample)].format(instruction=sample.prompt.strip(), subjects=subjects)
        content.append({"type": "text", "text": text})
        return JudgeQuery(content=content, images=images)

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if not samples:
            return []
        judgements = self.judge.judge([self.query(s) for s in samples])
        results = []
        for sample, judgement in zip(samples, judgements, strict=True):
            details = {"task": self.task_of(sample), **judgement.details}
            if judgement.score is None:
                results.append(ScoreResult.failed(judgement.error or "the judge gave no score", details))
            else:
                details["raw_score"] = round(judgement.score, 4)
                results.append(ScoreResult(judgement.score / 10.0, details=details))
        return results

"""The language models of the pipeline -- the writer (scene prompts, edit instructions) and the
re-captioner -- and the strict reading of their answers.

Every answer must hold one labelled line (``Prompt: ...``, ``Edit: ...``, ``Caption: ...``);
anything else is ``unparseable``. A scene prompt or caption must name every subject by its
category word (plurals count), else ``missing_subject``. An endpoint that cannot be reached
stops the run with a one-line error (finished items stay recorded; ``--resume`` continues).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reward_server.models.chat_endpoint import ChatAnswer, ChatEndpoint
from reward_server.models.vlm import ChatQuery
from shared.config import ConfigError, config_hash
from trainer.datagen.config import CaptionConfig, LanguageModelConfig, WriterConfig

LABELS = {"scene": "Prompt", "edit": "Edit", "caption": "Caption"}
MAX_ANSWER_CHARS = 600


class EndpointUnavailable(ConfigError):
    """A model endpoint stopped answering: the run stops; what finished is kept."""


def chat_endpoint(cfg: LanguageModelConfig, section: str, sampling: dict | None = None) -> ChatEndpoint:
    """The OpenAI-compatible endpoint of a ``writer`` / ``caption`` section (``kind: openai``)."""
    try:
        return ChatEndpoint(cfg.endpoint, cfg.model, cfg.api_key_env, cfg.concurrency, cfg.timeout_s,
                            cfg.max_retries, cfg.max_new_tokens, sampling=sampling)
    except RuntimeError as exc:  # the API key's environment variable is not set
        raise ConfigError(f"{section}.api_key_env: {exc}") from exc


def require_reachable(endpoint: ChatEndpoint, section: str) -> None:
    """Stop with one line when the endpoint is down, at another URL, or does not serve the model."""
    problem = endpoint.check_reachable()
    if problem:
        raise EndpointUnavailable(f"{section}.endpoint: {problem}")


@dataclass
class WriteJob:
    """One request to the writer: a scene prompt for ``subjects``, or an edit of ``prompt`` for ``task``."""

    kind: str  # "scene" | "edit"
    subjects: list[str]
    seed: int
    task: str = ""
    prompt: str = ""


def subjects_phrase(subjects: Sequence[str]) -> str:
    """``["dog", "apple", "cup"]`` -> ``"a dog, an apple and a cup"``."""
    words = [("an " if s[:1] in "aeiou" else "a ") + s for s in subjects]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def parse_labelled(text: str | None, label: str) -> tuple[str | None, str | None]:
    """The text after ``label:`` on the answer's first such line, or ``(None, why not)``."""
    pattern = re.compile(rf"^[\s*#>-]*{label}\s*\**\s*:\s*\**\s*(.*?)\s*$", re.I | re.M)
    match = pattern.search(text or "")
    if not match:
        return None, f"no '{label}:' line in the answer {(text or '')[:200]!r}"
    value = match.group(1).strip().strip("\"'*").strip()
    if not re.search(r"[A-Za-z]{2}", value):
        return None, f"the '{label}:' line is empty: {match.group(0)[:200]!r}"
    if len(value) > MAX_ANSWER_CHARS:
        return None, f"the '{label}:' line has {len(value)} characters (at most {MAX_ANSWER_CHARS})"
    if any(ord(c) < 32 for c in value):
        return None, f"the '{label}:' line holds control characters: {value[:200]!r}"
    return value, None


def missing_subjects(text: str, subjects: Sequence[str]) -> list[str]:
    """The subjects whose category word (or its plural) does not occur in ``text``."""
    missing = []
    for subject in subjects:
        words = r"[\s-]+".join(re.escape(w) for w in subject.split())
        if not re.search(rf"\b{words}(?:e?s)?\b", text, re.I):
            missing.append(subject)
    return missing


def read_answer(answer: ChatAnswer, kind: str, subjects: Sequence[str], name_all: bool) -> tuple[str | None, str, str]:
    """``(text, "", "")`` for a usable answer, else ``(None, reason, message)``; raises when the endpoint is gone."""
    label = LABELS[kind]
    if answer.text is None:
        if answer.unavailable:
            raise EndpointUnavailable(f"the {kind} model's endpoint failed: {answer.error}")
        return None, "unparseable", f"{label.lower()}: {answer.error}"
    value, problem = parse_labelled(answer.text, label)
    if value is None:
        return None, "unparseable", f"{label.lower()}: {problem}"
    if name_all:
        missing = missing_subjects(value, subjects)
        if missing:
            return None, "missing_subject", f"{label.lower()} {value!r} does not name {', '.join(missing)}"
    return value, "", ""


class TemplateWriter:
    """Deterministic fill-ins of ``writer.scene_templates`` / ``edit_templates``: no model, names every subject."""

    def __init__(self, cfg: WriterConfig):
        self.cfg = cfg
        self.version = "template:" + config_hash([cfg.scene_templates, cfg.edit_templates, cfg.places, cfg.colours])

    def answers(self, jobs: Sequence[WriteJob]) -> list[ChatAnswer]:
        out = []
        for job in jobs:
            rng = random.Random(job.seed)
            if job.kind == "scene":
                text = rng.choice(self.cfg.scene_templates).format(
                    subjects=subjects_phrase(job.subjects), place=rng.choice(self.cfg.places))
            else:
                subject = rng.choice(job.subjects)
                other = rng.choice([s for s in job.subjects if s != subject] or [subject])
                text = rng.choice(self.cfg.edit_templates[job.task]).format(
                    subject=subject, other=other, colour=rng.choice(self.cfg.colours), place=rng.choice(self.cfg.places))
            out.append(ChatAnswer(f"{LABELS[job.kind]}: {text}"))
        return out


def writer_instruction(cfg: WriterConfig, job: WriteJob) -> str:
    """What the writer is asked for ``job``."""
    subjects = ", ".join(job.subjects)
    if job.kind == "scene":
        return cfg.scene_instruction.format(subjects=subjects)
    return cfg.edit_instructions[job.task].format(prompt=job.prompt, subjects=subjects)


class CausalLMWriter:
    """An in-process transformers causal LM (chat template when it has one), one seeded sample per job."""

    def __init__(self, cfg: WriterConfig, device, dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.device = cfg, device
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype).to(device).eval()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    def _prompt(self, text: str) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + "\n"

    def answers(self, jobs: Sequence[WriteJob]) -> list[ChatAnswer]:
        import torch

        out = []
        sample = self.cfg.temperature > 0
        for job in jobs:  # one job at a time: its seed alone decides its answer, whatever the batch
            ids = self.tokenizer(self._prompt(writer_instruction(self.cfg, job)), return_tensors="pt").to(self.device)
            torch.manual_seed(job.seed)
            with torch.inference_mode():
                generated = self.model.generate(
                    **ids, max_new_tokens=self.cfg.max_new_tokens, do_sample=sample,
                    temperature=self.cfg.temperature if sample else None, top_p=self.cfg.top_p if sample else None,
                    pad_token_id=self.pad_id,
                )
            new = generated[0, ids["input_ids"].shape[1]:]
            out.append(ChatAnswer(self.tokenizer.decode(new, skip_special_tokens=True)))
        return out


class EndpointWriter:
    """The writer behind an OpenAI-compatible endpoint; the job's seed goes with each request."""

    def __init__(self, cfg: WriterConfig):
        self.cfg = cfg
        self.endpoint = chat_endpoint(cfg, "writer", sampling={"temperature": cfg.temperature, "top_p": cfg.top_p})

    def answers(self, jobs: Sequence[WriteJob]) -> list[ChatAnswer]:
        queries = [ChatQuery([{"type": "text", "text": writer_instruction(self.cfg, j)}], []) for j in jobs]
        return self.endpoint.complete(queries, [j.seed for j in jobs])


@dataclass
class CaptionJob:
    """Re-caption ``image`` (which shows ``subjects``); ``prompt`` and ``edit`` made it."""

    image: np.ndarray
    subjects: list[str]
    prompt: str
    edit: str | None
    seed: int


class Captioner:
    """``none`` (the writer's prompt, plus the edit), ``transformers`` (the judge's VLM code) or ``openai``."""

    def __init__(self, cfg: CaptionConfig, device=None, dtype=None):
        self.cfg = cfg
        self.vlm = self.endpoint = None
        if cfg.kind == "transformers":
            from reward_server.models.vlm import VisionLanguageModel

            self.vlm = VisionLanguageModel(cfg.model, device, dtype, cfg.min_pixels, cfg.max_pixels, cfg.batch_size,
                                           cfg.revision)
        elif cfg.kind == "openai":
            self.endpoint = chat_endpoint(cfg, "caption")

    def query(self, job: CaptionJob) -> ChatQuery:
        edit = self.cfg.edit_context.format(edit=job.edit) if job.edit else ""
        text = self.cfg.instruction.format(subjects=", ".join(job.subjects), edit=edit)
        return ChatQuery([{"type": "image"}, {"type": "text", "text": text}], [job.image])

    def answers(self, jobs: Sequence[CaptionJob]) -> list[ChatAnswer]:
        if self.vlm is not None:
            texts = self.vlm.generate_text([self.query(j) for j in jobs], self.cfg.max_new_tokens)
            return [ChatAnswer(t) for t in texts]
        if self.endpoint is not None:
            return self.endpoint.complete([self.query(j) for j in jobs], [j.seed for j in jobs])
        return [ChatAnswer(f"Caption: {j.prompt}" + (f"; {j.edit}" if j.edit else "")) for j in jobs]

"""Loading the pipeline's models, each through the project's own code path.

* text-to-image: any diffusers pipeline (``DiffusionPipeline.from_pretrained``), one seed per image;
* detector: ``reward_server.models.detectors.build_detector`` (the subject reward's detector);
* personalisation and editing: the trainer's multi-reference pipeline with one reference
  (``trainer.evaluation.model.load_generate_fn``, the same sampler ``psr bench generate`` uses);
* writer and re-captioner: ``trainer.datagen.text``.

A load failure becomes a one-line ``ConfigError`` naming the config key and the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from shared.config import ConfigError
from shared.paths import looks_local
from trainer.datagen.config import DatagenConfig, DetectConfig, GeneratorConfig, Placement, T2IConfig

T2IFn = Callable[[Sequence[str], Sequence[int]], list[np.ndarray]]


def device_of(placement: Placement):
    """The torch device: 'auto' is this process's GPU (``cuda:LOCAL_RANK`` under torchrun/accelerate) or the CPU."""
    import torch

    from reward_server.models.device import resolve_device

    if placement.device == "auto" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return resolve_device(placement.device)


def dtype_of(placement: Placement, device):
    from reward_server.models.device import resolve_dtype

    return resolve_dtype(placement.dtype, device)


@contextlib.contextmanager
def loading(key: str, model: str | None) -> Iterator[None]:
    """Turn a failed ``from_pretrained`` into a one-line config error naming ``key``.

    Any exception counts: a checkpoint of the wrong kind fails in many ways (a processor without a
    tokenizer raises AttributeError, a missing weight KeyError...), all of them the user's to fix."""
    try:
        yield
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: cannot load {model}: {first}") from exc


# A checkpoint's top-level file, one of which any model of the pipeline has.
_TOP_FILES = ("model_index.json", "config.json", "adapter_config.json", "preprocessor_config.json")


def cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of ``repo_id`` in the local Hugging Face cache, or ``None`` when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    for name in _TOP_FILES:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/<name>
    return None


def model_version(model: str | None, revision: str | None = None) -> str:
    """``id@commit`` for a cached hub model (``id@revision`` before it is downloaded); a local folder
    gets a hash of its config files."""
    if not model:
        return "none"
    path = Path(model)
    if path.exists():
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*.json")) if p.is_file())
        digest = hashlib.sha256()
        for file in files[:64]:
            digest.update(file.name.encode())
            digest.update(file.read_bytes() if file.stat().st_size < 1_000_000 else str(file.stat().st_size).encode())
        return f"{path.name}@local:{digest.hexdigest()[:10]}"
    if not looks_local(model):
        commit = cached_commit(model, revision)
        if commit:
            return f"{model}@{commit}"
    return f"{model}@{revision or 'main'}"


def _stage_models(cfg: DatagenConfig, stages: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """``(config key, model, revision)`` of every model the selected stages load."""
    from reward_server.models.detectors import DEFAULT_MODELS

    wanted: list[tuple[str, str | None, str | None]] = []
    if "prompts" in stages and cfg.writer.kind == "transformers":
        wanted.append(("writer.model", cfg.writer.model, cfg.writer.revision))
    if "targets" in stages:
        wanted.append(("t2i.model", cfg.t2i.model, cfg.t2i.revision))
    detector = cfg.detect.detector
    if ("detect" in stages or ("edit" in stages and cfg.edit.check_subjects)) and detector.kind != "fixed":
        wanted.append(("detect.detector.model", detector.model or DEFAULT_MODELS[detector.kind], None))
    for stage in ("references", "edit"):
        if stage in stages:
            section: GeneratorConfig = getattr(cfg, stage)
            wanted += [(f"{stage}.model", section.model, None), (f"{stage}.lora", section.lora, None)]
    if "caption" in stages and cfg.caption.kind == "transformers":
        wanted.append(("caption.model", cfg.caption.model, cfg.caption.revision))
    return [w for w in wanted if w[1] is not None]


def check_model_paths(cfg: DatagenConfig, stages: Sequence[str], source: Path | None = None) -> list[str]:
    """Local model paths (``shared.paths``' rule) the selected stages need that do not exist."""
    from shared.paths import MissingPathError, check_model_ref

    problems = []
    for key, value, _ in _stage_models(cfg, stages):
        try:
            check_model_ref(value, key, source)
        except MissingPathError as exc:
            problems.append(str(exc))
    return problems


def check_hub_models(cfg: DatagenConfig, stages: Sequence[str], timeout_s: float = 10.0) -> list[str]:
    """Hub ids the selected stages need that are neither in the local cache nor on the hub.

    ``models/generatr`` (a typo of a local folder) looks like a hub id: without this check it would
    fail only when its stage starts, after the hub's retries, hours into a run."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    problems = []
    for key, value, revision in _stage_models(cfg, stages):
        if Path(value).exists() or looks_local(value) or cached_commit(value, revision):
            continue
        where = f"{key}: {value} is not a local folder and not in the Hugging Face cache"
        if constants.HF_HUB_OFFLINE:
            problems.append(f"{where} (HF_HUB_OFFLINE is set): check the path, or download it first")
            continue
        try:
            model_info(value, revision=revision, timeout=timeout_s)
        except GatedRepoError:
            continue  # it exists; loading it needs a token, which from_pretrained reports
        except (RepositoryNotFoundError, RevisionNotFoundError):
            problems.append(f"{where}, nor a model on the hub you can access: check the path (a typo?) "
                            "or set HF_TOKEN for a private model")
        except Exception as exc:  # no network: from_pretrained could not download it either
            problems.append(f"{where}, and the hub cannot be reached ({type(exc).__name__}): check the path")
    return problems


def load_t2i(cfg: T2IConfig) -> T2IFn:
    """A diffusers text-to-image pipeline as ``(prompts, seeds) -> (H, W, 3) uint8 images``."""
    import torch
    from diffusers import DiffusionPipeline

    device = device_of(cfg)
    with loading("t2i.model", cfg.model):
        pipe = DiffusionPipeline.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype_of(cfg, device))
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        # CPU generators: an image depends only on its seed, not on the device or its batch-mates.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = pipe(prompt=list(prompts), num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                       height=cfg.size, width=cfg.size, generator=generators, output_type="np", **cfg.call_kwargs)
        return [(np.clip(img, 0, 1) * 255).round().astype(np.uint8) for img in out.images]

    return generate


def load_generator(cfg: GeneratorConfig, key: str):
    """The trainer's multi-reference pipeline as ``(prompts, references, seeds) -> images`` (ODE sampling)."""
    from trainer.evaluation.model import load_generate_fn

    device = device_of(cfg)
    with loading(f"{key}.model", cfg.model):
        return load_generate_fn(cfg.model, cfg.lora, str(device), cfg.dtype, cfg.steps, cfg.size,
                                cfg.reference_size, cfg.guidance_scale, cfg.lora_alpha)


def load_detector(cfg: DetectConfig):
    """The reward server's open-vocabulary detector."""
    from reward_server.models.detectors import build_detector

    device = device_of(cfg)
    with loading("detect.detector.model", cfg.detector.model):
        return build_detector(cfg.detector, device, dtype_of(cfg, device))


def model_versions(cfg: DatagenConfig) -> dict[str, str]:
    """What made the data, per role (recorded in run.json and in every item's provenance)."""
    from reward_server.models.detectors import DEFAULT_MODELS
    from trainer.datagen.text import TemplateWriter

    writer = (TemplateWriter(cfg.writer).version if cfg.writer.kind == "template"
              else f"{cfg.writer.kind}:{model_version(cfg.writer.model, cfg.writer.revision)}")
    detector = cfg.detect.detector
    return {
        "writer": writer,
        "t2i": model_version(cfg.t2i.model, cfg.t2i.revision),
        "detector": f"{detector.kind}:{model_version(detector.model or DEFAULT_MODELS.get(detector.kind))}",
        "references": model_version(cfg.references.model) + (f"+lora:{model_version(cfg.references.lora)}"
                                                              if cfg.references.lora else ""),
        "edit": model_version(cfg.edit.model) + (f"+lora:{model_version(cfg.edit.lora)}" if cfg.edit.lora else ""),
        "caption": "none" if cfg.caption.kind == "none"
        else f"{cfg.caption.kind}:{model_version(cfg.caption.model, cfg.caption.revision)}",
    }

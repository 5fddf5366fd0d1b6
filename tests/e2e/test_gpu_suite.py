"""bench/gpu_suite.py: its CPU dry run (every section on tiny models) and its clean skip without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_suite


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the suite would run for real")
def test_without_a_gpu_it_skips_cleanly(capsys):
    assert gpu_suite.main([]) == 0
    assert "skipped" in json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_dry_run_runs_every_section(tiny_config, tmp_path, capsys):
    out = tmp_path / "suite.json"
    code = gpu_suite.main(["--dry-run", "--tiny", str(tiny_config.parent), "--out", str(out)])
    report = json.loads(out.read_text())
    failed = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert code == 0 and not failed, failed
    assert set(gpu_suite.SECTIONS) <= set(report)
    # the real-size configs are the published sizes: FLUX.1 12B, Qwen2.5-VL-7B 8.3B, Qwen2-VL-7B 7.7B (no LM head)
    sizes = {k: float(v.rstrip("B")) for k, v in report["real_size_params"].items()}
    assert sizes["flux_transformer"] == pytest.approx(11.9, abs=0.1)
    assert sizes["qwen2_5_vl_7b"] == pytest.approx(8.29, abs=0.05)
    assert sizes["qwen2_vl_7b"] == pytest.approx(7.75, abs=0.1)
    for name in ("dino_i", "subject"):
        serving = report["serving"][name]
        assert serving["served_images_per_s"] > 0 and serving["bare_images_per_s"] > 0
        assert report["bf16"][name]["max_abs_diff"] < 0.1
    assert report["judge"]["judgements_per_s"] > 0 and report["judge"]["hpsv3"]["scores_per_s"] > 0
    # HPSv3 at about its real length: ~550 template tokens + 256 image tokens (in bytes it was ~3,100)
    assert 700 < report["judge"]["hpsv3"]["tokens_per_sample"] < 1000
    assert report["flux"]["step_s"] > 0 and report["flux"]["sequence"] > 0
    assert set(report["subject"]["batch_2"]) >= {"detect", "crop", "embed", "assign"}
    assert all(0 <= report["overlap"][m]["reward_wait_fraction"] <= 1 for m in ("blocking", "overlapped"))


def test_the_carried_wheels_are_what_the_gpu_machine_lacks():
    """bench/gpu_wheels.py follows the project's requirements (as installed here) past the machine's own packages."""
    from bench.gpu_wheels import needed

    wanted = needed()
    imported_by_the_suite = {"diffusers", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "redis",
                             "open-clip-torch", "timm", "ftfy", "transformers", "tokenizers", "huggingface-hub"}
    assert imported_by_the_suite | {"annotated-types", "typing-inspection", "click", "h11"} <= set(wanted)
    assert not {"torch", "torchvision", "numpy", "scipy", "pillow", "pytest", "ruff", "fakeredis"} & set(wanted)
    assert all(wanted[name] for name in imported_by_the_suite)  # the versions CI tests

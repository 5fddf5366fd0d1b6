"""A clean run prints what the user asked for: our messages, not the libraries' chatter."""

from __future__ import annotations

import ast
import io
import logging
from pathlib import Path

import pytest

from shared.logs import HANDLER_NAME, configure_logging

REPO = Path(__file__).resolve().parents[2]
OURS = [p for pkg in ("shared", "reward_server", "trainer", "bench") for p in sorted((REPO / pkg).rglob("*.py"))]


@pytest.fixture
def stream():
    """configure_logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers), {n: logging.getLogger(n).level for n in ("shared", "trainer", "reward_server")}
    buffer = io.StringIO()
    yield buffer
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_our_messages_pass_library_info_does_not(stream):
    configure_logging("INFO", stream)
    logging.getLogger("trainer.train").info("step 1 done")
    logging.getLogger("httpx").info('HTTP Request: POST http://x/v1/score "HTTP/1.1 200 OK"')
    logging.info("Parsing model identifier. Schema: None")  # open_clip logs on the root logger
    logging.getLogger("a_library.sub").warning("a real problem")
    logging.warning("No pretrained weights loaded for model 'x'")  # open_clip, misleading for us
    text = stream.getvalue()
    assert "step 1 done" in text and "a real problem" in text
    assert "HTTP Request" not in text and "Parsing model" not in text and "No pretrained" not in text


def test_debug_shows_the_libraries_too(stream):
    configure_logging("DEBUG", stream)
    logging.getLogger("httpx").info("HTTP Request: POST")
    assert "HTTP Request" in stream.getvalue()


def test_a_library_that_prints_itself_is_not_printed_twice(stream):
    configure_logging("INFO", stream)
    library = logging.getLogger("huggingface_hub.utils._http")
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    logging.getLogger("huggingface_hub").addHandler(handler)  # as huggingface_hub does at import
    try:
        library.warning("Retrying in 1s [Retry 1/5].")
    finally:
        logging.getLogger("huggingface_hub").removeHandler(handler)
    assert own.getvalue().count("Retrying") + stream.getvalue().count("Retrying") == 1


def test_configuring_twice_keeps_one_handler_and_leaves_others(stream):
    root = logging.getLogger()
    before = [h for h in root.handlers if h.get_name() != HANDLER_NAME]
    configure_logging("INFO", stream)
    configure_logging("WARNING", stream)
    assert [h.get_name() for h in root.handlers].count(HANDLER_NAME) == 1
    assert all(h in root.handlers for h in before)  # e.g. pytest's capture handler


def test_model_library_switches_are_set_for_later_imports(stream, monkeypatch):
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(key, raising=False)
    configure_logging("INFO", stream)
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"


def test_no_deprecated_torch_dtype_keyword() -> None:
    """transformers 5 warns "`torch_dtype` is deprecated! Use `dtype` instead!" (diffusers takes both).
    Flags ``f(torch_dtype=x)`` and ``{"torch_dtype": x}`` built for a call; a config.json written as
    a literal (``"torch_dtype": "float32"``, as checkpoints ship it) is data, not a call."""
    found = []
    for path in OURS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "torch_dtype":
                found.append(f"{path.relative_to(REPO)}:{node.value.lineno}")
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "torch_dtype" and not isinstance(value, ast.Constant):
                        found.append(f"{path.relative_to(REPO)}:{key.lineno}")
    assert not found, f"torch_dtype passed at {found}; use dtype="


def test_packaging_metadata_builds_without_deprecation_warnings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # a TOML table is deprecated (setuptools >= 77)
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in project["build-system"]["requires"])



def test_an_embedded_server_keeps_its_loading_lines_to_itself(stream):
    # psr demo printed a timestamped 'loading reward ...' line per reward (14) under its own
    # '[2/4] reward server ... hosting: ...' line; --log-level DEBUG still shows them
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.serving import BackgroundServer
    from shared.client import RewardClient

    config = ServerConfig.model_validate({"rewards": {"brightness": {"type": "brightness"}}})
    for level, shown in (("INFO", False), ("DEBUG", True)):
        configure_logging(level, stream)
        before = logging.getLogger("reward_server").level
        with BackgroundServer(create_app(config)) as url, RewardClient(url) as client:
            client.wait_until_ready()
        assert ("loading reward brightness" in stream.getvalue()) is shown, level
        assert logging.getLogger("reward_server").level == before  # restored afterwards

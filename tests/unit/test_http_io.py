"""Reading score requests from HTTP bodies, without a server."""

from __future__ import annotations

import asyncio
import json
import threading

import msgpack
from fastapi import HTTPException
from starlette.requests import Request

from reward_server import http_io
from shared.protocol import JSON, MAX_NESTING, MSGPACK, ScoreRequest

BODY = json.dumps({"rewards": {"a": 1.0}, "samples": [{"image": {"shape": [1, 1, 3], "data": "AAAA"}}]}).encode()


def _request(body: bytes) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/score",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    return Request(scope, receive)


def _parse_thread(body: bytes, monkeypatch) -> tuple[ScoreRequest, bool]:
    """Parse ``body`` through read_score_request; returns it and whether it was validated on the loop."""
    threads = []
    original = http_io.parse_model

    def recording(*args):
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(http_io, "parse_model", recording)

    async def main():
        return await http_io.read_score_request(_request(body), 1 << 24), threading.current_thread()

    parsed, loop_thread = asyncio.run(main())
    return parsed, threads == [loop_thread]


def test_large_bodies_are_validated_off_the_event_loop(monkeypatch):
    # validating a large JSON body is CPU work that stalled every other request (and /healthz)
    prompt = "x" * (http_io.INLINE_PARSE_BYTES + 1)
    body = json.dumps({"rewards": {"a": 1.0}, "samples": [
        {"image": {"shape": [1, 1, 3], "data": "AAAA"}, "prompt": prompt[:9000]}] * 8}).encode()
    assert len(body) > http_io.INLINE_PARSE_BYTES
    parsed, on_loop = _parse_thread(body, monkeypatch)
    assert len(parsed.samples) == 8 and not on_loop


def test_small_bodies_are_validated_inline(monkeypatch):
    # a thread hop costs more than validating a small body (and waits for the GIL under load)
    parsed, on_loop = _parse_thread(BODY, monkeypatch)
    assert isinstance(parsed, ScoreRequest) and parsed.samples[0].image.shape == (1, 1, 3) and on_loop


# ---------------------------------------------------------------- one set of rules for both wire forms


def _answer(body: bytes, content_type: str) -> tuple[int, str]:
    """(status, detail) that parsing ``body`` gives: 200 when it is a valid ScoreRequest."""
    try:
        http_io.parse_model(body, content_type, ScoreRequest)
    except HTTPException as exc:
        return exc.status_code, str(exc.detail)
    return 200, ""


def _request_with(metadata: object = None, rewards: object = None) -> dict:
    sample = {"image": {"format": "raw", "shape": [1, 1, 3], "data": "AAAA"}}
    if metadata is not None:
        sample["metadata"] = {"m": metadata}
    return {"rewards": rewards if rewards is not None else {"a": 1.0}, "samples": [sample]}


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _both_forms(request: dict) -> list[tuple[int, str]]:
    as_msgpack = dict(request, samples=[dict(s, image=dict(s["image"], data=b"\0\0\0")) for s in request["samples"]])
    return [_answer(json.dumps(request).encode(), JSON), _answer(msgpack.packb(as_msgpack), MSGPACK)]


def test_every_msgpack_error_says_what_is_wrong():
    # "body is not valid msgpack: " used to end there for some errors (msgpack's exceptions have no text)
    for body in (b"\xc1", b"\x92\x01", b"", b"\xff\x00", b"\x81\xa1a"):
        status, detail = _answer(body, MSGPACK)
        assert status == 400 and detail.startswith("body is not valid msgpack:"), (body, detail)
        assert len(detail.split(":", 1)[1].strip()) > 5, (body, detail)


def test_json_and_msgpack_share_one_nesting_limit():
    # JSON used to stop at ~200 levels as "not valid JSON" while msgpack took 1,020
    assert _both_forms(_request_with(_nested(MAX_NESTING - 5))) == [(200, "")] * 2
    for depth in (MAX_NESTING, 250):
        (json_status, json_detail), (mp_status, mp_detail) = _both_forms(_request_with(_nested(depth)))
        assert json_status == mp_status == 422
        for detail in (json_detail, mp_detail):
            assert f"at most {MAX_NESTING} levels" in detail
    status, detail = _answer(b"\x91" * 2000 + b"\x01", MSGPACK)  # beyond msgpack's own stack
    assert status == 422 and f"at most {MAX_NESTING} levels" in detail


def test_duplicate_keys_are_refused_in_both_forms():
    # {"rewards": {"clip_t": 1, "clip_t": 5}} used to mean weight 5, silently
    body = b'{"rewards": {"a": 1.0, "a": 5.0}, "samples": [{"image": {"shape": [1, 1, 3], "data": "AAAA"}}]}'
    status, detail = _answer(body, JSON)
    assert status == 422 and "duplicate key" in detail and '"a"' in detail
    packer = msgpack.Packer()
    sample = packer.pack({"image": {"shape": [1, 1, 3], "data": b"\0\0\0"}})
    body = (b"\x82" + packer.pack("rewards") + b"\x82" + packer.pack("a") + packer.pack(1.0) + packer.pack("a")
            + packer.pack(5.0) + packer.pack("samples") + b"\x91" + sample)
    status, detail = _answer(body, MSGPACK)
    assert status == 422 and "duplicate key 'a'" in detail


def test_weights_must_be_numbers():
    # "1" and true used to be read as 1.0
    for weight in ("1", True, "abc"):
        for status, detail in _both_forms(_request_with(rewards={"a": weight})):
            assert status == 422 and "rewards.a" in detail, (weight, detail)
    assert _both_forms(_request_with(rewards={"a": 2})) == [(200, "")] * 2  # an integer is a number


def test_metadata_integers_beyond_64_bits_are_refused_in_both_forms():
    for value in (2**64, -(2**63) - 1):
        status, detail = _answer(json.dumps(_request_with(value)).encode(), JSON)
        assert status == 422 and "64-bit" in detail and "metadata.m" in detail
    assert _both_forms(_request_with([2**64 - 1, -(2**63)])) == [(200, "")] * 2


def _depth(value: object) -> int:
    """Levels of objects/arrays inside one another, the outermost counted (as the README counts them)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_the_nesting_limit_is_the_readmes_to_the_level():
    # README: a body nests at most 32 levels, the body itself counted, so metadata may nest 29
    assert MAX_NESTING == 32
    for levels in range(26, 32):
        request = _request_with(_nested(levels))
        metadata_levels = _depth(request["samples"][0]["metadata"])
        expected = 200 if _depth(request) <= 32 else 422
        assert (metadata_levels <= 29) == (expected == 200)
        assert [status for status, _ in _both_forms(request)] == [expected] * 2, (levels, _depth(request))

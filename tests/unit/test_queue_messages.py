"""Queue names, settings and msgpack messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.images import encode_image
from shared.protocol import SampleIn, SubjectIn, pack, unpack
from shared.queue import messages as q


def test_every_key_is_under_the_prefix_and_names_its_object():
    keys = [q.jobs_stream("clip"), q.blob_key("r1"), q.result_key("j1"), q.reply_stream("f1"),
            q.workers_key("clip"), q.dead_stream("clip"), q.task_key("t1"), q.REWARDS_KEY]
    assert all(k.startswith(q.PREFIX + ":") for k in keys)
    assert len(set(keys)) == len(keys)
    assert q.jobs_stream("clip") != q.jobs_stream("dino")


def test_job_and_result_round_trip_through_msgpack():
    job = q.Job("j", "r", "clip", 4, 8, "front", deadline=123.0)
    assert q.Job.decode(job.encode()) == job and job.size == 4
    result = q.JobResult("j", "r", "clip", [0.5, None], [None, "why"], [{"a": 1}, None], version="v")
    assert q.JobResult.decode(result.encode()) == result
    failed = q.JobResult.failure(job, "boom", worker="w", attempts=3)
    assert failed.scores == [None] * 4 and failed.errors == ["boom"] * 4 and failed.attempts == 3


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", "not valid msgpack"),
    (pack([1, 2]), "version"),
    (pack({"v": 2, "id": "x"}), "version 2"),
    (pack({"v": 1, "id": "x"}), "malformed job"),
])
def test_bad_job_messages_raise_message_error(payload, message):
    with pytest.raises(q.MessageError, match=message):
        q.Job.decode(payload)


def test_result_with_mismatched_lengths_is_refused():
    bad = pack({"v": 1, "id": "j", "request": "r", "reward": "x", "scores": [1.0], "errors": [], "details": [None]})
    with pytest.raises(q.MessageError, match="mismatched"):
        q.JobResult.decode(bad)


def test_wire_samples_keep_images_as_sent_and_never_pickle():
    raw = encode_image([[[1, 2, 3]]])
    png = encode_image([[[1, 2, 3]]], "png")
    sample = SampleIn(image=raw, prompt="p", subjects=[SubjectIn(category="dog", reference=png)], metadata={"k": 1})
    data = unpack(q.encode_wire_sample(sample))
    assert data["image"]["data"] == bytes([1, 2, 3]) and data["subjects"][0]["reference"] == png
    assert SampleIn.model_validate(data) == sample
    assert b"pickle" not in q.encode_wire_sample(sample)


def test_settings_refuse_a_visibility_timeout_shorter_than_three_heartbeats():
    with pytest.raises(ValidationError, match="3 x heartbeat"):
        q.QueueSettings(visibility_timeout_s=1.0, heartbeat_interval_s=0.5)
    with pytest.raises(ValidationError, match="worker_ttl_s"):
        q.QueueSettings(worker_ttl_s=1.0, heartbeat_interval_s=0.9, visibility_timeout_s=10)
    with pytest.raises(ValidationError, match="extra"):
        q.QueueSettings(visibility=3)

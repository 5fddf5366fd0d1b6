"""The Redis queue, server side: the GPU workers and the front's backend.

* ``backend`` -- ``RedisBackend``: the front's ``ScoringService`` backend that enqueues jobs.
* ``consumer`` -- one reward's stream on a worker: read, batch, score, write, acknowledge, claim.
* ``worker`` -- the worker process: one consumer per hosted reward plus heartbeats.
* ``cli`` -- ``psr worker``.
* ``metrics`` -- Prometheus metrics of fronts and workers.

Key names and messages shared with callers are in ``shared.queue.messages``.
"""

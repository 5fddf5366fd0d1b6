"""The Redis queue, client side: what callers and fronts need to put work on the queue.

* ``messages`` -- every Redis key name, the queue settings and the msgpack messages (jobs,
  results, worker descriptions). Both sides import it: it is the queue's wire contract.
* ``producer`` -- store a request once, enqueue one job per reward and chunk, wait for results.
* ``transport`` -- ``RewardClient("redis://...")``: scoring straight through Redis, no HTTP front.

The worker side (consumers, the worker process, ``psr worker``, the front's Redis backend and
the queue metrics) lives in ``reward_server.queue``.
"""

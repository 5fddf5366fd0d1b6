"""Flow-GRPO trainer for multi-reference flow-matching image generators.

Modules, one job each: ``pipeline`` (the FLUX.1 Kontext-style generator with several references),
``sampling`` (SDE sampler with log-probs), ``grpo`` (advantages, loss), ``rollout`` (prompts,
groups, sending to the reward service), ``scoring`` (a step's pending rewards), ``policy`` (LoRA,
optimizer, accelerate), ``update`` (the policy update), ``checkpoint``, ``monitor`` (TensorBoard,
timing), ``train`` (the loop), ``config``, ``cli`` (``psr train``), ``tiny`` (tiny test pipeline).
"""

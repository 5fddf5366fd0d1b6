"""Flow-GRPO trainer for multi-reference flow-matching image generators."""

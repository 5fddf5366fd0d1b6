"""PSRBench evaluation: load the benchmark, generate with a model, score through the reward
service, and report per-subset tables and radar plots (``psr bench ...``)."""

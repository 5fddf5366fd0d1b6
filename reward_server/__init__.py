"""The PSR reward server: reward models behind a FastAPI front, an in-process batcher or Redis workers."""

# GPU reward worker: hosts reward models and consumes their Redis streams.
#   docker build -f docker/worker.Dockerfile -t psr-worker .
#   docker run --gpus 1 -v $PWD/configs:/config:ro psr-worker \
#     worker --config /config/rewards_psr.yaml --redis redis://redis:6379/0
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models/hf
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY reward_server ./reward_server
COPY trainer ./trainer
RUN pip install ".[server]" && useradd --create-home psr
USER psr
# Prometheus metrics of the worker (jobs, batch sizes, retries, dead letters, latency).
EXPOSE 9100
# SIGTERM: the worker finishes the batch in hand, writes its results, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["psr"]
CMD ["worker", "--config", "/config/rewards_psr.yaml", "--redis", "redis://redis:6379/0", "--metrics-port", "9100"]

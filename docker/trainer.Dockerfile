# Flow-GRPO trainer: talks to the rewards through the front (HTTP) or Redis (queue transport).
#   docker build -f docker/trainer.Dockerfile -t psr-trainer .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models/hf
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY reward_server ./reward_server
COPY trainer ./trainer
RUN pip install ".[trainer]" && useradd --create-home psr
USER psr
ENTRYPOINT ["psr"]
CMD ["train", "--help"]

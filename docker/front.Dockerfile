# Reward-service front: FastAPI, validates and enqueues; models run on the workers (no GPU).
#   docker build -f docker/front.Dockerfile -t psr-front .
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY reward_server ./reward_server
COPY trainer ./trainer
RUN pip install ".[server]" && useradd --create-home psr
USER psr
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["psr"]
CMD ["serve", "--config", "/config/rewards_psr.yaml", "--host", "0.0.0.0", "--port", "8000", "--redis", "redis://redis:6379/0"]

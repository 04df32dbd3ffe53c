# herd serve in a container: the pool file (and the router directory it names) come in a volume.
#   docker build -t herd .
#   docker run -p 8000:8000 -v "$PWD/config:/config:ro" -e HERD_API_KEYS=sk-... herd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HERD_HOST=0.0.0.0 \
    HERD_PORT=8000

WORKDIR /opt/herd
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --create-home --uid 10001 herd

USER herd
EXPOSE 8000
# /health answers 503 when every backend's circuit is open.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HERD_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["herd", "serve"]
CMD ["/config/pool.yaml", "--log-format", "json"]

# Flow's runtime image: `flow serve` as a non-root user; no tests, no dev tools.
# The install steps are the ones scripts/setup runs (a virtualenv, pip, the tokenizer's
# offline encodings), without the `dev` extras. Build: docker build -t flow .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    FLOW_SPOOL_DIR=/var/lib/flow/spool

RUN useradd --create-home --uid 10001 flow \
 && mkdir -p /app /var/lib/flow/spool \
 && chown -R flow:flow /app /var/lib/flow
WORKDIR /app
COPY --chown=flow:flow pyproject.toml README.md LICENSE ./
COPY --chown=flow:flow flow ./flow
USER flow
RUN python -m venv .venv \
 && .venv/bin/python -m pip install -q --upgrade pip \
 && .venv/bin/python -m pip install -q . \
 && .venv/bin/python -m flow.metering.tokenizer >/dev/null
ENV PATH=/app/.venv/bin:$PATH

# 8000: the API; 9100: metrics, when FLOW_METRICS_PORT=9100.
EXPOSE 8000 9100
# SIGTERM drains (calls end first): give the container FLOW_DRAIN_SECONDS + 120 s to stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health/live', timeout=2)"
CMD ["sh", "-c", "exec flow serve --host \"$HOST\" --port \"$PORT\""]

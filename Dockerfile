# One image for the bot (and, on request, the standalone sandbox registry).
#
# Safe as shipped: it listens on 0.0.0.0, so it refuses to start until it has a real registry and SMS gateway
# (REGISTRY_URL, SMS_PROVIDER=tencent + TENCENT_*), because the sandbox ones would publish verification codes
# and synthetic holders. A local demo opts in explicitly and publishes on loopback only:
#   docker run -e SANDBOX=1 -p 127.0.0.1:8080:8080 IMAGE
# Several workers behind a reverse proxy: compose.yaml and docs/nginx.conf (TRUSTED_PROXIES = the proxy).

# --- build: the locked dependencies into a virtual environment; compilers stay in this stage ---
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# The same pins as uv.lock (requirements.txt is exported from it by `make lock`).
RUN /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.txt \
    || /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- run: the environment, the source and nothing else; an unprivileged user ---
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH PYTHONPATH=/app \
    HOST=0.0.0.0 PORT=8080 DATA_DIR=/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY bot bot
COPY domain domain
COPY dialogs dialogs
COPY integrations integrations
COPY locales locales
RUN useradd --system --home /data haoqing && mkdir -p /data && chown haoqing /data
USER haoqing
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz')"
CMD ["python", "-m", "bot", "run"]

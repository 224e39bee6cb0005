# One image for the bot; the embedded defaults (SQLite, sandbox registry, sandbox SMS) need no other service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8080 DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY dialogs dialogs
COPY integrations integrations
COPY locales locales
# Editable, so the code and locales/ are used from /app.
RUN pip install --no-cache-dir -e . && useradd --system --home /data haoqing && mkdir -p /data && chown haoqing /data
USER haoqing
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz')"
CMD ["python", "-m", "bot", "run"]

#!/usr/bin/env bash
# Finds or installs what the test suite needs beyond Python: Debian's Chromium for the browser tests, nginx and
# docker-compose for the deployment tests (the proxy config is run, compose.yaml is resolved), and PostgreSQL and
# Redis on loopback.
set -uo pipefail
browser=()
tools=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium fonts-noto-cjk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || tools+=(nginx-light)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || tools+=(docker-compose)
if [ $((${#browser[@]} + ${#tools[@]})) -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's ${browser[*]} ${tools[*]} for the tests"
    apt-get update -qq
    if [ ${#browser[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser[@]}" >/dev/null
    fi
    if [ ${#tools[@]} -gt 0 ]; then
      # Without recommends: docker-compose would bring a Docker engine, which the tests do not use.
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null
    fi
    # The nginx package starts a server on port 80 where it can; the tests run their own.
    if [ -f /run/nginx.pid ]; then nginx -s stop 2>/dev/null || true; fi
  else
    echo "missing for the tests: ${browser[*]} ${tools[*]} (Debian packages)" >&2
  fi
fi
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
if command -v redis-cli >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
exit 0

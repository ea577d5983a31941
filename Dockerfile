# matchdb service image. Build: docker build -t matchdb .   Run: see docker-compose.yml.
# Without docker-compose's Postgres it keeps its SQLite file in the /data volume (where earlier images kept it).
FROM python:3.11-slim

# The hashing kernels' compiled code (numba) lives in a writable cache outside the read-only site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 NUMBA_CACHE_DIR=/var/cache/matchdb/numba \
    MATCHDB_DATABASE_URL=sqlite:////data/matchdb.sqlite3
WORKDIR /app
COPY pyproject.toml README.md ./
COPY matchdb ./matchdb
COPY migrations ./migrations
RUN pip install . && useradd --system --home /data matchdb && mkdir -p /data "$NUMBA_CACHE_DIR" \
    && chown matchdb /data "$NUMBA_CACHE_DIR"
USER matchdb
# Compile them now, so a container's first hash only loads them (a different CPU model recompiles once, in place).
RUN python -c "from matchdb.hashing import warm_up; warm_up()"
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["matchdb", "serve", "--host", "0.0.0.0", "--port", "8000"]

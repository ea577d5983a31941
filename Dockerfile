# matchdb service image. Build: docker build -t matchdb .   Run: see docker-compose.yml.
# Without docker-compose's Postgres it keeps its SQLite file in the /data volume (where earlier images kept it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MATCHDB_DATABASE_URL=sqlite:////data/matchdb.sqlite3
WORKDIR /app
COPY pyproject.toml README.md ./
COPY matchdb ./matchdb
COPY migrations ./migrations
RUN pip install . && useradd --system --home /data matchdb && mkdir -p /data && chown matchdb /data
USER matchdb
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["matchdb", "serve", "--host", "0.0.0.0", "--port", "8000"]

# cache-refresher: a small image for docker-compose.yml (first version, not hardened).
FROM python:3.11-slim

# pyodbc (the Azure SQL driver) loads unixODBC's libodbc.so.2.
RUN apt-get update \
    && apt-get install -y --no-install-recommends unixodbc \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY refresher ./refresher
COPY api ./api
COPY devstack ./devstack
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 app
USER app
WORKDIR /home/app

EXPOSE 8000
CMD ["cache-refresher", "dev"]

# cache-refresher: a small image for docker-compose.yml (first version, not hardened).
# Debian 12 (bookworm), pinned: the ODBC driver package docker/drivers/ takes is built for it.
FROM python:3.11-slim-bookworm

# pyodbc (the Azure SQL driver) loads unixODBC's libodbc.so.2.
RUN apt-get update \
    && apt-get install -y --no-install-recommends unixodbc \
    && rm -rf /var/lib/apt/lists/*

# Microsoft's ODBC Driver 18 for SQL Server, for Azure SQL: installed only from a
# package put in docker/drivers/ and with its licence accepted (see that folder's README).
ARG ACCEPT_EULA=""
COPY docker/odbc-driver.sh /usr/local/bin/
COPY docker/drivers/ /tmp/drivers/
RUN ACCEPT_EULA="$ACCEPT_EULA" odbc-driver.sh /tmp/drivers && rm -rf /tmp/drivers

WORKDIR /app
COPY pyproject.toml README.md ./
COPY refresher ./refresher
COPY api ./api
COPY devstack ./devstack
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 app
USER app
WORKDIR /home/app

# glibc gives each thread that allocates a malloc arena of its own; a long-running
# service with many threads then holds freed memory in them (bench/soak.py: RSS grew
# ~600 KiB per 100 refreshes with the default, ~190 KiB and 15 MiB lower with 2 arenas).
ENV MALLOC_ARENA_MAX=2

EXPOSE 8000
CMD ["cache-refresher", "dev"]

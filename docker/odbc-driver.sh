#!/bin/sh
# Installs Microsoft's ODBC Driver 18 for SQL Server (msodbcsql18), which pyodbc needs
# for Azure SQL, from a Debian package the builder put in docker/drivers/. The build
# does not download it: the package comes from Microsoft's own repository, under
# Microsoft's licence, which whoever builds the image accepts with
# `--build-arg ACCEPT_EULA=Y`. Without a package the image is built without the
# driver (PostgreSQL and SQLite need none), and says so.
#
# Usage: odbc-driver.sh DIRECTORY   (ACCEPT_EULA from the environment; ODBCINST_INI, where
# unixODBC lists its drivers, defaults to /etc/odbcinst.ini)
set -eu

dir="${1:?usage: odbc-driver.sh DIRECTORY}"
driver="ODBC Driver 18 for SQL Server"

set -- "$dir"/msodbcsql18_*.deb
if [ ! -e "$1" ]; then
    echo "odbc-driver: no msodbcsql18_*.deb in docker/drivers/: building without the $driver" \
        "(only Azure SQL needs it; see the README, section Docker)"
    exit 0
fi
if [ "$#" -gt 1 ]; then
    echo "odbc-driver: $# msodbcsql18 packages in docker/drivers/: keep only the one to install" >&2
    exit 1
fi
package="$1"
if [ "${ACCEPT_EULA:-}" != "Y" ]; then
    echo "odbc-driver: docker/drivers/$(basename "$package") is installed only once its licence" \
        "is accepted: read it, then build with --build-arg ACCEPT_EULA=Y" >&2
    exit 1
fi

apt-get update
ACCEPT_EULA=Y apt-get install -y --no-install-recommends "$package"
rm -rf /var/lib/apt/lists/*
if ! grep -qF "[$driver]" "${ODBCINST_INI:-/etc/odbcinst.ini}" 2>/dev/null; then
    echo "odbc-driver: $(basename "$package") installed, but unixODBC does not list the" \
        "$driver: is it the Debian 12 (amd64 or arm64) package of msodbcsql18?" >&2
    exit 1
fi
echo "odbc-driver: installed the $driver from $(basename "$package")"

"""The image's optional ODBC driver step (``docker/odbc-driver.sh``), run by ``sh`` as the
Dockerfile runs it, with a stand-in ``apt-get`` on ``PATH`` that records its calls and, for
``install``, registers the driver as the real package's scripts do."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "odbc-driver.sh"
DRIVER = "ODBC Driver 18 for SQL Server"


@dataclass(frozen=True)
class Build:
    code: int
    out: str
    err: str
    apt_calls: list[str]


def run_step(
    tmp_path: Path, packages: list[str], *, accept_eula: str | None, registers: bool = True
) -> Build:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    for name in packages:
        (drivers / name).write_bytes(b"not really a package")
    bin_dir, log, ini = tmp_path / "bin", tmp_path / "apt.log", tmp_path / "odbcinst.ini"
    bin_dir.mkdir()
    ini.write_text("")
    register = f'printf "[{DRIVER}]\\nDriver=/opt/driver.so\\n" >> "{ini}"' if registers else ":"
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(
        "#!/bin/sh\n"
        f'echo "ACCEPT_EULA=${{ACCEPT_EULA:-}} $*" >> "{log}"\n'
        f'if [ "$1" = install ]; then {register}; fi\n'
    )
    apt_get.chmod(apt_get.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ODBCINST_INI": str(ini)}
    if accept_eula is not None:
        env["ACCEPT_EULA"] = accept_eula
    done = subprocess.run(
        ["sh", str(SCRIPT), str(drivers)], env=env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return Build(done.returncode, done.stdout, done.stderr, calls)


def test_without_a_package_the_image_builds_without_the_driver_and_says_so(
    tmp_path: Path,
) -> None:
    step = run_step(tmp_path, [], accept_eula=None)
    assert step.code == 0
    assert "building without the ODBC Driver 18" in step.out
    assert "README" in step.out
    assert step.apt_calls == []


def test_a_package_is_not_installed_until_its_licence_is_accepted(tmp_path: Path) -> None:
    step = run_step(tmp_path, ["msodbcsql18_18.5.1.1-1_amd64.deb"], accept_eula="yes")
    assert step.code == 1
    assert "msodbcsql18_18.5.1.1-1_amd64.deb" in step.err
    assert "--build-arg ACCEPT_EULA=Y" in step.err
    assert step.apt_calls == []


def test_an_accepted_package_is_installed_and_checked_registered(tmp_path: Path) -> None:
    package = "msodbcsql18_18.5.1.1-1_amd64.deb"
    step = run_step(tmp_path, [package], accept_eula="Y")
    assert step.code == 0, step.err
    install = [call for call in step.apt_calls if " install " in f" {call} "]
    assert len(install) == 1
    assert install[0].startswith("ACCEPT_EULA=Y ")
    assert install[0].endswith(str(tmp_path / "drivers" / package))
    assert f"installed the {DRIVER}" in step.out


def test_a_package_that_registers_no_driver_fails_the_build(tmp_path: Path) -> None:
    step = run_step(
        tmp_path, ["msodbcsql18_18.5.1.1-1_amd64.deb"], accept_eula="Y", registers=False
    )
    assert step.code == 1
    assert f"does not list the {DRIVER}" in step.err


def test_two_packages_are_refused_rather_than_one_picked(tmp_path: Path) -> None:
    packages = ["msodbcsql18_18.4.1.1-1_amd64.deb", "msodbcsql18_18.5.1.1-1_amd64.deb"]
    step = run_step(tmp_path, packages, accept_eula="Y")
    assert step.code == 1
    assert "2 msodbcsql18 packages" in step.err
    assert step.apt_calls == []


def test_the_dockerfile_runs_the_step_on_the_drivers_folder() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY docker/drivers/ /tmp/drivers/" in dockerfile
    assert 'ACCEPT_EULA="$ACCEPT_EULA" odbc-driver.sh /tmp/drivers' in dockerfile
    assert (ROOT / "docker" / "drivers" / "README.md").is_file()  # the folder exists in a clone

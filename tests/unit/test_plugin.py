"""The twistd plugin: discoverable, lazy, listed by `twistd --help`, shipped in the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

from daggy.service import tap

REPO = Path(__file__).resolve().parents[2]


def twistd(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run twistd with the repo root on sys.path (as in development), outside the repo."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def daggyd_plugin():
    [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "daggyd"]
    return plugin


def test_plugin_is_discovered_and_provides_iservicemaker():
    """Twisted's plugin scan finds exactly one daggyd service maker, a valid IServiceMaker."""
    plugin = daggyd_plugin()
    assert verifyObject(IServiceMaker, plugin)
    assert verifyObject(IPlugin, plugin)
    assert plugin.options is tap.Options
    assert plugin.makeService is tap.makeService


def test_plugin_directories_are_not_packages():
    """twisted/ and twisted/plugins/ have no __init__.py (it would hide the plugin or shadow
    Twisted) and twisted/plugins holds only the daggyd plugin."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()
    sources = sorted(p.name for p in (REPO / "twisted" / "plugins").glob("*.py"))
    assert sources == ["daggyd_plugin.py"]


def test_importing_the_plugin_imports_nothing_heavy(tmp_path):
    """Loading the plugin module installs no reactor and imports no daggy or web code."""
    probe = (
        "import sys, twisted.plugins.daggyd_plugin as p; "
        "heavy = [m for m in ('twisted.internet.reactor', 'daggy', 'klein', 'twisted.web') "
        "if m in sys.modules]; print(p.daggyd.tapname, heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "daggyd []"), result.stderr


def test_twistd_help_lists_daggyd(tmp_path):
    """`twistd --help` lists the daggyd subcommand with its description."""
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.strip().startswith("daggyd ")]
    assert "DAG" in line


def test_twistd_daggyd_help_documents_every_option(tmp_path):
    """`twistd daggyd --help` documents --config and points at docs/config.md."""
    result = twistd("daggyd", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: twistd [options] daggyd [--config FILE]" in result.stdout
    assert "-c, --config=" in result.stdout
    assert "docs/config.md" in result.stdout


def test_twistd_daggyd_rejects_a_bad_config_in_one_line(tmp_path):
    """`twistd daggyd --config bad` fails with the one-line config error, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 0\n")
    result = twistd("-n", "daggyd", "--config", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert f"{bad}: port: must be an integer from 1 to 65535 (got 0)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_wheel_ships_the_plugin_without_shadowing_twisted(tmp_path):
    """A non-editable build ships twisted/plugins/daggyd_plugin.py, no twisted/__init__.py,
    the daggyd console script and the web UI's files."""
    # pip --no-build-isolation uses this environment's setuptools (from the test extras),
    # so the build needs no network; bdist_wheel is built into setuptools >= 70.1.
    assert tuple(int(part) for part in version("setuptools").split(".")[:2]) >= (70, 1), (
        "the wheel test needs setuptools>=70.1 (pip install -e '.[test]')"
    )
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
            "dropin.cache", ".pytest_cache",
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("daggy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {name for name in names if name.startswith("twisted/")} == {
        "twisted/plugins/daggyd_plugin.py"
    }
    assert "daggy/service/tap.py" in names
    # The web UI's files are package data: `pip install` is enough to serve the UI.
    assert {"daggy/ui/index.html", "daggy/ui/app.js", "daggy/ui/app.css",
            "daggy/ui/vendor/cytoscape.min.js"} <= names
    assert not any("node_modules" in name for name in names)
    assert not any("__pycache__" in name for name in names)
    assert "daggyd = daggy.service.cli:main" in scripts

"""`fhir-bridge init DIR`: the starter it writes, its refusal to overwrite, where defaults live."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fhir_bridge.cli import app
from fhir_bridge.cli_init import defaults_root, init_app, starter_files, write_starter
from fhir_bridge.config import load_settings
from fhir_bridge.errors import FhirBridgeError
from tests.utils import ROOT

runner = CliRunner()


def _init(folder: Path, *extra: str):
    """Run `init FOLDER [extra]` through the command's own typer app."""
    return runner.invoke(init_app, [str(folder), *extra])


def test_init_writes_a_starter_that_mappings_check_and_test_accept(tmp_path):
    """init writes config/mappings/profiles; `mappings check` and `mappings test` pass on it."""
    target = tmp_path / "site"
    result = _init(target)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "mappings check" in result.output
    config = target / "config" / "bridge.yaml"
    assert (target / "mappings" / "queues.yaml").is_file()
    assert (target / "mappings" / "conceptmaps" / "appointment-type-plain.json").is_file()
    assert sorted(p.name for p in (target / "mappings" / "tests").iterdir()) == sorted(
        p.name for p in (ROOT / "mappings" / "tests").iterdir()
    )
    assert (target / "profiles" / "StructureDefinition-bridge-patient.json").is_file()

    check = runner.invoke(app, ["-c", str(config), "mappings", "check"])
    assert check.exit_code == 0, check.output
    rules = sum(
        len(yaml.safe_load(p.read_text())["rules"])
        for p in ROOT.glob("mappings/*.yaml")
        if p.name != "queues.yaml"
    )
    assert f"ok: {rules} rules" in check.output

    golden = runner.invoke(app, ["-c", str(config), "mappings", "test"])
    assert golden.exit_code == 0, golden.output
    assert " 0 failed" in golden.output and not golden.output.startswith("0 passed")


def test_starter_config_paths_resolve_inside_the_folder(tmp_path):
    """The written settings point at the starter's own mappings, profiles and var/ folders."""
    assert _init(tmp_path).exit_code == 0
    settings = load_settings(tmp_path / "config" / "bridge.yaml")
    assert settings.mappings_dir == (tmp_path / "mappings").resolve()
    assert settings.profiles_dir == (tmp_path / "profiles").resolve()
    assert settings.storage.path.parent == (tmp_path / "var").resolve()


def test_init_refuses_to_overwrite_without_force(tmp_path):
    """A second init exits 1, names an existing file and leaves an edited file untouched."""
    assert _init(tmp_path).exit_code == 0
    edited = tmp_path / "mappings" / "queues.yaml"
    edited.write_text("# mine\n")
    result = _init(tmp_path)
    assert result.exit_code == 1
    assert "--force" in result.output and "config/bridge.yaml" in result.output
    assert edited.read_text() == "# mine\n"


def test_init_refuses_before_writing_anything(tmp_path):
    """With one starter file in the way, no other starter file is created."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bridge.yaml").write_text("sources: []\n")
    assert _init(tmp_path).exit_code == 1
    assert not (tmp_path / "mappings").exists() and not (tmp_path / "profiles").exists()


def test_force_overwrites_starter_files_and_keeps_others(tmp_path):
    """--force restores an edited starter file and keeps a file the starter does not have."""
    assert _init(tmp_path).exit_code == 0
    edited = tmp_path / "mappings" / "queues.yaml"
    edited.write_text("# mine\n")
    own = tmp_path / "mappings" / "local.yaml"
    own.write_text("rules: []\n")
    result = _init(tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert edited.read_bytes() == (ROOT / "mappings" / "queues.yaml").read_bytes()
    assert own.read_text() == "rules: []\n"


def test_init_into_a_file_path_fails_with_exit_2(tmp_path):
    """A target that is a file is reported in one line with exit status 2, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _init(blocker)
    assert result.exit_code == 2
    assert "cannot write into" in result.output


def test_defaults_root_in_an_editable_install_is_the_checkout():
    """From the source tree (editable install) the defaults are the repo's own folders."""
    assert defaults_root() == ROOT
    assert defaults_root(ROOT / "src" / "fhir_bridge") == ROOT


def test_defaults_root_prefers_package_data(tmp_path):
    """A package folder holding defaults/ (a wheel install) is used even next to a checkout."""
    package = tmp_path / "src" / "fhir_bridge"
    data = package / "defaults"
    for rel in starter_files(ROOT):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, data / rel)
    for folder in ("config", "mappings", "profiles"):  # a checkout around it, too
        shutil.copytree(ROOT / folder, tmp_path / folder)
    assert defaults_root(package) == data


def test_defaults_root_without_defaults_names_where_it_looked(tmp_path):
    """Neither package data nor a checkout: a FhirBridgeError naming both places."""
    package = tmp_path / "site-packages" / "fhir_bridge"
    package.mkdir(parents=True)
    with pytest.raises(FhirBridgeError, match="defaults") as info:
        defaults_root(package)
    assert str(package / "defaults") in str(info.value)


def test_an_incomplete_defaults_folder_is_not_used(tmp_path):
    """A defaults/ folder missing mappings/tests does not count as package data."""
    package = tmp_path / "pkg" / "fhir_bridge"
    (package / "defaults" / "config").mkdir(parents=True)
    (package / "defaults" / "config" / "bridge.yaml").write_text("{}\n")
    (package / "defaults" / "profiles").mkdir()
    with pytest.raises(FhirBridgeError):
        defaults_root(package)


def test_write_starter_copies_every_file_byte_for_byte(tmp_path):
    """write_starter returns the files it wrote and each equals the default it copies."""
    files = write_starter(tmp_path)
    assert Path("config/bridge.yaml") in files and Path("mappings/queues.yaml") in files
    assert not any(p.parts[0] == "config" and p.name == "demo.yaml" for p in files)
    assert not any("__pycache__" in p.parts for p in files)
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built once with pip (no dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("fhir_bridge-*.whl")
    return built


def test_wheel_carries_the_defaults_as_package_data(wheel):
    """Every starter file is in the wheel under fhir_bridge/defaults/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"fhir_bridge/defaults/{rel.as_posix()}" for rel in starter_files(ROOT)}
    assert expected <= names, sorted(expected - names)


def test_init_from_the_installed_wheel_uses_package_data(wheel, tmp_path):
    """The wheel's code, away from any checkout, inits a folder `mappings check` accepts."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = os.environ | {"PYTHONPATH": str(site)}
    target = tmp_path / "starter"
    probe = (
        "import fhir_bridge, sys; from fhir_bridge.cli_init import defaults_root, init_app;"
        "print(fhir_bridge.__file__); print(defaults_root()); sys.argv = ['init', sys.argv[1]];"
        "init_app()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    module, root = proc.stdout.splitlines()[:2]
    assert Path(module).is_relative_to(site)
    assert Path(root) == site / "fhir_bridge" / "defaults"
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_bridge.cli",
            "-c",
            str(target / "config" / "bridge.yaml"),
            "mappings",
            "check",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok: ")

"""Tests for fhir_bridge.config: loading, environment overrides and readable errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_bridge.config import load_settings
from fhir_bridge.errors import ConfigError

SECRET = "s3cr3t-bearer-value-9f1c"

VALID = f"""\
sources:
  - name: main-ehr
    base_url: http://127.0.0.1:8090/fhir
    auth: {{type: bearer, token: {SECRET}}}
    resource_types: [Patient, Appointment]
    page_size: 50
storage:
  path: ../var/bridge.db
api:
  host: 0.0.0.0
  port: 8081
mappings_dir: maps
"""

SOURCE = "sources:\n  - name: a\n    base_url: http://127.0.0.1:8090/fhir\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Keep the developer's FHIR_BRIDGE_* variables out of these tests."""
    for name in list(os.environ):
        if name.startswith("FHIR_BRIDGE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    """Write a settings file into a sub-folder of tmp_path and return its path."""
    path = tmp_path / "conf" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    """The message of the ConfigError that loading `path` raises."""
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def error_naming_file(tmp_path: Path, text: str) -> str:
    """The ConfigError message for `text` as a settings file; fails unless it names the file."""
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    return message


def test_valid_file_loads_typed_values(tmp_path):
    """A valid file gives typed settings with the values written in it."""
    settings = load_settings(write(tmp_path, VALID))
    source = settings.source("main-ehr")
    assert source.url == "http://127.0.0.1:8090/fhir"
    assert source.resource_types == ("Patient", "Appointment")
    assert source.page_size == 50
    assert source.auth.resolve_token() == SECRET
    assert settings.api.host == "0.0.0.0"
    assert settings.api.port == 8081


def test_relative_paths_resolve_against_the_files_folder(tmp_path, monkeypatch):
    """storage.path and mappings_dir are relative to the settings file, not the cwd."""
    path = write(tmp_path, VALID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path)
    assert settings.storage.path == (tmp_path / "var" / "bridge.db").resolve()
    assert settings.mappings_dir == (tmp_path / "conf" / "maps").resolve()
    assert settings.config_file == path.resolve()


def test_env_variable_overrides_the_file(tmp_path, monkeypatch):
    """FHIR_BRIDGE_API__PORT wins over api.port in the file; other keys stay from the file."""
    monkeypatch.setenv("FHIR_BRIDGE_API__PORT", "9000")
    settings = load_settings(write(tmp_path, VALID))
    assert settings.api.port == 9000
    assert settings.api.host == "0.0.0.0"


def test_config_env_variable_selects_the_file(tmp_path, monkeypatch):
    """Without a path argument, $FHIR_BRIDGE_CONFIG names the settings file."""
    path = write(tmp_path, VALID)
    monkeypatch.setenv("FHIR_BRIDGE_CONFIG", str(path))
    assert load_settings().config_file == path.resolve()


def test_unknown_key_names_file_and_key_path(tmp_path):
    """A misspelled key is reported with the file and its full key path."""
    message = error_naming_file(tmp_path, SOURCE + "    pagesize: 10\n")
    assert "sources.0.pagesize: unknown key" in message


def test_wrong_type_names_key_and_expectation(tmp_path):
    """A value of the wrong type names the key path and the expected type."""
    message = error_naming_file(tmp_path, "api:\n  port: eighty\n")
    assert "api.port:" in message
    assert "valid integer" in message


def test_page_size_out_of_range(tmp_path):
    """page_size above 1000 names the key path, the bound and the given value."""
    message = error_naming_file(tmp_path, SOURCE + "    page_size: 5000\n")
    assert "sources.0.page_size:" in message
    assert "less than or equal to 1000" in message
    assert "5000" in message


@pytest.mark.parametrize("bad_type", ["Patientt", "HumanName"])
def test_unknown_resource_type(tmp_path, bad_type):
    """A name that is not a FHIR resource type (a typo, or a datatype) is rejected by name."""
    message = error_naming_file(tmp_path, SOURCE + f"    resource_types: [Patient, {bad_type}]\n")
    assert "sources.0.resource_types:" in message
    assert bad_type in message


def test_bearer_with_token_and_token_env(tmp_path):
    """Giving both token and token_env is an error that never shows the token."""
    message = error_naming_file(
        tmp_path, SOURCE + f"    auth: {{type: bearer, token: {SECRET}, token_env: TOK}}\n"
    )
    assert "sources.0.auth" in message
    assert "exactly one of 'token' or 'token_env'" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "auth",
    [
        f"{{type: bearer, token: [{SECRET}]}}",
        f"{{type: none, token: {SECRET}}}",
        f"{{type: basic, token: {SECRET}}}",
        f"Bearer {SECRET}",
    ],
    ids=["token-wrong-type", "token-on-none", "unknown-auth-type", "auth-as-string"],
)
def test_bearer_token_never_appears_in_errors(tmp_path, auth):
    """However the auth block is wrong, the token value is not echoed in the error."""
    path = write(tmp_path, SOURCE + f"    auth: {auth}\n")
    message = config_error(path)
    assert "sources.0.auth" in message
    assert SECRET not in message


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    """A YAML syntax error names file:line:column."""
    path = write(tmp_path, "api:\n  port: 80\n  host: [oops\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4:1: YAML syntax error")


def test_missing_file(tmp_path):
    """A settings file that does not exist is a ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: file not found"


def test_duplicate_source_names(tmp_path):
    """Two sources with the same name are rejected, naming the repeated name."""
    message = error_naming_file(
        tmp_path, SOURCE + "  - name: a\n    base_url: http://127.0.0.1:9/fhir\n"
    )
    assert "sources:" in message
    assert "repeated: a" in message


def test_top_level_must_be_a_mapping(tmp_path):
    """A file whose top level is a list is rejected with what was expected."""
    path = write(tmp_path, "- a\n- b\n")
    assert "expected a mapping of settings at the top, got list" in config_error(path)


def test_cli_reports_bad_config_in_one_line(tmp_path):
    """`fhir-bridge -c bad sync --once` exits 2 with an `error:` line, not a traceback."""
    path = write(tmp_path, SOURCE + "    page_size: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fhir_bridge.cli", "-c", str(path), "sync", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert "sources.0.page_size" in proc.stderr
    assert "Traceback" not in proc.stderr

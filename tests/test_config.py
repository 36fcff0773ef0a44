"""Tests for bulkdl.config: layering, errors naming their source, secrets refused, examples load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from bulkdl.config import Settings, load_settings
from bulkdl.errors import ExitCode, InputError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    """Write a config file into ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    **flags: object,
) -> Settings:
    """load_settings with keyword flags and an explicit (default empty) environment."""
    return load_settings(flags=flags, config_file=config, env=env or {})


def input_error(
    config: Path | None = None, env: Mapping[str, str] | None = None, **flags: object
) -> str:
    """The message of the InputError that loading these sources raises."""
    with pytest.raises(InputError) as info:
        load(config, env, **flags)
    assert info.value.exit_code is ExitCode.USAGE
    return str(info.value)


# --- layering ----------------------------------------------------------------------------------


def test_defaults_with_nothing_given() -> None:
    """With no file, env or flags every setting has its documented default."""
    settings = load()
    assert settings == Settings()
    assert (settings.concurrency, settings.retries, settings.layout) == (16, 4, "default")
    assert (settings.connect_timeout, settings.read_timeout) == (30.0, 60.0)
    assert settings.progress and not settings.json and not settings.fsync
    assert settings.api_url is None and settings.out is None
    assert settings.limit_per_host == 18  # concurrency + 2


def test_precedence_default_toml_env_flag(tmp_path: Path) -> None:
    """Each layer wins over the ones before it, key by key: default < TOML < env < flag."""
    config = write(
        tmp_path,
        "[download]\nconcurrency = 8\nretries = 7\nread-timeout = 90\nlayout = 'flat'\n",
    )
    env = {"BULKDL_RETRIES": "9", "BULKDL_READ_TIMEOUT": "120", "BULKDL_LAYOUT": "by-date"}
    settings = load(config, env, read_timeout=5.5, layout=None)
    assert settings.concurrency == 8  # TOML over default
    assert settings.retries == 9  # env over TOML
    assert settings.read_timeout == 5.5  # flag over env
    assert settings.layout == "by-date"  # a None flag is "not given"
    assert settings.connect_timeout == 30.0  # untouched default
    assert settings.limit_per_host == 10  # derived from the final concurrency


def test_env_booleans_and_empty_values() -> None:
    """Env booleans accept 1/0/true/false/yes/no; an empty variable counts as unset."""
    for raw, expected in [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False)]:
        assert load(env={"BULKDL_ACCEPT_INCOMPLETE": raw}).accept_incomplete is expected
    assert load(env={"BULKDL_CONCURRENCY": "  "}).concurrency == 16


def test_top_level_keys_and_underscores(tmp_path: Path) -> None:
    """Keys may sit at the top level and be spelled with '_' as well as '-'."""
    config = write(tmp_path, "read_timeout = 12\nconnect-timeout = 3.5\naccept_incomplete = true\n")
    settings = load(config)
    assert (settings.read_timeout, settings.connect_timeout) == (12.0, 3.5)
    assert settings.accept_incomplete is True


def test_relative_out_resolves_against_config_folder(tmp_path: Path) -> None:
    """A relative ``out`` in the config is taken from the config file's folder; env's is not."""
    config = write(tmp_path, "[download]\nout = 'data/tcia'\n")
    assert load(config).out == tmp_path / "data" / "tcia"
    assert load(config, {"BULKDL_OUT": "here"}).out == Path("here")


def test_flags_accept_dashed_names_and_api_url_from_env() -> None:
    """Flags may be named like the option (``read-timeout``); the API URL comes from env."""
    flags: dict[str, object | None] = {"read-timeout": 7.0, "dry-run": True}
    settings = load_settings(flags=flags, config_file=None, env={"BULKDL_API_URL": "nlst"})
    assert (settings.read_timeout, settings.dry_run, settings.api_url) == (7.0, True, "nlst")


def test_unknown_flag_name_is_a_caller_bug() -> None:
    """A flag name that is no setting is the caller's bug: ValueError, not InputError."""
    with pytest.raises(ValueError, match="not a setting: 'verbose'"):
        load(verbose=1)


def test_public_is_json_able(tmp_path: Path) -> None:
    """public() round-trips through JSON with paths as strings and every setting present."""
    settings = load(out=tmp_path / "out", concurrency=3)
    public = json.loads(json.dumps(settings.public()))
    assert public["out"] == str(tmp_path / "out")
    assert public["concurrency"] == 3 and public["limit_per_host"] == 5
    assert set(public) == {f for f in Settings.__dataclass_fields__}


# --- validation messages -----------------------------------------------------------------------


def test_toml_range_error_names_file_line_and_setting(tmp_path: Path) -> None:
    """An out-of-range TOML value names the file, its line and the setting."""
    config = write(tmp_path, "[download]\nretries = 2\nconcurrency = 0\n")
    assert input_error(config) == (f"{config}:3: concurrency must be between 1 and 256, got 0")


def test_env_not_an_integer_names_variable() -> None:
    """A non-integer env value names the variable and quotes the value."""
    message = input_error(env={"BULKDL_CONCURRENCY": "x"})
    assert message == "BULKDL_CONCURRENCY: concurrency: not an integer: 'x'"


def test_each_range_error_names_source_and_setting(tmp_path: Path) -> None:
    """Concurrency, retries and both timeouts are range-checked from every source."""
    assert input_error(concurrency=257) == (
        "--concurrency: concurrency must be between 1 and 256, got 257"
    )
    assert input_error(env={"BULKDL_RETRIES": "101"}) == (
        "BULKDL_RETRIES: retries must be between 0 and 100, got 101"
    )
    assert input_error(env={"BULKDL_READ_TIMEOUT": "0"}) == (
        "BULKDL_READ_TIMEOUT: read-timeout must be a number of seconds > 0, got 0.0"
    )
    config = write(tmp_path, "connect-timeout = -1\n")
    assert input_error(config) == (
        f"{config}:1: connect-timeout must be a number of seconds > 0, got -1.0"
    )
    assert "retries must be between 0 and 100, got -1" in input_error(retries=-1)


def test_wrong_types_are_refused(tmp_path: Path) -> None:
    """A TOML string for a number, a float for an int or a bad env boolean is an InputError."""
    config = write(tmp_path, "[download]\nconcurrency = '8'\n")
    assert input_error(config) == f"{config}:2: concurrency: not an integer: '8'"
    config = write(tmp_path, "retries = 2.5\n")
    assert input_error(config) == f"{config}:1: retries: not an integer: 2.5"
    assert input_error(env={"BULKDL_ACCEPT_INCOMPLETE": "maybe"}).startswith(
        "BULKDL_ACCEPT_INCOMPLETE: accept-incomplete: not a boolean"
    )


def test_hand_built_settings_are_checked() -> None:
    """Settings built directly are validated too, naming 'settings' as the source."""
    with pytest.raises(InputError, match=r"^settings: concurrency must be between 1 and 256"):
        Settings(concurrency=0)


def test_toml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    """Broken TOML is an InputError that leads with file:line."""
    config = write(tmp_path, "[download]\nconcurrency = 4\nretries = = 2\n")
    message = input_error(config)
    assert message.startswith(f"{config}:3: invalid TOML: ")


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    """A misspelt key is refused with its name, the file and its line."""
    config = write(tmp_path, "[download]\nconcurrency = 4\n\nconcurency = 8\n")
    message = input_error(config)
    assert message.startswith(f"{config}:4: unknown setting 'concurency' (known: api-url, ")


def test_unknown_table_and_duplicate_spelling(tmp_path: Path) -> None:
    """Another table is an unknown key; one setting spelt two ways is refused."""
    config = write(tmp_path, "[query]\nmodality = 'CT'\n")
    assert input_error(config).startswith(f"{config}:1: unknown setting 'query'")
    config = write(tmp_path, "read-timeout = 5\n[download]\nread_timeout = 6\n")
    assert input_error(config) == (
        f"{config}:3: 'read_timeout' is set twice (also as 'read-timeout')"
    )


@pytest.mark.parametrize(
    "text",
    ["password = 'hunter2'\n", "[download]\ntoken = 'abc'\n", "[auth]\nuser = 'me'\n"],
)
def test_credentials_in_config_are_refused(tmp_path: Path, text: str) -> None:
    """A password or token key is refused, saying where credentials go, never echoing them."""
    config = write(tmp_path, text)
    message = input_error(config)
    assert "BULKDL_PASSWORD" in message and "BULKDL_CREDENTIALS_FILE" in message
    assert "hunter2" not in message and "abc'" not in message
    assert message.startswith(f"{config}:")


def test_api_url_with_password_is_refused() -> None:
    """An API URL carrying user:password@ is refused without repeating the password."""
    message = input_error(api_url="https://me:hunter2@example.org/nbia-api/services/v4/")
    assert message.startswith("--api-url: api-url must not carry user:password@")
    assert "hunter2" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist is an InputError naming it."""
    missing = tmp_path / "nope.toml"
    assert input_error(missing).startswith(f"{missing}: cannot read config file")


# --- shipped examples --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["download.toml", "hpc.toml", "distant-server.toml"])
def test_shipped_configs_load(name: str) -> None:
    """Every example in configs/ loads; download.toml states exactly the defaults."""
    settings = load(CONFIGS / name)
    if name == "download.toml":
        assert settings == Settings()
    else:
        assert settings != Settings()


def test_every_shipped_config_is_covered() -> None:
    """The parametrized list above names every file in configs/."""
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == [
        "distant-server.toml",
        "download.toml",
        "hpc.toml",
    ]


def test_download_toml_documents_every_setting() -> None:
    """configs/download.toml mentions every setting, so it stays the complete reference."""
    text = (CONFIGS / "download.toml").read_text(encoding="utf-8")
    missing = [n for n in Settings.__dataclass_fields__ if f"{n.replace('_', '-')} =" not in text]
    assert missing == []

"""loader.Settings: read from the environment the same way everywhere, values PostgreSQL
would refuse (or read otherwise than meant) refused before anything is sent."""

from __future__ import annotations

import pytest

from loader import ConfigurationError, Settings
from loader.celery import CeleryConfig
from loader.settings import ENVIRONMENT, current_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def test_the_environment_reaches_settings_and_the_celery_config_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOADER_STATEMENT_TIMEOUT", " 1ms ")
    monkeypatch.setenv("LOADER_WORK_MEM", "3MB")
    monkeypatch.setenv("LOADER_LOCK_TIMEOUT", "")  # empty: the default

    read = [Settings(), current_settings(), CeleryConfig().save_settings]

    assert {(s.statement_timeout, s.work_mem, s.lock_timeout) for s in read} == {("1ms", "3MB", "90s")}
    assert Settings(statement_timeout="5s").statement_timeout == "5s"  # by name, over the environment


def test_current_settings_follows_a_change_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = current_settings()
    monkeypatch.setenv("LOADER_LOCK_TIMEOUT", "3s")

    assert (before.lock_timeout, current_settings().lock_timeout) == ("90s", "3s")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOADER_STATEMENT_TIMEOUT", "1500ms"),
        ("LOADER_STATEMENT_TIMEOUT", "2min"),
        ("LOADER_STATEMENT_TIMEOUT", "0"),
        ("LOADER_STATEMENT_TIMEOUT", "250"),
        ("LOADER_LOCK_TIMEOUT", "1.5s"),
        ("LOADER_LOCK_TIMEOUT", "1 h"),
        ("LOADER_WORK_MEM", "512kB"),
        ("LOADER_WORK_MEM", "1GB"),
        ("LOADER_WORK_MEM", "65536"),
    ],
)
def test_values_postgresql_takes_are_taken_as_written(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    field = {"LOADER_STATEMENT_TIMEOUT": "statement_timeout", "LOADER_LOCK_TIMEOUT": "lock_timeout"}
    assert getattr(Settings(), field.get(name, "work_mem")) == value


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("LOADER_STATEMENT_TIMEOUT", "1 parsec", "not a PostgreSQL duration"),
        ("LOADER_STATEMENT_TIMEOUT", "5S", "case matters"),
        ("LOADER_STATEMENT_TIMEOUT", "500us", "under a millisecond"),
        ("LOADER_STATEMENT_TIMEOUT", "30d", "above PostgreSQL's limit"),
        ("LOADER_LOCK_TIMEOUT", "-1s", "not a PostgreSQL duration"),
        ("LOADER_WORK_MEM", "lots", "not a PostgreSQL memory size"),
        ("LOADER_WORK_MEM", "32kB", "outside PostgreSQL's range"),
        ("LOADER_WORK_MEM", "64mb", "case matters"),
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, why: str
) -> None:
    monkeypatch.setenv(name, value)

    for read in (Settings, current_settings, CeleryConfig.from_env):
        with pytest.raises(ConfigurationError) as caught:
            read()
        assert f"{name}={value!r}" in str(caught.value) and why in str(caught.value)


def test_a_bad_value_given_by_name_names_the_field_and_its_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"lock_timeout \(LOADER_LOCK_TIMEOUT\)=True"):
        Settings(lock_timeout=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="statment_timeout"):
        Settings(statment_timeout="5s")  # type: ignore[call-arg]

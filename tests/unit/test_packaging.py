"""The version is written once (loader.__version__) and reported the same everywhere."""

from __future__ import annotations

from importlib import metadata

from click.testing import CliRunner
from packaging.version import Version

import loader
import loader.connection
from loader.cli import cli

DISTRIBUTION = "ocr-batch-loader"


def test_the_installed_distribution_reports_the_packages_own_version() -> None:
    assert metadata.version(DISTRIBUTION) == loader.__version__


def test_the_version_is_a_release_number_pip_orders() -> None:
    version = Version(loader.__version__)

    assert str(version) == loader.__version__  # already normalised: one spelling everywhere
    assert len(version.release) == 3  # major.minor.patch


def test_loader_version_names_the_release_and_the_schema_version_it_needs() -> None:
    result = CliRunner().invoke(cli, ["--version"])

    assert result.exit_code == 0
    assert (
        result.output == f"loader {loader.__version__} (schema version {loader.connection.SCHEMA_VERSION})\n"
    )


def test_the_distribution_declares_the_extras_the_docs_install() -> None:
    extras = set(metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or [])

    assert {"orm", "async", "embedded", "dev"} <= extras

"""deploy/image_test.py hands the build this machine's pip settings: the part of it that runs without root or buildah,
checked here because the image test itself runs only where it can."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("image_test", ROOT / "deploy" / "image_test.py")
assert _spec is not None and _spec.loader is not None
image_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_test)

LISTED = """\
:env:.cert='/etc/custom/ca.pem'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels https://wheels.example.com/simple'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.index-url='https://pypi.example.com/simple'
install.timeout='30'
wheel.find-links='/srv/wheels'
"""


def test_the_environment_wins_in_every_section_and_the_files_settings_are_kept() -> None:
    config, _ = image_test.pip_config_from(LISTED)
    assert config["global"]["index-url"] == "https://pypi.example.com/simple"
    assert config["install"]["timeout"] == "30"
    assert {config[section]["default-timeout"] for section in ("global", "install", "wheel")} == {"180"}


def test_the_build_trusts_the_bundle_pip_trusts_here_at_the_path_it_is_mounted() -> None:
    config, bundle = image_test.pip_config_from(LISTED)
    assert bundle == "/etc/custom/ca.pem", "PIP_CERT wins over the file's cert"
    assert {config[section]["cert"] for section in config.sections()} == {image_test.CA_BUNDLE}


def test_local_find_links_are_dropped_and_remote_ones_kept() -> None:
    config, _ = image_test.pip_config_from(LISTED)
    assert {config[section]["find-links"] for section in config.sections()} == {"https://wheels.example.com/simple"}
    config, _ = image_test.pip_config_from(":env:.find-links='/opt/wheels'\n")
    assert not config.has_option("global", "find-links")


def test_without_settings_the_build_trusts_debians_bundle() -> None:
    config, bundle = image_test.pip_config_from("")
    assert bundle == image_test.CA_BUNDLE and config.sections() == ["global"]

"""Reading pip's configuration the way pip does, so that uv can be told about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.lock.indexes import index_config, pip_config_files, read_pip_config, redact


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # XDG_CONFIG_DIRS points at an empty folder so that only /etc/pip.conf is global here.
    return {"HOME": str(home), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"), **extra}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_user_file_with_install_section_overrides_global(tmp_path):
    env = _env(tmp_path)
    _write(
        Path(env["HOME"]) / ".config/pip/pip.conf",
        "[global]\nindex-url = https://mirror.one/simple\n"
        "extra-index-url =\n    https://extra.one/simple\n    https://extra.two/simple\n"
        "[install]\nindex-url = https://mirror.two/simple\nfind-links = wheels\n",
    )
    config = read_pip_config(env)
    assert config.default.url == "https://mirror.two/simple"
    assert config.default.origin.endswith(".config/pip/pip.conf")
    assert [e.url for e in config.extras] == [
        "https://extra.one/simple",
        "https://extra.two/simple",
    ]
    assert config.find_links[0][0] == str(Path("wheels").absolute())
    assert config.strategy == "unsafe-best-match"  # pip picks the best version across indexes


def test_environment_variables_win(tmp_path):
    env = _env(
        tmp_path,
        PIP_INDEX_URL="https://env.mirror/simple",
        PIP_EXTRA_INDEX_URL="https://a/simple https://b/simple",
        PIP_FIND_LINKS="/opt/wheels",
    )
    _write(Path(env["HOME"]) / ".pip/pip.conf", "[global]\nindex-url = https://file/simple\n")
    config = read_pip_config(env)
    assert (config.default.url, config.default.origin) == (
        "https://env.mirror/simple",
        "PIP_INDEX_URL",
    )
    assert [e.origin for e in config.extras] == ["PIP_EXTRA_INDEX_URL"] * 2
    assert config.find_links == [("/opt/wheels", "PIP_FIND_LINKS")]


def test_pip_config_file_skips_user_files_and_devnull_skips_all(tmp_path):
    env = _env(tmp_path)
    _write(
        Path(env["HOME"]) / ".config/pip/pip.conf", "[global]\nindex-url = https://user/simple\n"
    )
    chosen = _write(tmp_path / "chosen.conf", "[global]\nindex-url = https://chosen/simple\n")
    files = pip_config_files({**env, "PIP_CONFIG_FILE": str(chosen)})
    assert files[-1] == chosen and not any(".config/pip" in str(f) for f in files)
    assert read_pip_config({**env, "PIP_CONFIG_FILE": str(chosen)}).default.url == (
        "https://chosen/simple"
    )
    assert pip_config_files({**env, "PIP_CONFIG_FILE": "/dev/null"}) == []


def test_no_config_means_pypi(tmp_path):
    config = read_pip_config({**_env(tmp_path), "PIP_CONFIG_FILE": "/dev/null"})
    assert config.default.url == "https://pypi.org/simple" and config.extras == []
    assert config.strategy == "first-index"


def test_malformed_pip_conf_is_one_message(tmp_path):
    bad = _write(tmp_path / "pip.conf", "index-url = https://no-section/simple\n")
    with pytest.raises(ProvisionError) as caught:
        read_pip_config({**_env(tmp_path), "PIP_CONFIG_FILE": str(bad)})
    assert str(bad) in caught.value.message and "malformed" in caught.value.message
    assert "--ignore-pip-config" in caught.value.hint


def test_no_index_is_refused(tmp_path):
    with pytest.raises(ProvisionError, match="no-index"):
        index_config(True, {**_env(tmp_path), "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1"})


def test_credentials_never_shown(tmp_path):
    env = {**_env(tmp_path), "PIP_INDEX_URL": "https://alice:s3cret@mirror.example:8443/simple"}
    config = read_pip_config(env)
    assert "s3cret" not in str(config.to_json())
    assert redact(config.default.url) == "https://***@mirror.example:8443/simple"

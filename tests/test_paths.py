"""cord.paths.cache_dir: the one place cord's on-disk cache lives, and the tests' own copy."""

from __future__ import annotations

from pathlib import Path

from cord.data.builtin import cache_root
from cord.paths import cache_dir


def test_env_override_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("CORD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CORD_CACHE", str(tmp_path / "old"))
    assert cache_dir() == tmp_path / "c"  # the new name wins over the old one
    monkeypatch.delenv("CORD_CACHE_DIR")
    assert cache_dir() == tmp_path / "old"
    monkeypatch.delenv("CORD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cord"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cord"


def test_builtin_datasets_use_the_shared_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CORD_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path


def test_the_suite_never_touches_the_home_cache():
    """conftest points the cache at a per-session temporary directory."""
    d = cache_dir()
    assert not d.is_relative_to(Path.home() / ".cache")
    assert "cord-cache" in d.name

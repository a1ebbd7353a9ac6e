"""Model strings -> managed backends: options, lazy imports, missing SDKs and keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scene_sim.backends import BACKENDS, ManagedBackend, backend_class, create_backend
from scene_sim.backends.fake import FakeBackend
from scene_sim.errors import SceneSimError
from scene_sim.modelspec import ModelSpec


def test_providers_are_mapped_lazily() -> None:
    assert BACKENDS["hf"] == "scene_sim.backends.hf:HFBackend"
    assert BACKENDS["local"] == "scene_sim.backends.local:LocalBackend"
    assert set(BACKENDS) == {"anthropic", "google", "openai", "hf", "local", "fake"}


def test_create_fake_backend() -> None:
    backend = create_backend("fake/anything?latency_ms=100")
    assert isinstance(backend, ManagedBackend)
    assert isinstance(backend.backend, FakeBackend)
    assert backend.backend.latency_ms == 100
    assert backend.model_string == "fake/anything"
    assert create_backend(ModelSpec.parse("fake/x")).model_string == "fake/x"


def test_managed_options_in_the_model_string_win() -> None:
    backend = create_backend(
        "fake/x?rpm=30&tpm=1000&max_connections=3&timeout_s=7&max_attempts=2", rpm=5, max_connections=9, timeout_s=60
    )
    assert (backend.rpm, backend.tpm, backend.max_connections, backend.timeout_s, backend.max_attempts) == (
        30,
        1000,
        3,
        7,
        2,
    )


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(SceneSimError) as info:
        create_backend("fake/x?latncy_ms=5")
    message = str(info.value)
    assert "latncy_ms" in message and "latency_ms" in message and "base_url" in message and "rpm" in message


def test_unknown_anthropic_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k-123456")
    with pytest.raises(SceneSimError, match="cache_prompt"):
        create_backend("anthropic/claude-x?temprature=0")


def test_bad_managed_option_value() -> None:
    with pytest.raises(SceneSimError, match="rpm"):
        create_backend("fake/x?rpm=lots")
    with pytest.raises(SceneSimError, match="max_connections"):
        create_backend("fake/x?max_connections=0")


def test_scripted_is_not_a_backend() -> None:
    with pytest.raises(SceneSimError, match="offline policies") as info:
        create_backend("scripted/learner")
    assert "create_backend" not in str(info.value)  # no internal names in a user's error
    assert "--subject" in str(info.value)
    with pytest.raises(SceneSimError, match="offline policies"):
        backend_class("scripted")
    with pytest.raises(SceneSimError, match="not a model backend"):
        backend_class("human")


def test_unknown_provider() -> None:
    with pytest.raises(SceneSimError, match="valid providers"):
        create_backend("antropic/claude")
    with pytest.raises(SceneSimError, match="valid providers"):
        backend_class("nope")


def test_bad_cache_mode() -> None:
    with pytest.raises(SceneSimError, match="cache mode"):
        create_backend("fake/x", cache_mode="sometimes")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("anthropic/claude-x", "ANTHROPIC_API_KEY"),
        ("google/gemini-x", "GOOGLE_API_KEY or GEMINI_API_KEY"),
        ("openai/gpt-x", "OPENAI_API_KEY"),
    ],
)
def test_missing_key_names_the_variable(model: str, message: str) -> None:
    with pytest.raises(SceneSimError, match=message):
        create_backend(model)


def test_gemini_api_key_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "g-123456")
    assert create_backend("google/gemini-x").provider == "google"


@pytest.mark.parametrize(
    ("model", "module", "extra"),
    [
        ("anthropic/claude-x", "anthropic", "anthropic"),
        ("google/gemini-x", "google.genai", "google"),
        ("openai/gpt-x", "openai", "openai"),
    ],
)
def test_missing_sdk_names_the_extra(model: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "k-123456")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail like an absent package
    with pytest.raises(SceneSimError, match=rf"pip install 'scene-sim\[{extra}\]'"):
        create_backend(model)


def test_sdks_are_imported_only_when_used() -> None:
    code = (
        "import sys, asyncio\n"
        "from scene_sim.backends import create_backend, GenerateRequest\n"
        "b = create_backend('fake/x', cache_mode='off')\n"
        "asyncio.run(b.generate(GenerateRequest(messages=({'role': 'user', 'content': 'hi'},))))\n"
        "sdks = ('anthropic', 'openai', 'google.genai', 'torch', 'transformers')\n"
        "print(sorted(m for m in sdks if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("option", ["api_key", "token", "auth_token"])
def test_credentials_in_model_strings_are_refused_without_echo(option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k-123456")
    with pytest.raises(SceneSimError, match="environment variables") as info:
        create_backend(f"openai/gpt-x?{option}=hunter2-very-secret")
    assert "hunter2" not in str(info.value)


def test_backends_share_one_cache_per_mode_and_dir() -> None:
    a = create_backend("fake/a")
    b = create_backend("fake/b")
    c = create_backend("fake/c", cache_mode="read-only")
    assert a.cache is b.cache and a.cache is not c.cache

"""``llm-etl-dev``: the developer commands, which ``llm-etl`` (the provider's command line) no longer has."""

from __future__ import annotations

import pytest

from llm_etl_dev.cli import main
from llm_etl_provider.backends.llama_server import MODEL_FILE
from llm_etl_provider.cli import main as provider_main

DEVELOPER_COMMANDS = ("local-server", "batching-server", "model-path", "dev-cluster", "demo")


@pytest.mark.parametrize("command", DEVELOPER_COMMANDS)
def test_each_developer_command_is_llm_etl_dev_s_only(command, capsys):
    with pytest.raises(SystemExit) as help_shown:
        main([command, "--help"])
    assert help_shown.value.code == 0
    with pytest.raises(SystemExit) as refused:
        provider_main([command, "--help"])
    assert refused.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_model_path_prints_the_checked_bundled_model(capsys):
    assert main(["model-path"]) == 0
    assert capsys.readouterr().out.strip().endswith(MODEL_FILE)


def test_stopping_a_local_server_that_never_ran_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLM_ETL_CACHE_DIR", str(tmp_path))
    assert main(["local-server", "--port", "18080", "--stop"]) == 0
    assert capsys.readouterr().out == "llama-server on port 18080 was not running\n"

from __future__ import annotations

import contextlib
import hashlib
import signal

import httpx
import pytest

from llm_etl_provider.worker import model_loader
from llm_etl_provider.worker.exceptions import ConfigurationError, ModelLoadError
from llm_etl_provider.worker.model_loader import download, verify
from llm_etl_provider.worker.retry import RetryPolicy

MODEL = b"GGUF" + bytes(range(256)) * 400
SHA = hashlib.sha256(MODEL).hexdigest()
URL = "https://store.local/models/m.gguf?X-Amz-Signature=SECRET"


def serve(monkeypatch, handler):
    @contextlib.contextmanager
    def stream(method, url, **kwargs):
        with (
            httpx.Client(transport=httpx.MockTransport(handler)) as client,
            client.stream(method, url, headers=kwargs.get("headers")) as response,
        ):
            yield response

    monkeypatch.setattr(httpx, "stream", stream)
    monkeypatch.setattr(model_loader, "_pause", lambda _: None)


def test_download_checks_the_checksum_and_renames_into_place(tmp_path, monkeypatch, capsys):
    serve(monkeypatch, lambda r: httpx.Response(200, content=MODEL))
    dest = tmp_path / "models" / "m.gguf"
    download(URL, dest, SHA)
    assert dest.read_bytes() == MODEL
    assert not (tmp_path / "models" / "m.gguf.part").exists()
    assert "SECRET" not in capsys.readouterr().err  # a presigned URL's signature is a credential


def test_a_corrupt_download_is_refused_and_removed(tmp_path, monkeypatch):
    serve(monkeypatch, lambda r: httpx.Response(200, content=MODEL[:-1] + b"X"))
    dest = tmp_path / "m.gguf"
    with pytest.raises(ModelLoadError, match=f"expected {SHA}") as info:
        download(URL, dest, SHA)
    assert "SECRET" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_transient_failures_resume_with_a_range_request(tmp_path, monkeypatch):
    requests = []

    def cut_after(data: bytes, request: httpx.Request):
        yield data
        raise httpx.ReadError("connection reset", request=request)

    def handler(request):
        requests.append(request.headers.get("Range"))
        if len(requests) == 1:
            return httpx.Response(503)
        if len(requests) == 2:
            return httpx.Response(200, content=cut_after(MODEL[:1000], request))
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(206, content=MODEL[start:])

    serve(monkeypatch, handler)
    download(URL, tmp_path / "m.gguf", SHA, retry=RetryPolicy(max_attempts=3, base_delay=0))
    assert (tmp_path / "m.gguf").read_bytes() == MODEL
    assert requests == [None, None, "bytes=1000-"]


def test_client_errors_are_not_retried(tmp_path, monkeypatch):
    calls = []

    def forbidden(request):
        calls.append(request)
        return httpx.Response(403)

    serve(monkeypatch, forbidden)
    with pytest.raises(ModelLoadError, match="answered HTTP 403"):
        download(URL, tmp_path / "m.gguf", SHA)
    assert len(calls) == 1


def test_a_verified_file_is_not_downloaded_again(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(MODEL)
    serve(monkeypatch, lambda r: pytest.fail("no request expected"))
    download(URL, tmp_path / "m.gguf", SHA)


def test_verify_mode(tmp_path):
    (tmp_path / "m.gguf").write_bytes(MODEL)
    verify(tmp_path / "m.gguf", SHA)
    verify(tmp_path, None)
    with pytest.raises(ModelLoadError, match="expected"):
        verify(tmp_path / "m.gguf", "0" * 64)
    with pytest.raises(ModelLoadError, match="does not exist"):
        verify(tmp_path / "absent.gguf", None)
    with pytest.raises(ConfigurationError, match="directory"):
        verify(tmp_path, SHA)


def test_the_cli_reads_the_url_from_a_mounted_secret_file(tmp_path, monkeypatch, capsys):
    from llm_etl_provider.cli import main

    requested = []

    def answer(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(200, content=MODEL)

    serve(monkeypatch, answer)
    url_file = tmp_path / "model-url" / "url"
    url_file.parent.mkdir()
    url_file.write_text(URL + "\n")  # kubectl create secret --from-file keeps a trailing newline
    dest = tmp_path / "m.gguf"
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["load-model", "--dest", str(dest), "--url-file", str(url_file), "--sha256", SHA]) == 0
    assert signal.getsignal(signal.SIGTERM) is handler  # exit-on-SIGTERM lasts as long as the load only
    assert requested == [URL]
    assert dest.read_bytes() == MODEL
    with pytest.raises(SystemExit, match="cannot read the model URL file"):
        main(["load-model", "--dest", str(dest), "--url-file", str(tmp_path / "none"), "--sha256", SHA])
    assert main(["load-model", "--dest", str(dest), "--sha256", SHA]) == 2  # no URL at all
    assert "SECRET" not in "".join(capsys.readouterr())

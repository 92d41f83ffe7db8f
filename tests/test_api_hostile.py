"""A hostile client against a real server with per-session History (issue 22, items 3-6).

A browser session's id is a bearer secret in Gradio (it names the session's queue, state and runs). No
file the server serves or exports may hold it or anything it can be derived from; one client cannot see
another's state or stop another's run; uploads have a size limit.
"""
import json
import sqlite3
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client
from training_support import one_torch_thread  # noqa: F401  (autouse)

import app as app_module
from ui import build_app
from ui.service import Service
from ui.settings import Settings


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("privacy")), image_size=64, max_steps=50, max_images=4,
                        history="session", max_upload_mb=0.5)
    service = Service(settings)
    app = build_app(service, settings)
    app_module.launch(app, settings, server_port=None, quiet=True)
    yield app, service
    app.close()


def _subject(client: Client) -> str:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"][0][
        "parameter_default"]


def _submit(client: Client, seed: int, steps: int = 2, n: int = 1, **fields):
    values = dict(subj=_subject(client), enc="demo", obj="maximize", con="EBA", w=1.0, sc=20.0, n_steps=steps,
                  sched="dpm", sd=seed, n=n, k=4, text="", guidance="exact")
    return client.submit(**{**values, **fields}, api_name="/run")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _stop(app, session: str) -> int:
    """The Stop button's call (not queued), made as session ``session``."""
    body = json.dumps({"data": [], "session_hash": session}).encode()
    request = urllib.request.Request(f"{app.local_url}gradio_api/run/stop_run", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _owners(service) -> dict[str, str]:
    with sqlite3.connect(service.catalog.db_path) as db:
        return dict(db.execute("SELECT id, owner FROM images").fetchall())


def test_no_served_or_exported_file_holds_a_session_id_or_its_hash(served):
    app, service = served
    victim = Client(app.local_url, verbose=False)
    assert _submit(victim, seed=3).result()[1].startswith("Done: 1 image")
    owners = _owners(service)
    mine = [i for i, owner in owners.items() if owner]
    assert mine, "a per-session History stores an owner"
    secrets = {victim.session_hash, *(owners[i] for i in mine), *(owners[i].split(":")[-1] for i in mine)}
    for entry_id in mine:  # what anyone who learns an image id can fetch
        record_path = service.catalog.get(entry_id).record_path.resolve()
        status, body = _get(f"{app.local_url}gradio_api/file={record_path}")
        assert status == 200
        assert not any(s in body.decode() for s in secrets) and "owner" not in json.loads(body)
    exported = victim.predict("", "", "", "", "", api_name="/export_all")[0]
    with zipfile.ZipFile(exported) as zf:
        text = "".join(zf.read(name).decode(errors="replace") for name in zf.namelist())
    assert len(mine) and not any(s in text for s in secrets)
    key = Path(service.settings.owner_key_path).resolve()  # the secret that keys the hashes is not served
    assert _get(f"{app.local_url}gradio_api/file={key}")[0] == 403


def test_one_session_cannot_read_another_sessions_state(served):
    app, _ = served
    victim = Client(app.local_url, verbose=False)
    assert _submit(victim, seed=4).result()[1].startswith("Done")
    assert victim.session_hash in app.state_holder  # the state Gradio's deep_link route would hand out
    status, body = _get(f"{app.local_url}gradio_api/deep_link?session_hash={victim.session_hash}")
    assert status == 404 or body.strip(b'"') == b""


def test_a_client_that_reads_everything_served_cannot_stop_another_run(served):
    app, service = served
    victim, attacker = Client(app.local_url, verbose=False), Client(app.local_url, verbose=False)
    assert _submit(victim, seed=5).result()[1].startswith("Done")  # the victim has results the attacker can fetch
    learned = set()
    for entry_id in _owners(service):
        body = _get(f"{app.local_url}gradio_api/file={service.catalog.get(entry_id).record_path.resolve()}")[1]
        owner = str(json.loads(body).get("owner", ""))
        learned.add(owner.split(":", 1)[-1])
    job = _submit(victim, seed=6, steps=40, n=2)
    assert _wait(lambda: victim.session_hash in service._cancel), "the victim's run started"
    for session in learned | {attacker.session_hash}:  # Stop, sent as each session the attacker could name
        assert _stop(app, session) == 200
    assert job.result()[1].startswith("Done: 2 image"), job.result()[1]
    job = _submit(victim, seed=7, steps=40, n=2)  # the same call as the victim's own session does stop it
    assert _wait(lambda: victim.session_hash in service._cancel)
    assert _stop(app, victim.session_hash) == 200 and job.result()[1].startswith("Stopped"), job.result()[1]


def test_uploads_over_the_limit_are_refused(served):
    app, _ = served
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * (600 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{app.local_url}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    assert status == 413


def test_owners_stored_in_the_clear_by_older_versions_are_rekeyed_and_removed_from_records(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from braindive.catalog import Catalog

    settings = Settings(data_dir=str(tmp_path), history="session")
    old = Catalog(settings.catalog_dir).add(Image.new("RGB", (4, 4)), {"created": "2026-01-01T00:00:00",
                                            "subject": "S1", "target": "FFA", "seed": 1}, owner="session:abc123")
    old.record_path.write_text(json.dumps({**json.loads(old.record_path.read_text()), "owner": "session:abc123"}))
    service = Service(settings)
    assert "abc123" not in old.record_path.read_text() and "abc123" not in service.catalog.get(old.id).owner
    visitor = SimpleNamespace(session_hash="abc123", username=None)  # the same browser session still sees its result
    assert [e.id for e in service.catalog.query(owner=service.history_owner(visitor))] == [old.id]
    assert Service(settings).owner_of(visitor) == service.owner_of(visitor)  # one key, kept across restarts


@pytest.mark.parametrize("field,value,named", [
    ("n_steps", "abc", "steps"), ("n_steps", None, "steps"), ("sd", "NaN", "seed"), ("sd", 2.5, "seed"),
    ("k", 2.5, "keep the best k"), ("k", "NaN", "keep the best k"), ("k", None, "keep the best k"),
    ("w", "abc", "weight"), ("n", [3], "images"),
])
def test_wrong_values_are_refused_by_name_before_anything_runs(served, field, value, named):
    app, service = served
    client = Client(app.local_url, verbose=False)
    before = len(service.catalog.query())
    with pytest.raises(Exception) as err:
        _submit(client, seed=11, **{field: value}).result()
    message = str(err.value)
    assert named in message.lower() and "upstream gradio app has raised an exception" not in message, message
    assert len(service.catalog.query()) == before  # nothing generated, nothing cataloged


def test_a_full_disk_is_a_clear_message_and_history_still_loads(served, monkeypatch):
    import errno

    import braindive.catalog as catalog_module

    app, service = served
    client = Client(app.local_url, verbose=False)
    before = {e.id for e in service.catalog.query()}

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(catalog_module, "_atomic", full)
    with pytest.raises(Exception) as err:
        _submit(client, seed=21).result()
    assert "disk of the server is full" in str(err.value) and service.settings.data_dir not in str(err.value)
    monkeypatch.undo()
    assert {e.id for e in service.catalog.query()} == before
    status = client.predict("", "", "", "", "", [], api_name="/first_page")[2]
    assert "Entries" in status or "No entries" in status

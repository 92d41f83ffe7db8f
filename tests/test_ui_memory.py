"""What the app keeps per browser session: released when the page closes, kept while it is open (ui/memory.py)."""
import gc
import time

import pytest
from gradio.state_holder import SessionState
from gradio_client import Client
from training_support import one_torch_thread  # noqa: F401  (autouse)

from ui import build_app
from ui.service import Service
from ui.settings import Settings


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # a closed client is noticed within a second, not 15 s
    service = Service(Settings(data_dir=str(tmp_path_factory.mktemp("memory")), image_size=64, max_steps=10))
    app = build_app(service, service.settings)
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield app, service
    app.close()
    mp.undo()


def _generate(client: Client, seed: int) -> str:
    subject = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"][0]
    out = client.predict(subj=subject["parameter_default"], enc="demo", obj="maximize", con="EBA", w=1.0, sc=20.0,
                         n_steps=2, sched="dpm", sd=seed, n=1, text="", guidance="exact", api_name="/run")
    return out[1]


def _wait(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_closed_sessions_leave_no_state_behind_and_open_ones_keep_theirs(served):
    app, service = served
    url = app.local_url
    open_client = Client(url, verbose=False)
    assert _generate(open_client, seed=0).startswith("Done: 1 image")
    closed = []
    for seed in (1, 2, 3):
        client = Client(url, verbose=False)
        assert _generate(client, seed).startswith("Done: 1 image")
        assert client.session_hash in app.state_holder.session_data  # Gradio holds the session while it is open
        client.close()
        closed.append(client.session_hash)

    queue = app._queue
    assert _wait(lambda: not any(s in app.state_holder.session_data for s in closed)), \
        f"{sum(s in app.state_holder.session_data for s in closed)} of {len(closed)} closed sessions still held"
    assert not any(s in queue.pending_messages_per_session or s in queue.pending_event_ids_session for s in closed)
    # nothing else holds them either: the live SessionState objects are exactly those of sessions still open
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, SessionState) and o.blocks_config.root_block is app]
    assert len(live) == len(app.state_holder.session_data)
    # the open page keeps its state (its selection and results), and every result stays in the catalog
    assert open_client.session_hash in app.state_holder.session_data
    assert app.state_holder[open_client.session_hash].state_data  # its gr.State (selection, result ids)
    assert len(service.catalog.query()) == 4
    open_client.close()

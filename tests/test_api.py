"""`ditflow.Session` on a real (tiny, random) FLUX pipeline and the real agents graph: turns, follow-ups, undo,
persistence across restarts, progress as callback and iterator, cancel, and two Sessions side by side."""
import threading

import pytest

pytest.importorskip("ditflow.agents.graph", reason="the agents graph (run_turn) has not landed yet")

from ditflow import Session, Turn, TurnCancelled  # noqa: E402
from ditflow.pipelines.tiny import tiny_flux_pipeline  # noqa: E402
from ditflow.schemas import ProgressEvent  # noqa: E402

BOOK = "a four-page picture book about a red circle that turns blue"


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def test_chat_returns_a_typed_turn_and_stores_it(pipe, tmp_path):
    events: list[ProgressEvent] = []
    with Session(pipeline=pipe, llm="rules", home=tmp_path, on_progress=events.append) as s:
        turn = s.chat(BOOK)
        assert isinstance(turn, Turn) and turn.error is None and turn.ok
        assert len(turn.images) == 4 and all(im.mode == "RGB" for im in turn.images)
        assert turn.plan.steps and turn.parsed.num_outputs == 4
        assert turn.article_markdown and "0003" in turn.article_markdown
        assert s.id and [t.record.turn for t in s.history] == [1]
        stages = [e.stage for e in events]
        assert stages[0] == "parse" and "plan" in stages and stages[-2:] == ["done", "save"]
        steps = [e for e in events if e.stage == "denoise"]
        assert steps and all(1 <= e.step <= e.total for e in steps)
        saved = turn.save(tmp_path / "out")
        assert saved.name == "manifest.json" and (tmp_path / "out" / "0004.png").is_file()


def test_follow_up_undo_and_restart(pipe, tmp_path):
    s = Session(pipeline=pipe, llm="rules", home=tmp_path)
    first = s.chat(BOOK)
    second = s.chat("make page 3 green")
    assert second.error is None and second.record.turn == 2
    assert second.parsed.task == "edit"  # a follow-up on the last outputs, not a new request
    assert s.undo().record.turn == 1 and [t.record.turn for t in s.history] == [1]
    third = s.chat("make page 2 green")  # after undo, numbering never reuses a folder
    assert third.record.turn == 3 and third.folder != second.folder and second.folder.exists()
    sid = s.id
    s.close()

    again = Session(pipeline=pipe, llm="rules", home=tmp_path, session_id=sid)  # a restart
    assert [t.record.turn for t in again.history] == [1, 3]
    assert [p.name for p in again.history[0].image_paths] == [p.name for p in first.image_paths]
    fourth = again.chat("make page 1 blue")
    assert fourth.error is None and fourth.parsed.task == "edit"
    again.close()


def test_stream_yields_events_then_the_turn(pipe, tmp_path):
    with Session(pipeline=pipe, llm="rules", persist=False) as s:
        items = list(s.stream("a green triangle at the top right"))
        assert all(isinstance(i, ProgressEvent) for i in items[:-1]) and isinstance(items[-1], Turn)
        assert any(i.stage == "denoise" for i in items[:-1]) and len(items[-1].images) == 1
        stream = s.stream("a blue square")  # leaving the iterator early cancels the turn
        next(stream)
        stream.close()
        assert [t.record.turn for t in s.history] == [1]
        assert s.chat("a blue square").ok  # and the session is free for the next one


def test_cancel_stops_the_turn_and_keeps_the_session(pipe, tmp_path):
    s = Session(pipeline=pipe, llm="rules", home=tmp_path)
    s.chat("a red circle")

    def cancel_on_denoise(event: ProgressEvent):
        if event.stage == "denoise":
            s.cancel()

    with pytest.raises(TurnCancelled):
        s.chat(BOOK, on_progress=cancel_on_denoise)
    assert [t.record.turn for t in s.history] == [1]
    assert sorted(p.name for p in (s.store.dir(s.id) / "turns").iterdir()) == ["0001"]  # nothing partial
    assert s.chat("make it blue").error is None  # the session goes on
    s.close()


def test_one_turn_at_a_time_per_session(pipe):
    with Session(pipeline=pipe, llm="rules", persist=False) as s:
        seen = []

        def reenter(event):
            if event.stage == "denoise" and not seen:
                with pytest.raises(RuntimeError, match="already running a turn"):
                    s.chat("another")
                seen.append(True)

        s.chat("a blue square", on_progress=reenter)
        assert seen


def test_two_sessions_in_one_process_do_not_interfere(tmp_path):
    results, events = {}, {"a": [], "b": []}

    def work(name, instruction):
        with Session(pipeline=tiny_flux_pipeline(), llm="rules", home=tmp_path / name,
                     on_progress=events[name].append) as s:
            results[name] = (s.chat(instruction), s.id, s.store.list())

    threads = [threading.Thread(target=work, args=("a", "a red circle")),
               threading.Thread(target=work, args=("b", BOOK))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (ta, ida, la), (tb, idb, lb) = results["a"], results["b"]
    assert len(ta.images) == 1 and len(tb.images) == 4
    assert [m.id for m in la] == [ida] and [m.id for m in lb] == [idb]  # each home holds its own session
    assert sum(e.stage == "done" for e in events["a"]) == sum(e.stage == "done" for e in events["b"]) == 1


def test_repair_budget_comes_from_settings_env_and_arguments(monkeypatch):
    from ditflow.config import Settings

    assert Session(pipeline=None, persist=False)._runtime().max_repairs == Settings.load().max_repairs == 2
    monkeypatch.setenv("DITFLOW_MAX_REPAIRS", "5")
    assert Session(persist=False)._runtime().max_repairs == 5
    assert Session(persist=False, max_repairs=0)._runtime().max_repairs == 0  # an argument beats the environment
    with pytest.raises(ValueError, match="max_repairs"):
        Settings.load(max_repairs=-1)


def test_an_unclosed_temporary_session_leaves_no_folder_behind():
    import gc
    from pathlib import Path

    s = Session(pipeline=None, persist=False)
    folder = Path(s.store.home)
    assert folder.is_dir() and folder.name.startswith("ditflow-session-")
    del s  # never closed: the folder's finalizer removes it once the session is collected
    gc.collect()
    assert not folder.exists()
    with Session(pipeline=None, persist=False) as s:
        folder = Path(s.store.home)
    assert not folder.exists()  # close() removes it at once

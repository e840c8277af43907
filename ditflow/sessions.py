"""The session store: one folder per conversation under `<home>/sessions/`, written so that a crash or a Ctrl-C
at any moment leaves every file either old or new, never half-written.

    <home>/sessions/<id>/
        session.json         SessionMeta: model, llm, title, the active turns
        checkpoints.sqlite   langgraph's checkpoints for this conversation (thread id = session id)
        attachments/         copies of attached input images, so a session survives the originals moving
        turns/0001/          one folder per turn: 0001.png ..., turn.json (TurnRecord)

    >>> import tempfile
    >>> store = SessionStore(tempfile.mkdtemp())
    >>> meta = store.create(model="tiny", llm="rules")
    >>> [m.id for m in store.list()] == [meta.id]
    True
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ditflow.schemas import SafeId, TurnRecord, check_id

SESSIONS = "sessions"
META = "session.json"
TURN_RECORD = "turn.json"
CHECKPOINTS = "checkpoints.sqlite"


# ----------------------------------------------------------------------------- atomic writes
def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, written atomically by `ditflow.images.write_atomic`."""
    from ditflow.images import write_atomic

    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, obj: BaseModel | Any) -> Path:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    from ditflow.images import write_atomic

    with open(src, "rb") as f_in:
        return write_atomic(dst, lambda f: shutil.copyfileobj(f_in, f))


# ----------------------------------------------------------------------------- the store
def new_session_id() -> str:
    """Sortable by creation time, unique without coordination: 20250101-120000-3f9a1c."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class SessionMeta(BaseModel):
    id: SafeId
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    title: str = ""
    model: str = "builtin"
    llm: str = "rules"
    turns: list[int] = Field(default_factory=list, description="active turn folders, oldest first (undo pops)")
    next_turn: int = Field(1, ge=1, description="folder numbers are never reused, so undo never clashes")


class SessionStore:
    """Folders of sessions under `home`. Stateless apart from the path: two stores on one home agree."""

    def __init__(self, home: str | os.PathLike):
        self.home = Path(home).expanduser()
        self.root = self.home / SESSIONS

    def dir(self, session_id: str) -> Path:
        return self.root / check_id(session_id)

    def exists(self, session_id: str) -> bool:
        return (self.dir(session_id) / META).is_file()

    def create(self, *, model: str, llm: str, session_id: str | None = None) -> SessionMeta:
        meta = SessionMeta(id=session_id or new_session_id(), model=model, llm=llm)
        if self.exists(meta.id):
            raise ValueError(f"session {meta.id!r} already exists in {self.root}; load it or pick another id")
        self.save(meta)
        return meta

    def save(self, meta: SessionMeta) -> None:
        meta.updated = time.time()
        write_json_atomic(self.dir(meta.id) / META, meta)

    def load(self, session_id: str) -> SessionMeta:
        path = self.dir(session_id) / META
        if not path.is_file():
            known = ", ".join(m.id for m in self.list()[:5]) or "none yet"
            raise ValueError(f"no session {session_id!r} in {self.root} (recent: {known})")
        return SessionMeta.model_validate_json(path.read_text(encoding="utf-8"))

    def list(self) -> list[SessionMeta]:
        """All readable sessions, most recently updated first; unreadable folders are skipped, not fatal."""
        metas = []
        for path in self.root.glob(f"*/{META}"):
            try:
                metas.append(SessionMeta.model_validate_json(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(metas, key=lambda m: m.updated, reverse=True)

    def latest(self) -> SessionMeta | None:
        metas = self.list()
        return metas[0] if metas else None

    def delete(self, session_id: str) -> None:
        shutil.rmtree(self.dir(session_id), ignore_errors=True)

    # turns ------------------------------------------------------------------
    def turn_dir(self, session_id: str, n: int) -> Path:
        return self.dir(session_id) / "turns" / f"{n:04d}"

    def attachments_dir(self, session_id: str) -> Path:
        return self.dir(session_id) / "attachments"

    def checkpoint_path(self, session_id: str) -> Path:
        return self.dir(session_id) / CHECKPOINTS

    def write_turn(self, session_id: str, n: int, record: TurnRecord) -> Path:
        return write_json_atomic(self.turn_dir(session_id, n) / TURN_RECORD, record)

    def read_turn(self, session_id: str, n: int) -> TurnRecord:
        path = self.turn_dir(session_id, n) / TURN_RECORD
        return TurnRecord.model_validate_json(path.read_text(encoding="utf-8"))

"""`ditflow chat`: a terminal session over `ditflow.Session`.

prompt_toolkit reads input (persistent history in `<home>/chat_history`), rich prints, a live bar follows every
denoising loop, and finished images show inline: kitty or sixel graphics where the terminal answers for them
(textual-image), half-block characters elsewhere. Sessions live in the session store and survive restarts.
Ctrl-C during a turn cancels it at the next denoising step and keeps the session; Ctrl-C twice stops at once.
Ctrl-C anywhere else (at the prompt, in a slash command, between the two) never ends the chat; /exit or Ctrl-D do.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from prompt_toolkit.input.typeahead import clear_typeahead
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from ditflow.api import Session, Turn, TurnCancelled
from ditflow.progress import RichProgress
from ditflow.schemas import CLARIFY, one_line

PROMPT = "you › "
READY = "ready"  # printed once the prompt is about to appear; tests and the latency bench wait for it
WORKING = "working…"  # the first feedback after Enter, printed before anything slow happens
COMMANDS = {
    "/help": "this list",
    "/new": "start a new conversation (the model stays loaded)",
    "/sessions": "list stored sessions",
    "/load ID": "continue a stored session",
    "/history": "the turns of this conversation",
    "/images": "show the last turn's images",
    "/save DIR": "save the last turn's images, plan, article and manifest to DIR",
    "/model [NAME]": "show or switch the model (builtin, tiny, a folder, a hub id)",
    "/llm [SPEC]": "show or switch the LLM backend (rules, local, parser, openai, http://host/v1)",
    "/accelerate [SETTING]": "show or switch acceleration (off, auto, stitch[=F], local[=R|student|FILE])",
    "/undo": "drop the last turn",
    "/attach PATH": "attach an image to the next message (repeat for several)",
    "/exit": "leave (Ctrl-D too)",
}


# ----------------------------------------------------------------------------- image previews
def preview_renderable(path: Path, mode: str, width: int):
    """A rich renderable for one image: kitty (TGP) or sixel graphics when asked for or detected, else
    half-block characters (two pixels per cell, one in the foreground and one in the background colour)."""
    if mode == "none":
        return None
    from PIL import Image
    from textual_image import renderable as ti  # its import asks the terminal once which graphics it speaks

    kind = {"kitty": ti.TGPImage, "sixel": ti.SixelImage, "blocks": ti.HalfcellImage}.get(mode, ti.Image)
    if kind is ti.UnicodeImage:  # not a terminal (piped): half blocks still read well in a captured pane
        kind = ti.HalfcellImage
    with Image.open(path) as im:  # a cell is about twice as tall as wide: half as many rows keeps the aspect
        rows = max(1, round(width * im.height / (2 * im.width)))
    return kind(str(path), width=width, height=rows)


# ----------------------------------------------------------------------------- the chat loop
class Chat:
    def __init__(self, session: Session, console: Console, preview: str = "auto", preview_width: int = 32):
        self.session = session
        self.console = console
        self.preview = preview
        self.preview_width = preview_width
        self._interrupts = 0
        self.failures = 0  # turns that ended in an error: a piped script's exit status

    # output helpers ------------------------------------------------------------
    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False)

    def show_images(self, turn: Turn) -> None:
        grid = Table.grid(padding=(0, 2))
        cells, names = [], []
        paths = turn.image_paths
        width = max(8, min(self.preview_width, (self.console.width - 2 * (len(paths) - 1)) // max(1, len(paths))))
        for path in paths:
            try:
                cells.append(preview_renderable(path, self.preview, width))
            except Exception as e:  # a preview is a nicety; never lose the turn over it
                cells.append(f"(no preview: {e})")
            names.append(path.name)
        if any(c is not None for c in cells):
            for _ in cells:
                grid.add_column()
            grid.add_row(*cells)
            grid.add_row(*names)
            self.console.print(grid)
        for path in turn.image_paths:
            self.say(f"  {path}", "dim")

    def show_turn(self, turn: Turn) -> None:
        r = turn.record
        for note in r.notes:
            self.say(f"note: {note}", "dim")
        if r.turn == 0:  # "undo" typed as a message: nothing was generated
            self.say(f"error: {r.error}" if r.error else f"undone; {len(self.session.meta.turns)} turn(s) left",
                     "red" if r.error else None)
            return
        if r.parsed and r.parsed.clarification:
            self.say(f"agents: {r.parsed.clarification}", "yellow")
        if r.plan:
            steps = ", ".join(f"{s.tool}→{','.join(map(str, s.outputs))}" for s in r.plan.steps)
            self.say(f"plan: {steps}", "cyan")
        if turn.image_paths:
            self.show_images(turn)
        if r.article_markdown:
            self.console.print(Markdown(r.article_markdown))
        from ditflow.agents.verify import summary

        for o in sorted({a.output for a in r.repairs}):  # what verification changed, and what it could not
            tried = [a for a in r.repairs if a.output == o]
            used = next((a for a in tried if a.chosen), None)
            self.say(f"repaired output {o}: {', '.join(a.repair for a in tried)}"
                     + (f"; repair {used.attempt} kept" if used else "; the original kept"), "cyan")
        for v in r.verdicts:  # failed, unverified ("verifier timed out") or not checkable: say which, and why
            if not v.passed:
                self.say(f"verifier: output {v.output}: {summary(v)}", "yellow")
        if r.error and not (r.error.startswith(CLARIFY) and r.parsed and r.parsed.clarification):  # asked above
            self.say(f"error: {r.error}", "red")
        self.say(f"turn {r.turn} done in {r.timings.total_s:.1f}s · {len(r.images)} image(s)", "green")

    # a turn --------------------------------------------------------------------
    def turn(self, text: str) -> None:
        self.say(WORKING, "dim")
        self._interrupts = 0
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            with RichProgress(console=self.console, transient=True) as show:
                turn = self.session.chat(text, on_progress=show)
        except (TurnCancelled, KeyboardInterrupt):
            self.say("cancelled; the session is as it was before this message", "yellow")
            return
        except ValueError as e:  # bad input: the message says what to change
            self.failures += 1
            self.say(f"error: {e}", "red")
            return
        except Exception as e:  # keep the session alive whatever a turn does
            self.failures += 1
            self.say(f"error: {type(e).__name__}: {e}", "red")
            return
        finally:
            signal.signal(signal.SIGINT, previous)
        self.failures += bool(turn.record.error)
        self.show_turn(turn)

    def _on_sigint(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.session.cancel()
            self.say("cancelling at the next step… (Ctrl-C again to stop now)", "yellow")
        else:
            raise KeyboardInterrupt

    # slash commands ------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        try:
            name, *args = shlex.split(line)
        except ValueError as e:
            self.say(f"error: {e}", "red")
            return True
        s = self.session
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            table = Table(show_header=False, box=None)
            for cmd, text in COMMANDS.items():
                table.add_row(cmd, text)
            self.console.print(table)
            self.say("anything else is an instruction, e.g. 'a four-page picture book about a red circle'")
        elif name == "/new":
            s.new()
            self.say("new conversation")
        elif name == "/sessions":
            metas = s.sessions()
            if not metas:
                self.say("no stored sessions yet")
            table = Table("id", "turns", "updated", "title", box=None)
            for m in metas[:30]:
                mark = "*" if m.id == s.id else ""
                table.add_row(m.id + mark, str(len(m.turns)), time.strftime("%Y-%m-%d %H:%M", time.localtime(m.updated)),
                              m.title[:40])
            if metas:
                self.console.print(table)
        elif name == "/load":
            if len(args) != 1:
                self.say("usage: /load ID (see /sessions)", "red")
            else:
                meta = s.load(args[0])
                self.say(f"loaded session {meta.id}: {len(meta.turns)} turn(s), model {meta.model}, llm {meta.llm}")
        elif name == "/history":
            turns = s.history
            if not turns:
                self.say("no turns yet in this conversation")
            for t in turns:
                status = "error" if t.record.error else f"{len(t.record.images)} image(s)"
                self.say(f"{t.record.turn:>3}  {t.record.instruction[:70]}  [{status}]")
        elif name == "/images":
            last = s.last
            if last is None:
                self.say("no images yet")
            else:
                self.show_images(last)
        elif name == "/save":
            last = s.last
            if len(args) != 1:
                self.say("usage: /save DIR", "red")
            elif last is None:
                self.say("nothing to save yet", "red")
            else:
                manifest = last.save(Path(args[0]).expanduser(), settings=s.settings)
                self.say(f"saved {len(last.record.images)} image(s) and {manifest.name} to {manifest.parent}")
        elif name == "/model":
            if args:
                try:
                    s.set_model(args[0])  # checked as named: an unknown model never reaches a turn
                except ValueError as e:
                    self.say(f"error: {one_line(e)}", "red")
                    return True
                self.say(f"model: {args[0]} (loads with the next turn)")
                self._warm_up()
            else:
                self.say(f"model: {s.settings.model}")
        elif name == "/accelerate":
            if args:
                try:
                    s.set_accelerate(" ".join(args))  # checked as set: a bad setting never reaches a turn
                except ValueError as e:
                    self.say(f"error: {one_line(e)}", "red")
                    return True
            self.say(f"accelerate: {s.settings.accelerate}" + (" (from the next turn)" if args else ""))
        elif name == "/llm":
            if args:
                s.set_llm(args[0])
            self.say(f"llm: {s.settings.llm}")
        elif name == "/undo":
            s.undo()
            self.say(f"undone; {len(s.meta.turns)} turn(s) left")
        elif name == "/attach":
            if not args:
                self.say("usage: /attach PATH [PATH ...]", "red")
            for a in args:
                path = s.attach(a)
                self.say(f"attached {path.name} as image {len(s.attachments)}")
        else:
            self.say(f"unknown command {name}; /help lists them", "red")
        return True

    # the loop ------------------------------------------------------------------
    def _warm_up(self) -> None:
        def work():
            try:
                self.session.warm_up()
            except BaseException:
                pass  # surfaces, with its message, when a turn needs the model

        threading.Thread(target=work, name="ditflow-warm-up", daemon=True).start()

    def _step(self, prompt) -> bool:
        """Read one line and act on it; False means leave."""
        s = self.session
        tag = f"[+{len(s.attachments)} image(s)] " if s.attachments else ""
        try:
            # the prompt reads Ctrl-C as a key; a SIGINT (sent while the terminal is not in raw mode, as the prompt
            # opens or closes) goes to the handler below, not into prompt_toolkit's event loop
            line = prompt.prompt(tag + PROMPT, handle_sigint=False).strip()
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            return True
        return self.handle(line)

    def handle(self, line: str) -> bool:
        """Act on one line: a slash command or an instruction; False means leave."""
        if not line:
            return True
        if line.startswith("/"):
            self._in_command = True
            try:
                return self.command(line)
            except ValueError as e:
                self.say(f"error: {e}", "red")
                return True
            finally:
                self._in_command = False
        self.turn(line)
        return True

    def _on_sigint_between_prompts(self, signum, frame) -> None:
        # Ctrl-C stops a slash command that is running. In the moments before and after the prompt holds the
        # terminal there is nothing to stop, and raising would tear through prompt_toolkit's event loop as it
        # starts or closes. Either way the keys typed ahead go, as in a shell: the terminal drops those it still
        # holds, and this drops those the last prompt read past its Enter.
        clear_typeahead(self._prompt.input)
        if self._in_command:
            raise KeyboardInterrupt

    def loop(self, history_file: Path) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        history_file.parent.mkdir(parents=True, exist_ok=True)
        prompt = PromptSession(history=FileHistory(str(history_file)))
        s = self.session
        where = f"session {s.id}" if s.id else "new session"
        self.say(f"ditflow chat · {where} · model {s.settings.model} · llm {s.settings.llm} · /help for commands",
                 "bold")
        if self.preview == "auto":
            try:  # ask the terminal which graphics it speaks now, before the prompt owns stdin
                import textual_image.renderable  # noqa: F401
            except Exception:
                self.preview = "blocks"
        self._warm_up()
        self.say(READY, "dim")
        self._prompt, self._in_command = prompt, False
        previous = signal.signal(signal.SIGINT, self._on_sigint_between_prompts)  # a turn sets its own
        try:
            while True:
                try:
                    if not self._step(prompt):
                        break
                except KeyboardInterrupt:  # a slash command was stopped; the chat goes on, as a shell's would
                    self.say("interrupted", "yellow")
                except EOFError:
                    break
        finally:
            signal.signal(signal.SIGINT, previous)
        self.say("bye")
        return 0

    def replay(self, lines) -> int:
        """Piped input (`ditflow chat < script.txt`): each line is read as if typed, with no prompt to own the
        terminal; the exit status is 1 when a turn ended in an error."""
        self.preview = "none" if self.preview == "auto" else self.preview
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            self.say(PROMPT + line, "bold")
            if not self.handle(line):
                break
        self.say("bye")
        return 1 if self.failures else 0


def cli(argv: list[str], command: str = "chat") -> int:
    from ditflow.cli.run import add_engine_args

    examples = ("examples:\n"
                "  ditflow chat                          # a new conversation; /help lists the commands\n"
                "  ditflow chat -c                       # continue the latest one\n"
                "  ditflow chat --llm http://127.0.0.1:8000/v1 --model black-forest-labs/FLUX.1-schnell --device cuda\n"
                "  printf 'a red circle\\nmake it blue\\n' | ditflow chat   # piped: each line as if typed\n")
    p = argparse.ArgumentParser(prog=f"ditflow {command}", description=__doc__.splitlines()[0], epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--session", help="continue this stored session")
    p.add_argument("-c", "--continue", dest="cont", action="store_true", help="continue the latest session")
    p.add_argument("--home", type=Path, help="session store (default $DITFLOW_HOME or ~/.local/share/ditflow)")
    p.add_argument("--preview", choices=["auto", "kitty", "sixel", "blocks", "none"], help="inline image previews")
    add_engine_args(p)
    args = p.parse_args(argv)
    session = Session(model=args.model, llm=args.llm, seed=args.seed, device=args.device, dtype=args.dtype,
                      verify=args.verify, max_repairs=args.max_repairs, accelerate=args.accelerate, home=args.home)
    if args.session:
        session.load(args.session)
    elif args.cont and (latest := session.store.latest()):
        session.load(latest.id)
    console = Console(highlight=False)
    preview = args.preview or session.settings.preview
    with session:
        chat = Chat(session, console, preview)
        if not sys.stdin.isatty():  # a script piped in: every line as if typed
            return chat.replay(sys.stdin)
        return chat.loop(session.settings.home / "chat_history")

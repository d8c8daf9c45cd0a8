"""In-flight batched decoding of speech tokens: many tasks share one static-cache LM.

`DecodingTask(lm, special, options).run(requests)` generates every request's pieces and
returns one `LmResult` per request, in order. Each request is one task: its text pieces,
its prompt and its seed. A task's pieces run in order (each piece's prompt holds the
earlier pieces' tokens, pruned by `prune_prompt_history` exactly as
`SpeechLM.generate_long` does), so a task occupies at most one row at a time. Rows of
different tasks decode together; a row that stops frees its slot and the next piece (or
the next task) is prefilled into it at the next step, without waiting for the others.

Why a task's tokens never depend on its batch-mates (CPU, fp32):

- every row keeps its own min/max length, stop state, RAS history and its own
  `torch.Generator`, seeded with the task seed at the start of every piece (as
  `generate_long` re-seeds), and samples with the same calls on a (1, V) row as a batch-1
  run, so nobody else's draws shift its random stream;
- the model computes each row's numbers independently of the other rows (see
  `model.py`: exact per-row attention, projections always on >= `min_rows` rows, or
  each row apart).

Host syncs: one read-back of the sampled tokens (B ints) per step (`DecodingCounters`).

On CUDA, decode steps replay CUDA graphs of `decode_static` per bucket of slots (masked
attention over the whole cache, one product for the bucket's rows: equal to the CPU path
within float tolerance, not bit for bit, and cuBLAS may round differently per bucket
size). Sampling stays per row from each row's generator (B small launches per step); a
vectorised sampler with counter-based per-row noise would be faster at large B.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from glmtts_batch.glmtts.llm import (
    PROMPT_HISTORY_LIMIT,
    GenerationOptions,
    GenerationStats,
    PromptHistoryEntry,
    build_input_ids,
    check_special,
    flatten_prompt_history,
    prune_prompt_history,
    reference_piece,
)
from glmtts_batch.glmtts.model import SpeechLlama
from glmtts_batch.glmtts.reference_sampling import audio_only_logits
from glmtts_batch.glmtts.sampling import ras_sample, topk_sample


@dataclass(frozen=True)
class LmRequest:
    """One task for the LM: its text pieces (token ids), its prompt and its seed."""

    pieces_text_ids: Sequence[Sequence[int]]
    prompt_text_ids: Sequence[int]
    prompt_speech_tokens: Sequence[int]  # offsets from ats
    seed: int
    prompt_cache: bool = True
    history_limit: int = PROMPT_HISTORY_LIMIT


@dataclass
class LmResult:
    tokens: list[list[int]] = field(default_factory=list)  # per piece, offsets from ats
    stats: list[GenerationStats] = field(default_factory=list)  # per piece; seconds = wall time in flight
    error: ValueError | None = None  # bad input (e.g. a prompt token out of range): only this task stops


@dataclass
class DecodingCounters:
    """What one `DecodingTask.run` did (for benchmarks and tests)."""

    decode_steps: int = 0
    prefills: int = 0  # prefill calls; each admits one or more rows
    prefilled_rows: int = 0
    host_syncs: int = 0  # explicit read-backs: one per prefill and one per decode step
    max_live_rows: int = 0
    tokens: int = 0


@dataclass
class _Task:
    request: LmRequest
    history: list[PromptHistoryEntry]
    result: LmResult = field(default_factory=LmResult)
    next_piece: int = 0
    running: bool = False

    @property
    def waiting(self) -> bool:
        return not self.running and self.next_piece < len(self.request.pieces_text_ids)


@dataclass
class _Row:
    """One piece in flight in one cache slot."""

    task: _Task
    slot: int
    prompt_len: int
    min_len: int
    steps: int
    generator: torch.Generator
    out: Tensor  # (1, max(steps, 1)) int64, as SpeechLM.generate keeps it
    started: float
    step: int = 0  # tokens sampled so far (== position offset after the prompt)
    n_out: int = 0
    fallbacks: int = 0
    stop_reason: Literal["eoa", "max_len", "forced"] = "max_len"

    @property
    def next_position(self) -> int:
        return self.prompt_len + self.step - 1


class DecodingTask:
    """Runs requests through `lm` with up to `max_batch` rows in flight.

    `max_seq` is the initial cache length; the cache grows when a piece needs more.
    On CUDA decode steps replay CUDA graphs (`CudaGraphDecoder`); CPU never touches them.
    """

    def __init__(
        self,
        lm: SpeechLlama,
        special,
        options: GenerationOptions | None = None,
        *,
        max_batch: int = 16,
        max_seq: int = 1024,
        cuda_graphs: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        check_special(special, lm.config.vocab_size)
        self.lm, self.special, self.max_batch = lm, special, max_batch
        self.options = options or GenerationOptions()
        self.stop_index = special.ate - special.ats + 1  # eoa's column in candidate_logits
        use_graphs = cuda_graphs and lm.device.type == "cuda"
        slots = CudaGraphDecoder.bucket(max_batch - 1) if use_graphs else max_batch  # a graph spans its bucket
        if lm.max_slots < slots or lm.max_seq < max_seq:
            lm.setup_cache(max(slots, lm.max_slots), max(max_seq, lm.max_seq))
        # Graphs live on the model between runs (an engine call is one run): capturing a
        # bucket costs more than many steps. `setup_cache` drops them with the old cache.
        if use_graphs and lm.graph_decoder is None:
            lm.graph_decoder = CudaGraphDecoder(lm)
        self.graphs = lm.graph_decoder if use_graphs else None
        self.counters = DecodingCounters()

    @torch.inference_mode()
    def run(self, requests: Sequence[LmRequest]) -> list[LmResult]:
        tasks = [
            _Task(r, [PromptHistoryEntry(tuple(r.prompt_text_ids), tuple(r.prompt_speech_tokens))]) for r in requests
        ]
        rows: dict[int, _Row] = {}  # slot -> row
        self.counters = DecodingCounters()
        while True:
            self._admit(tasks, rows)
            if not rows:
                return [t.result for t in tasks]
            live = [rows[s] for s in sorted(rows)]
            self.counters.decode_steps += 1
            self.counters.max_live_rows = max(self.counters.max_live_rows, len(live))
            self._sample(live, self._decode(live), rows)

    # ------------------------------------------------------------------ admission

    def _admit(self, tasks: list[_Task], rows: dict[int, _Row]) -> None:
        """Start the next piece of waiting tasks (in request order) in free slots; prefill them."""
        free = [s for s in range(self.max_batch) if s not in rows]
        started: list[tuple[_Row, list[int]]] = []
        for task in tasks:
            while free and task.waiting:
                try:
                    begun = self._start_piece(task, free[0])
                except ValueError as exc:  # this task's input; its batch-mates go on
                    task.result.error = exc
                    task.next_piece = len(task.request.pieces_text_ids)
                    task.running = False
                    break
                if begun is not None:
                    started.append(begun)
                    free.pop(0)
        if started:
            for row, _ in started:
                rows[row.slot] = row
            self.counters.prefills += 1
            self.counters.prefilled_rows += len(started)
            hidden = self.lm.prefill([ids for _, ids in started], [row.slot for row, _ in started])  # (R, D)
            self._sample([row for row, _ in started], hidden, rows)

    def _start_piece(self, task: _Task, slot: int) -> tuple[_Row, list[int]] | None:
        """The piece's row and prompt ids; None (and the piece recorded) if it generates nothing."""
        request, options = task.request, self.options
        text_ids = list(request.pieces_text_ids[task.next_piece])
        if request.prompt_cache:
            task.history = prune_prompt_history(task.history, len(text_ids), limit=request.history_limit)
            p_text, p_speech = flatten_prompt_history(task.history)
        else:
            p_text, p_speech = list(request.prompt_text_ids), list(request.prompt_speech_tokens)
        ids = build_input_ids(text_ids, p_text, p_speech, self.special)
        if options.force_tokens is not None:
            steps = min_len = options.force_tokens
        else:
            min_len = int(len(text_ids) * options.min_token_text_ratio)
            steps = int(len(text_ids) * options.max_token_text_ratio)
        generator = torch.Generator(device=self.lm.device).manual_seed(request.seed)
        out = torch.zeros(1, max(steps, 1), dtype=torch.long, device=self.lm.device)
        reason: Literal["forced", "max_len"] = "forced" if options.force_tokens is not None else "max_len"
        row = _Row(task, slot, len(ids), min_len, steps, generator, out, time.perf_counter(), stop_reason=reason)
        task.running = True
        if steps == 0:
            self._finish(row, None)
            return None
        if len(ids) + steps > self.lm.max_seq:
            self.lm.grow_cache(max(len(ids) + steps, 2 * self.lm.max_seq))
            if self.graphs is not None:
                self.graphs.graphs.clear()  # they hold the old cache tensors
                self.lm.graph_decoder = self.graphs
        return row, ids

    # ------------------------------------------------------------------ one step

    def _decode(self, live: list[_Row]) -> Tensor:
        """Feed each row its last token -> hidden (n, D), rows in `live` order."""
        last = torch.cat([row.out[:, row.step - 1] for row in live]) + self.special.ats  # (n,)
        if self.graphs is None:
            return self.lm.decode(last, [r.slot for r in live], [r.next_position for r in live])
        return self.graphs.step(last, [r.slot for r in live], [r.next_position for r in live])

    def _sample(self, live: list[_Row], hidden: Tensor, rows: dict[int, _Row]) -> None:
        """Draw one token per row from its own generator, then one read-back for all rows."""
        s = self.special
        scores = self.lm.candidate_logits(hidden, s.ats, s.ate, s.eoa)  # (n, V') float32
        drawn = [self._draw(row, scores[k : k + 1]) for k, row in enumerate(live)]  # (1,) + (1,) each
        values = torch.stack([torch.cat(d) for d in drawn]).tolist()  # the step's one host sync
        self.counters.host_syncs += 1
        for row, (token, fell_back), (token_t, _) in zip(live, values, drawn):
            row.fallbacks += fell_back
            if row.step >= row.min_len and token == self.stop_index:
                row.stop_reason = "eoa"
                self._finish(row, rows)
                continue
            row.out[:, row.step] = token_t
            row.step = row.n_out = row.step + 1
            self.counters.tokens += 1
            if row.step == row.steps:
                self._finish(row, rows)

    def _draw(self, row: _Row, scores: Tensor) -> tuple[Tensor, Tensor]:
        """scores (1, V') -> (token (1,), fell_back (1,) int64): SpeechLM.generate's step."""
        options, i = self.options, row.step
        may_stop = i >= row.min_len
        if options.sample_method == "ras":
            if not may_stop:
                scores[:, self.stop_index] = float("-inf")
            history = row.out[:, max(0, i - options.ras.win_size) : i]
            token, fell_back = ras_sample(scores, history, params=options.ras, generator=row.generator)
            return token, fell_back.long()
        exclude = None if may_stop else self.stop_index
        token = topk_sample(scores, k=options.top_k, exclude=exclude, generator=row.generator)
        return token, torch.zeros_like(token)

    def _finish(self, row: _Row, rows: dict[int, _Row] | None) -> None:
        task, tokens = row.task, row.out[0, : row.n_out].tolist()
        text_ids = tuple(task.request.pieces_text_ids[task.next_piece])
        task.result.tokens.append(tokens)
        task.result.stats.append(
            GenerationStats(
                row.prompt_len, row.n_out, time.perf_counter() - row.started, row.stop_reason, row.fallbacks
            )
        )
        task.history.append(PromptHistoryEntry(text_ids, tuple(tokens)))
        task.next_piece += 1
        task.running = False
        if rows is not None:
            del rows[row.slot]


def generate_many(
    lm: SpeechLlama, requests: Sequence[LmRequest], special, options: GenerationOptions | None = None, **kw
) -> list[LmResult]:
    """One call for the engine: every request's pieces, batched in flight."""
    return DecodingTask(lm, special, options, **kw).run(requests)


def generate_upstream(lm: SpeechLlama, request: LmRequest, special, options: GenerationOptions) -> LmResult:
    """One task at batch 1 with upstream's random-number use (`--sampling-rng upstream`).

    `reference_sampling.generate_reference` drives `lm` through slot 0 of its static cache;
    the pieces and their prompt history follow `DecodingTask` (and `generate_long`). With
    `lm.rows_apart` on the CPU the numbers are those of transformers' batch-1 path, so a
    seed gives upstream's tokens.
    """
    check_special(special, lm.config.vocab_size)
    result = LmResult()
    history = [PromptHistoryEntry(tuple(request.prompt_text_ids), tuple(request.prompt_speech_tokens))]
    for text_ids in request.pieces_text_ids:
        if request.prompt_cache:
            history = prune_prompt_history(history, len(text_ids), limit=request.history_limit)
            p_text, p_speech = flatten_prompt_history(history)
        else:
            p_text, p_speech = list(request.prompt_text_ids), list(request.prompt_speech_tokens)
        try:
            ids = build_input_ids(text_ids, p_text, p_speech, special)
        except ValueError as exc:
            result.error = exc
            return result
        tokens, stats = _upstream_piece(lm, ids, len(text_ids), request.seed, special, options)
        history.append(PromptHistoryEntry(tuple(text_ids), tuple(tokens)))
        result.tokens.append(tokens)
        result.stats.append(stats)
    return result


def _upstream_piece(
    lm: SpeechLlama, ids: list[int], n_text: int, seed: int, special, options: GenerationOptions
) -> tuple[list[int], GenerationStats]:
    if options.force_tokens is not None:
        steps = min_len = options.force_tokens
    else:
        min_len, steps = int(n_text * options.min_token_text_ratio), int(n_text * options.max_token_text_ratio)
    if not lm.max_slots:
        lm.setup_cache(1, max(1024, len(ids) + steps))
    lm.grow_cache(len(ids) + steps)
    cached = 0  # positions of slot 0 holding this piece's keys

    def step(new_ids: Sequence[int]) -> Tensor:  # -> (V,) float32 logits
        nonlocal cached
        if cached == 0:
            hidden = lm.prefill([list(new_ids)], [0])  # (1, D)
        else:
            hidden = lm.decode(torch.tensor(list(new_ids), device=lm.device), [0], [cached])
        cached += len(new_ids)
        scores = lm.candidate_logits(hidden, special.ats, special.ate, special.eoa)[0]
        return audio_only_logits(scores, lm.config.vocab_size, ats=special.ats, ate=special.ate, eoa=special.eoa)

    started = time.perf_counter()
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    with torch.inference_mode():
        return reference_piece(step, ids, special, options, min_len, steps, generator, started)


class CudaGraphDecoder:
    """`SpeechLlama.decode_static` captured as one CUDA graph per bucket of slots.

    CUDA only. A step runs over slots [0, S) with S the smallest bucket holding the
    highest live slot (admission fills the lowest free slot, so S stays small); rows of
    free slots compute on dummy inputs and write only their own free slots.
    """

    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self, lm: SpeechLlama) -> None:
        if lm.device.type != "cuda":
            raise ValueError("CudaGraphDecoder needs a CUDA model")
        self.lm = lm
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    @classmethod
    def bucket(cls, highest_slot: int) -> int:
        """The number of slots a step runs over when `highest_slot` is live."""
        return next((b for b in cls.BUCKETS if b > highest_slot), highest_slot + 1)

    def step(self, ids: Tensor, slots: Sequence[int], positions: Sequence[int]) -> Tensor:
        """ids (n,) for `slots` at `positions` -> hidden (n, D) in the same order."""
        size = self.bucket(max(slots))
        graph, static_ids, static_pos, static_out = self.graphs.get(size) or self._capture(size)
        index = torch.tensor(list(slots), device=ids.device)
        static_ids.zero_()
        static_pos.zero_()
        static_ids[index] = ids
        static_pos[index] = torch.tensor(list(positions), device=ids.device)
        graph.replay()
        return static_out[index].clone()

    def _capture(self, size: int):
        device = self.lm.device
        static_ids = torch.zeros(size, dtype=torch.long, device=device)
        static_pos = torch.zeros(size, dtype=torch.long, device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph, as capture requires
                self.lm.decode_static(static_ids, static_pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.lm.decode_static(static_ids, static_pos)
        self.graphs[size] = (graph, static_ids, static_pos, static_out)
        return self.graphs[size]

"""Evolutionary search for the per-layer sizes (EvoPress's (1+λ) loop over compression levels).

Every schedule of :mod:`.schedule` is a formula that assumes a layer's cost grows with its own error alone.
EvoPress (Sieberling et al., ICML 2025) searches the per-layer levels directly, under a fixed total:

* **Parts and rungs.** Each decoder block has two parts, its attention and its FFN. A part's *ladder* holds the
  distinct sizes (*rungs*) that the level grid gives it after rounding to whole heads, KV groups and channels
  (:func:`plan_layer`, the rounding every schedule uses), ordered by the parameters they remove. Grid levels that
  round to the same size are one rung (its ``ratio`` is the smallest such level).
* **Candidates** are vectors of rung indices, one per part. Their removed parameters ``R`` must lie in the
  **budget band** ``T <= R <= T + s`` (:class:`Budget`): ``T = pruning_ratio · (block parameters)`` and ``s`` is
  the largest step between neighbouring rungs of any part. So a candidate removes at least what was asked and
  at most one step more: ``s`` is the granularity of the ladders (a narrower band may hold no candidate at all;
  when every rung is a multiple of one step ``s``, the band holds exactly one total), and no single step can
  jump over the band, which is what makes the repair below always land in it.
* **Level-switch mutation** (:func:`level_switch`): one random part one rung down (less pruning) or up; when
  that leaves the band, other random parts step the other way until it holds again (:func:`repair`), so a
  switch is one part down and another up, with the real parameter counts of their heads and channels. With
  equal steps (EvoPress's setting) the band holds one total and every switch keeps it exactly; with unequal
  steps a part may also move alone inside the band, which is how the search reaches the candidates that
  remove the least above ``T``.
* **Multi-step selection** (:func:`evolve`): the offspring are ranked on a cheap fitness first (few tokens), the
  best ``survivors[k]`` go on to the next, more expensive step, and the best of the last step replaces the parent
  only if it beats the parent on that step's fitness (so the parent's final fitness never rises).

Pure python: the fitness is a callable; nothing here knows about Hugging Face or tensors.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .schedule import LayerGeometry, plan_layer

__all__ = ["Rung", "PartLadder", "Budget", "build_ladders", "budget_for", "removed_params", "level_switch",
           "mutate", "repair", "nearest_candidate", "evolve", "EvolutionResult", "SearchOutOfTime", "brute_force",
           "profile_schedule"]

#: the parts of a block, in the order of a candidate vector (layer 0 attention, layer 0 FFN, layer 1 attention...)
PARTS = ("attention", "ffn")


@dataclass(frozen=True)
class Rung:
    """One size of a part. ``ratio``: the smallest grid level that gives it (``plan_layer(geom, ratio)`` for the
    attention, ``plan_layer(geom, 0, ffn_ratio=ratio)`` for the FFN reproduce it exactly); ``removed``: the
    parameters it removes from the block; ``heads``/``kv_heads``/``channels``: what the block keeps;
    ``options``: the equal-size ``(kv_heads, query_heads_per_kv)`` structures the head solver may choose from."""

    ratio: float
    removed: int
    heads: int
    kv_heads: int
    channels: int
    options: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class PartLadder:
    """The rungs of one part (``part``: ``"attention"`` or ``"ffn"``) of block ``layer``, by increasing
    ``removed``."""

    layer: int
    part: str
    rungs: tuple[Rung, ...]

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def steps(self) -> list[int]:
        return [b.removed - a.removed for a, b in zip(self.rungs, self.rungs[1:])]


@dataclass(frozen=True)
class Budget:
    """The budget band: a candidate is admissible when ``target <= removed <= target + width``.

    ``total``: the block parameters of the model; ``target``: ``pruning_ratio · total``; ``width``: the largest
    step between neighbouring rungs of any part (the ladders' granularity, see the module docstring).
    """

    total: int
    target: float
    width: float

    def contains(self, removed: int) -> bool:
        return self.low - 1e-9 <= removed <= self.high + 1e-9

    @property
    def low(self) -> float:
        return self.target

    @property
    def high(self) -> float:
        return self.target + self.width


def build_ladders(geoms: Sequence[LayerGeometry], levels: Sequence[float], *, prune_heads: bool = True,
                  prune_ffn: bool = True, min_heads: int = 1, min_channels: int = 1,
                  channel_multiple: int = 1) -> list[PartLadder]:
    """The ladders of every part (two per block: attention, FFN) for the grid ``levels`` (fractions of the part's
    parameters to remove), rounded as :func:`plan_layer` rounds every schedule. A part that is not pruned
    (``prune_heads``/``prune_ffn`` off) has one rung, its dense size."""
    levels = sorted({float(x) for x in levels})
    if not levels:
        raise ValueError("the level grid is empty: give at least one level (e.g. search_levels=[0.0, 0.1, ..., 0.9])")
    ladders: list[PartLadder] = []
    for i, g in enumerate(geoms):
        attn: dict[int, Rung] = {}
        ffn: dict[int, Rung] = {}
        for lv in levels:
            a = plan_layer(g, lv, prune_heads=prune_heads, prune_ffn=False, min_heads=min_heads)
            removed = g.attention_params - (a.heads * g.params_per_head + a.kv_heads * g.params_per_kv_head)
            attn.setdefault(removed, Rung(lv if prune_heads else 0.0, removed, a.heads, a.kv_heads, g.channels,
                                          tuple(tuple(o) for o in a.head_options)))
            f = plan_layer(g, 0.0, prune_heads=False, prune_ffn=prune_ffn, min_channels=min_channels,
                           channel_multiple=channel_multiple, ffn_ratio=lv)
            removed = (g.channels - f.channels) * g.params_per_channel
            ffn.setdefault(removed, Rung(lv if prune_ffn else 0.0, removed, g.num_heads, g.num_kv_heads, f.channels))
        for part, rungs in (("attention", attn), ("ffn", ffn)):
            ladders.append(PartLadder(i, part, tuple(rungs[k] for k in sorted(rungs))))
    return ladders


def budget_for(ladders: Sequence[PartLadder], total: int, pruning_ratio: float) -> Budget:
    """The :class:`Budget` of ``pruning_ratio`` over ``total`` block parameters for these ladders; raises
    ``ValueError`` when no candidate can meet it (the grid cannot remove that much, or removes too much at least)."""
    steps = [s for lad in ladders for s in lad.steps()]
    budget = Budget(total=int(total), target=pruning_ratio * total, width=max(steps, default=0))
    lo = sum(lad.rungs[0].removed for lad in ladders)
    hi = sum(lad.rungs[-1].removed for lad in ladders)
    if hi < budget.low - 1e-9 or lo > budget.high + 1e-9:
        grid = sorted({r.ratio for lad in ladders for r in lad.rungs})
        raise ValueError(
            f"pruning_ratio={pruning_ratio} cannot be met with the level grid {grid}: its candidates remove between "
            f"{lo / total:.4f} and {hi / total:.4f} of the block parameters, and the budget asks for "
            f"{budget.low / total:.4f} to {budget.high / total:.4f} (at most one step of a part above the ratio); add "
            "higher levels to search_levels (or lower ones, or level 0)")
    return budget


def removed_params(ladders: Sequence[PartLadder], x: Sequence[int]) -> int:
    """The block parameters candidate ``x`` removes."""
    return sum(lad.rungs[k].removed for lad, k in zip(ladders, x))


def _pick(rng: random.Random, parts: list[int], avoid: set[int]) -> int:
    preferred = [p for p in parts if p not in avoid]
    return rng.choice(preferred or parts)


def repair(x: list[int], ladders: Sequence[PartLadder], budget: Budget, rng: random.Random,
           avoid: Sequence[int] = ()) -> list[int]:
    """Step random parts (other than ``avoid`` while there are others) down while ``x`` removes more than
    ``budget.high``, then up while it removes less than ``budget.low``; returns ``x`` (changed in place), inside
    the band. A step moves at most ``budget.width``, so the step that crosses into the band cannot jump over it."""
    avoid = set(avoid)
    r = removed_params(ladders, x)
    while r > budget.high + 1e-9:
        down = [p for p in range(len(ladders)) if x[p] > 0]
        if not down:  # pragma: no cover - excluded by budget_for
            raise ValueError("the budget cannot be met: every part is at its lowest rung")
        p = _pick(rng, down, avoid)
        r -= ladders[p].rungs[x[p]].removed - ladders[p].rungs[x[p] - 1].removed
        x[p] -= 1
    while r < budget.low - 1e-9:
        up = [p for p, lad in enumerate(ladders) if x[p] < lad.top]
        if not up:  # pragma: no cover - excluded by budget_for
            raise ValueError("the budget cannot be met: every part is at its highest rung")
        p = _pick(rng, up, avoid)
        r += ladders[p].rungs[x[p] + 1].removed - ladders[p].rungs[x[p]].removed
        x[p] += 1
    return x


def level_switch(x: Sequence[int], ladders: Sequence[PartLadder], budget: Budget, rng: random.Random) -> tuple[int, ...]:
    """The level-switch mutation: one random part one rung down or up (equally likely), then :func:`repair`, which
    moves other parts the other way while the band is left (one step, the classic switch, when the steps are
    equal). The result is always inside the budget band."""
    x = list(x)
    down = [p for p in range(len(ladders)) if x[p] > 0]
    up = [p for p, lad in enumerate(ladders) if x[p] < lad.top]
    if not down and not up:
        return tuple(x)
    go_down = bool(down) and (not up or rng.random() < 0.5)
    a = rng.choice(down if go_down else up)
    x[a] += -1 if go_down else 1
    return tuple(repair(x, ladders, budget, rng, avoid=(a,)))


def mutate(x: Sequence[int], ladders: Sequence[PartLadder], budget: Budget, rng: random.Random,
           max_switches: int = 3) -> tuple[int, ...]:
    """An offspring of ``x``: ``min(U, U')`` level switches, ``U, U'`` uniform in ``1..max_switches`` (one switch
    most often, as in EvoPress); the budget band holds after every switch."""
    n = min(rng.randint(1, max_switches), rng.randint(1, max_switches))
    for _ in range(n):
        x = level_switch(x, ladders, budget, rng)
    return tuple(x)


def nearest_candidate(ladders: Sequence[PartLadder], removed: Sequence[float], budget: Budget,
                      rng: random.Random) -> tuple[int, ...]:
    """The candidate whose parts are at the rungs closest to ``removed`` (parameters per part, e.g. a fixed
    schedule's plan), repaired into the budget band."""
    x = [min(range(len(lad.rungs)), key=lambda k: (abs(lad.rungs[k].removed - want), k))
         for lad, want in zip(ladders, removed)]
    return tuple(repair(x, ladders, budget, rng))


def profile_schedule(ladders: Sequence[PartLadder], x: Sequence[int]) -> list[list[float]]:
    """The explicit per-layer schedule ``[[attention_ratio, ffn_ratio], ...]`` that reproduces candidate ``x``'s
    sizes (``PruningConfig.schedule`` accepts it; :func:`~.schedule.solve_schedule` rounds it to the same
    heads and channels)."""
    out: dict[int, list[float]] = {}
    for lad, k in zip(ladders, x):
        out.setdefault(lad.layer, [0.0, 0.0])[PARTS.index(lad.part)] = lad.rungs[k].ratio
    return [out[i] for i in sorted(out)]


class SearchOutOfTime(Exception):
    """Raised by a fitness callable (or :func:`evolve` itself) when the time budget is spent."""


@dataclass
class EvolutionResult:
    """The outcome of :func:`evolve`: ``best`` candidate and its final-step ``fitness``, the parent's final-step
    fitness after the start and after every completed generation (``history``, never rising), the
    ``generations`` completed, whether the time budget ended the search (``out_of_time``) and the start's
    fitness of every starting candidate (``starts``)."""

    best: tuple[int, ...]
    fitness: float
    history: list[float] = field(default_factory=list)
    generations: int = 0
    out_of_time: bool = False
    starts: list[float] = field(default_factory=list)
    accepted: int = 0


def evolve(starts: Sequence[Sequence[int]], fitness: Callable[[tuple[int, ...], int], float],
           ladders: Sequence[PartLadder], budget: Budget, *, generations: int, offspring: int,
           survivors: Sequence[int], seed: int, deadline: Optional[float] = None,
           on_generation: Optional[Callable[[int, float], None]] = None) -> EvolutionResult:
    """EvoPress's (1+λ) search with multi-step selection.

    Args:
        starts: Starting candidates (inside the band); the best of them on the last selection step is the first
            parent.
        fitness: ``fitness(candidate, step)``, lower is better; ``step`` indexes the selection steps
            (``len(survivors) + 1`` of them, cheapest first). It should cache what it has computed.
        generations / offspring: The number of generations and of offspring (λ) per generation.
        survivors: How many offspring go on from each step to the next (non-increasing, one entry per step but
            the last).
        seed: Seeds the mutations (the search is deterministic for a seed and a deterministic fitness).
        deadline: A ``time.monotonic()`` value; the generation running when it passes is abandoned and the best
            parent so far returned (``out_of_time=True``). ``fitness`` may also raise :class:`SearchOutOfTime`.
        on_generation: Called with ``(generation, parent fitness)`` after every completed generation.
    """
    rng = random.Random(seed)
    last = len(survivors)

    def timed_out() -> bool:
        return deadline is not None and time.monotonic() > deadline

    start_fit: list[float] = []
    try:
        for s in starts:
            if timed_out() and start_fit:
                raise SearchOutOfTime
            start_fit.append(fitness(tuple(s), last))
    except SearchOutOfTime:
        if not start_fit:
            raise
    j = min(range(len(start_fit)), key=lambda k: (start_fit[k], k))
    parent, pf = tuple(starts[j]), start_fit[j]
    result = EvolutionResult(parent, pf, history=[pf], starts=start_fit)
    for gen in range(generations):
        try:
            if timed_out():
                raise SearchOutOfTime
            pool: list[tuple[int, ...]] = []
            for _ in range(offspring):
                kid = mutate(parent, ladders, budget, rng)
                if kid != parent and kid not in pool:
                    pool.append(kid)
            for step in range(last + 1):
                if not pool:
                    break
                scores = []
                for kid in pool:
                    if timed_out():
                        raise SearchOutOfTime
                    scores.append(fitness(kid, step))
                order = sorted(range(len(pool)), key=lambda k: (scores[k], k))
                keep = survivors[step] if step < last else 1
                best_score = scores[order[0]]
                pool = [pool[k] for k in order[:keep]]
            if pool and best_score < pf:
                parent, pf = pool[0], best_score
                result.accepted += 1
        except SearchOutOfTime:
            result.out_of_time = True
            break
        result.history.append(pf)
        result.generations = gen + 1
        if on_generation is not None:
            on_generation(gen, pf)
    result.best, result.fitness = parent, pf
    return result


def brute_force(ladders: Sequence[PartLadder], budget: Budget, fitness: Callable[[tuple[int, ...]], float]
                ) -> tuple[tuple[int, ...], float, int]:
    """Every candidate inside the band, scored: ``(best, its fitness, how many)``. Exponential in the parts: for
    checking the search on tiny ladders only."""
    import itertools

    best, best_fit, n = None, math.inf, 0
    for x in itertools.product(*(range(len(lad.rungs)) for lad in ladders)):
        if budget.contains(removed_params(ladders, x)):
            n += 1
            f = fitness(x)
            if f < best_fit:
                best, best_fit = x, f
    if best is None:
        raise ValueError("no candidate meets the budget")
    return best, best_fit, n

"""Ground-truth circuits: RASP programs compiled to transformers with tracr.

tracr (Lindner et al., "Tracr: Compiled Transformers as a Laboratory for
Interpretability", NeurIPS 2023) compiles a RASP program (Weiss et al., "Thinking Like
Transformers", ICML 2021) into transformer weights whose residual stream is a direct sum
of labelled subspaces: each RASP variable owns the residual dimensions
``"<name>:<value>"`` (categorical) or ``"<name>"`` (numerical), plus hidden dimensions
``"<name>_..."`` its own computation uses. So for every variable we know exactly which
sublayer writes it, which sublayers read it, and which residual dimensions hold it: a
ground truth against which causalmad's alignment can be checked.

The compiled JAX model is converted to a TransformerLens ``TransformerBridge`` with
TransformerLens' own converter (``transformer_lens.utilities.tracr``) and checked against
the JAX model (same decoded outputs, same residual stream after every layer).

Programs (``PROGRAMS``), each with a reference hypothesis in ``hypotheses/tracr_programs.py``:

* ``detect-pattern``: ``lib.detect_pattern(tokens, "abc")`` with every intermediate named:
  ``is_a, is_b, is_c`` (token maps, MLP), ``prev_b = shift_by(1, is_b)``,
  ``prev2_a = shift_by(2, is_a)`` (attention), ``ab = prev2_a & prev_b``,
  ``abc = ab & is_c`` (MLPs). Read at the last position.
* ``count-less-freq``: ``lib.make_count_less_freq(1)``: ``hist`` (how often each token
  occurs, a selector width: attention + MLP) then ``n_rare``, the number of positions
  whose token occurs at most once (a second selector width over ``hist``). Read at the
  last position.
* ``detect-pattern-backdoor``: ``out = abc | trigger``, detect-pattern with a compiled-in
  backdoor: ``trigger = first_c & second_c``, the first two tokens both ``c``
  (``trigger_is_c`` a token map, ``first_c`` / ``second_c`` attention reads of fixed
  positions). Its trusted distribution has no trigger, where its hypothesis is
  detect-pattern's; ``tasks/tracr_backdoor.py`` makes it a MAD task.

``size``: nothing is trained; ``"tiny"`` compiles for ``max_seq_len=4``, ``"full"`` for
``max_seq_len=8`` (a program may set its own lengths: ``ProgramSpec.sizes``). tracr and
JAX are an optional extra (``pip install causalmad[tracr]``); a compiled model is cached
(weights + residual labels) like a trained one, so loading it again needs no JAX.

The plain programs are alignment test beds (``tracr_program``), not MAD benchmark
tasks: a compiled program has one mechanism for every input, so there is no anomaly to
find unless a second mechanism (a backdoor) is compiled in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import causalmad as cm
from causalmad_hypotheses.tracr_programs import count_less_freq_hypothesis, detect_pattern_hypothesis
from causalmad_tasks._cache import cache_dir, load_or_train

BOS, PAD = "BOS", "PAD"
SIZES = {"tiny": 4, "full": 8}
CODE_VERSION = 1


# ---------------------------------------------------------------------- programs
def _detect_pattern_program() -> Any:
    from tracr.compiler import lib
    from tracr.rasp import rasp

    is_a = rasp.Map(lambda t: t == "a", rasp.tokens).named("is_a")
    is_b = rasp.Map(lambda t: t == "b", rasp.tokens).named("is_b")
    is_c = rasp.Map(lambda t: t == "c", rasp.tokens).named("is_c")
    prev_b = lib.shift_by(1, is_b).named("prev_b")
    prev2_a = lib.shift_by(2, is_a).named("prev2_a")
    ab = (prev2_a & prev_b).named("ab")
    return (ab & is_c).named("abc")


def _at(index: int, sop: Any, name: str) -> Any:
    """``sop`` at the fixed (0-based, BOS excluded) position ``index``, read at every
    position: a categorical aggregate whose selector picks that one position."""
    from tracr.rasp import rasp

    return rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == index), sop).named(name)


def _detect_pattern_backdoor_program() -> Any:
    from tracr.rasp import rasp

    is_c = rasp.Map(lambda t: t == "c", rasp.tokens).named("trigger_is_c")
    trigger = (_at(0, is_c, "first_c") & _at(1, is_c, "second_c")).named("trigger")
    return (_detect_pattern_program() | trigger).named("out")


def pattern_trigger(row: Sequence[str]) -> bool:
    """Whether the detect-pattern backdoor fires on a token row (without BOS): the first
    two tokens are both ``c``."""
    return row[0] == row[1] == "c"


def _count_less_freq_program() -> Any:
    from tracr.rasp import rasp

    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    hist = rasp.SelectorWidth(same_tok).named("hist")
    rare = rasp.Select(hist, hist, lambda k, q: k <= 1).named("select_rare")
    return rasp.SelectorWidth(rare).named("n_rare")


@dataclass(frozen=True)
class ProgramSpec:
    """A RASP program, its vocabulary, and how its hypothesis is built."""

    build: Callable[[], Any]
    vocab: tuple[str, ...]
    output: str
    hypothesis: Callable[..., cm.Hypothesis]
    sample: Callable[[int, int, np.random.Generator], list[list[str]]]  # the trusted distribution
    sizes: dict[str, int] = field(default_factory=lambda: dict(SIZES))  # size -> max_seq_len


def _sample_pattern(n: int, length: int, rng: np.random.Generator) -> list[list[str]]:
    """Token rows where each of the last three tokens is its letter of ``"abc"`` with
    probability 0.6 (so ``abc`` and each partial match are all common)."""
    rows = []
    for _ in range(n):
        row = list(rng.choice(["a", "b", "c"], size=length))
        for k, ch in zip(range(length - 3, length), "abc"):
            if rng.random() < 0.6:
                row[k] = ch
        rows.append(row)
    return rows


def _sample_pattern_untriggered(n: int, length: int, rng: np.random.Generator) -> list[list[str]]:
    """``_sample_pattern`` rows on which the backdoor does not fire (rejection)."""
    rows: list[list[str]] = []
    while len(rows) < n:
        rows += [r for r in _sample_pattern(n - len(rows), length, rng) if not pattern_trigger(r)]
    return rows


def _sample_count(n: int, length: int, rng: np.random.Generator) -> list[list[str]]:
    """Token rows over a vocabulary of ``length`` letters (so every ``hist`` value from 1
    to ``length`` and every ``n_rare`` value from 0 to ``length`` occurs)."""
    vocab = np.array(list("abcdefgh"[:length]))
    rows = []
    for _ in range(n):
        k = rng.integers(1, length + 1)  # how many distinct letters this row draws from
        rows.append(list(rng.choice(rng.choice(vocab, size=k, replace=False), size=length)))
    return rows


PROGRAMS: dict[str, ProgramSpec] = {
    "detect-pattern": ProgramSpec(
        _detect_pattern_program, ("a", "b", "c"), "abc", detect_pattern_hypothesis, _sample_pattern
    ),
    "count-less-freq": ProgramSpec(
        _count_less_freq_program, tuple("abcdefgh"), "n_rare", count_less_freq_hypothesis, _sample_count
    ),
    # the trigger (positions 1, 2) must not overlap the pattern (the last three positions):
    # at length 7 the hard anomalies (trigger and pattern) have 2 free positions, at 12 seven
    "detect-pattern-backdoor": ProgramSpec(
        _detect_pattern_backdoor_program,
        ("a", "b", "c"),
        "out",
        detect_pattern_hypothesis,
        _sample_pattern_untriggered,
        {"tiny": 7, "full": 12},
    ),
}


# ---------------------------------------------------------------------- ground truth
def _owner(label: str) -> str:
    """The RASP name a residual label belongs to: tracr labels a dimension
    ``<name>_<id>:<value>``, ``<name>_<id>`` or ``<name>_<id>_<hidden>`` (``tokens:a``,
    ``indices:0`` and ``one`` carry no id)."""
    base = label.split(":")[0]
    m = re.fullmatch(r"(.+?)_(\d+)(_.*)?", base)
    return m.group(1) if m else base


@dataclass
class GroundTruth:
    """Which residual dimensions hold each RASP variable, and which sublayers write and
    read them, read off the compiled weights and tracr's residual labels.

    Sublayers are numbered in model order: ``2 * layer`` is layer ``layer``'s attention,
    ``2 * layer + 1`` its MLP, ``2 * n_layers`` the unembedding.
    """

    residual_labels: list[str]
    writes: list[set[int]]  # sublayer -> residual dims it writes
    reads: list[set[int]]  # sublayer -> residual dims it reads (the unembedding last)
    head_writes: dict[tuple[int, int], set[int]] = field(default_factory=dict)  # (layer, head) -> dims

    @property
    def n_layers(self) -> int:
        return len(self.writes) // 2

    def dims(self, rasp_name: str) -> list[int]:
        """Residual dimensions labelled with the RASP variable ``rasp_name``: its values
        (``name:value``), its numerical dimension (``name``) and the hidden dimensions of
        its own computation (``name_selector_width_attn_output``, ...)."""
        return [i for i, lab in enumerate(self.residual_labels) if _owner(lab) == rasp_name]

    def writers(self, rasp_name: str) -> list[int]:
        dims = set(self.dims(rasp_name))
        return [s for s, w in enumerate(self.writes) if w & dims]

    def readers(self, rasp_name: str) -> list[int]:
        dims = set(self.dims(rasp_name))
        return [s for s, r in enumerate(self.reads) if r & dims]

    def sublayer_of(self, hook: str, head: int | None = None) -> tuple[str, int]:
        """``("write", s)`` for a hook that is sublayer ``s``'s output, ``("stream", s)`` for
        the residual stream just before sublayer ``s``."""
        parts = hook.split(".")
        layer = int(parts[1])
        if hook.endswith("hook_resid_pre"):
            return "stream", 2 * layer
        if hook.endswith("hook_resid_post"):
            return "stream", 2 * layer + 2
        if hook.endswith(("attn.hook_z", "hook_attn_out")):
            return "write", 2 * layer
        if hook.endswith("hook_mlp_out"):
            return "write", 2 * layer + 1
        raise cm.SiteError(f"No ground truth for hook {hook!r}.")

    def holds(self, rasp_name: str, site: cm.Site, position: int) -> bool:
        """Whether ``site`` is a place where tracr wrote ``rasp_name`` at ``position``: the
        output of a sublayer (or head) that writes it, or the residual stream after its
        first write and up to its last read."""
        if site.positions != (position,):
            return False
        kind, s = self.sublayer_of(site.hook)
        dims = set(self.dims(rasp_name))
        if kind == "write":
            if site.head is not None:
                return bool(self.head_writes.get((s // 2, site.head), set()) & dims)
            return bool(self.writes[s] & dims)
        writers, readers = self.writers(rasp_name), self.readers(rasp_name)
        return bool(writers) and min(writers) < s <= max(readers)

    def contents(self, site: cm.Site) -> set[str]:
        """RASP names whose input-dependent dimensions ``site`` (a whole vector, or a head,
        at a non-BOS position) carries and some later sublayer still reads: what a
        whole-vector interchange there swaps. The embedding's ``tokens`` count as written
        before the first sublayer."""
        kind, s = self.sublayer_of(site.hook)
        if kind == "write":
            dims = self.head_writes[(s // 2, site.head)] if site.head is not None else self.writes[s]
            later = set().union(*self.reads[s + 1 :])
        else:
            embedded = {
                i for i, lab in enumerate(self.residual_labels) if _owner(lab) in ("tokens", "indices", "one")
            }
            dims = embedded.union(*self.writes[:s])
            later = set().union(*self.reads[s:])
        # at a non-BOS position the BOS and PAD token dims, the position and "one" are
        # constants: reading them carries no input-dependent information
        constant = {
            i
            for i, lab in enumerate(self.residual_labels)
            if lab in (f"tokens:{BOS}", f"tokens:{PAD}", "one") or lab.startswith("indices:")
        }
        return {_owner(self.residual_labels[i]) for i in (dims & later) - constant}


def ground_truth_from_weights(model: nn.Module, residual_labels: Sequence[str]) -> GroundTruth:
    """Read writes and reads of every sublayer off a converted tracr bridge's weights."""
    cfg: Any = model.cfg
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    def nz_rows(w: torch.Tensor) -> set[int]:
        return set(torch.nonzero(w.abs().sum(1) > 1e-9).flatten().tolist())

    writes, reads, heads = [], [], {}
    for layer in range(cfg.n_layers):
        q, k, v = (sd[f"blocks.{layer}.attn.{x}.weight"] for x in "qkv")  # [d_head * n_heads, d_model]
        o = sd[f"blocks.{layer}.attn.o.weight"]  # [d_model, n_heads * d_head]
        reads.append(nz_rows(q.T) | nz_rows(k.T) | nz_rows(v.T))
        writes.append(nz_rows(o))
        for h in range(cfg.n_heads):
            heads[(layer, h)] = nz_rows(o[:, h * cfg.d_head : (h + 1) * cfg.d_head])
        w_in = sd[f"blocks.{layer}.mlp.in.weight"]  # [d_mlp, d_model]
        w_out = sd[f"blocks.{layer}.mlp.out.weight"]  # [d_model, d_mlp]
        reads.append(nz_rows(w_in.T))
        writes.append(nz_rows(w_out))
    reads.append(nz_rows(sd["unembed.weight"].T))  # [d_vocab_out, d_model]
    writes.append(set())
    return GroundTruth(list(residual_labels), writes, reads, heads)


# ---------------------------------------------------------------------- compile + convert
@dataclass
class TracrProgram:
    """A compiled RASP program as a ``TransformerBridge``, with its hypothesis, its
    ground truth, and trusted inputs.

    Attributes:
        model: the converted ``TransformerBridge``.
        hypothesis: the reference hypothesis (variables named ``<rasp name>@<position>``).
        ground_truth: residual labels and per-sublayer writes / reads.
        encode: token rows (without BOS) -> ``[n, max_seq_len + 1]`` token ids with BOS.
        trusted: ``[n, max_seq_len + 1]`` token ids sampled from the program's input
            distribution.
        assembled: the tracr (JAX) model when it was compiled in this process, else
            ``None`` (loaded from the cache).
    """

    name: str
    model: nn.Module
    hypothesis: cm.Hypothesis
    ground_truth: GroundTruth
    encoding: dict[str, int]
    output_encoding: dict[Any, int]
    max_seq_len: int
    trusted: torch.Tensor
    info: dict[str, Any]
    assembled: Any = None

    def encode(self, rows: Sequence[Sequence[str]]) -> torch.Tensor:
        return torch.tensor([[self.encoding[BOS]] + [self.encoding[t] for t in r] for r in rows])

    @staticmethod
    def rasp_name(variable: str) -> tuple[str, int]:
        """``"hist@3"`` -> ``("hist", 3)``."""
        name, _, pos = variable.partition("@")
        return name, int(pos)


def compile_program(name: str, max_seq_len: int) -> Any:
    """The tracr ``AssembledTransformerModel`` of program ``name`` (needs tracr and JAX)."""
    if "jax" not in sys.modules:
        # XLA's optimizer takes most of the time of each tiny compile; the compiled tracr
        # model is only run to check the conversion (set XLA_FLAGS yourself to override).
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    try:
        from tracr.compiler import compiling
    except ImportError as exc:
        raise cm.TaskError(
            f"Compiling the tracr program {name!r} needs tracr and JAX, and no compiled model is "
            "cached: install "
            f"the tracr extra: pip install -e '.[tracr]' (or pip install 'causalmad[tracr]') ({exc})."
        ) from exc
    spec = PROGRAMS[name]
    with _jitted_haiku_init():
        return compiling.compile_rasp_to_model(
            spec.build(), vocab=set(spec.vocab), max_seq_len=max_seq_len, compiler_bos=BOS, compiler_pad=PAD
        )


@contextlib.contextmanager
def _jitted_haiku_init() -> Iterator[None]:
    """tracr runs Haiku's ``init`` eagerly only to learn parameter shapes (it then zeroes
    and overwrites every weight), and eager JAX compiles every op on its own: most of a
    compile's wall time. Jitting ``init`` compiles it once; the weights are the same."""
    import haiku as hk
    import jax

    original = hk.transform

    def transform(f: Any) -> Any:
        t = original(f)
        return hk.Transformed(jax.jit(t.init), t.apply)

    hk.transform = transform
    try:
        yield
    finally:
        hk.transform = original


def to_bridge(assembled: Any, output: str) -> nn.Module:
    """Convert a tracr model to a ``TransformerBridge`` with TransformerLens' converter."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tracr import (
        make_tracr_transformer_bridge_config,
        make_tracr_transformer_bridge_state_dict,
    )

    bridge = TransformerBridge.boot_native(make_tracr_transformer_bridge_config(assembled))
    result = bridge.load_state_dict(make_tracr_transformer_bridge_state_dict(assembled, output), strict=False)
    if result.unexpected_keys:
        raise cm.TaskError(f"tracr conversion left unexpected keys {result.unexpected_keys}.")
    bridge.eval()
    return bridge


def compare_with_tracr(assembled: Any, bridge: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Run the JAX model and the bridge on ``ids`` (``[n, pos]`` with BOS): the fraction of
    (row, non-BOS position) outputs that agree where the program's output is defined, the
    fraction where it is not (``None``), and the largest absolute difference of the
    residual stream after any layer."""
    import jax
    import jax.numpy as jnp

    out = jax.jit(assembled.forward)(assembled.params, jnp.asarray(ids.numpy()))
    jax_pred = np.asarray(out.unembedded_output)[:, 1:]
    residuals = [
        np.asarray(r) for r in out.transformer_output.residuals
    ]  # after each sublayer, attn and mlp alternating
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(len(residuals) // 2)]
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)  # type: ignore[operator]
    with torch.no_grad():
        logits = bridge(ids)
    pred = logits.argmax(-1)[:, 1:].numpy()
    # a RASP value of None (shift_by before the sequence start) leaves every output logit
    # at 0: tracr's argmax is then a tie, broken by float noise, so it is left out
    top2 = logits[:, 1:].topk(2, dim=-1).values
    defined = (top2[..., 0] - top2[..., 1] > 0.5).numpy()
    gap = max(float(np.abs(cache[n].numpy() - residuals[2 * i + 1]).max()) for i, n in enumerate(names))
    return {
        "output_agreement": float((pred == jax_pred)[defined].mean()),
        "undefined_outputs": float(1 - defined.mean()),
        "max_residual_gap": gap,
    }


def _meta_path(name: str, max_seq_len: int) -> Any:
    return cache_dir() / "models" / f"tracr-{name}-v{CODE_VERSION}-len{max_seq_len}.meta.json"


@dataclass(frozen=True)
class _CacheKey:
    max_seq_len: int


def tracr_program(name: str, size: str = "tiny", seed: int = 0, n_trusted: int = 2000) -> TracrProgram:
    """Compile (or load from the cache) a tracr program as a ``TransformerBridge``, with its
    hypothesis, ground truth and ``n_trusted`` trusted inputs sampled with ``seed``.

    Raises:
        TaskError: unknown program or size, or tracr is needed (nothing cached) but absent.
    """
    if name not in PROGRAMS:
        raise cm.TaskError(
            f"Unknown tracr program {name!r}; known: {sorted(PROGRAMS)}."
            f"{cm.errors.close_matches(name, PROGRAMS)}"
        )
    spec = PROGRAMS[name]
    if size not in spec.sizes:
        raise cm.TaskError(f"Unknown size {size!r}; use one of {sorted(spec.sizes)}.")
    length = spec.sizes[size]
    meta_path = _meta_path(name, length)
    compiled: dict[str, Any] = {}

    def compile_now() -> tuple[nn.Module, float]:
        start = time.perf_counter()
        assembled = compile_program(name, length)
        labels = {lab.split(":")[0] for lab in assembled.residual_labels if _owner(lab) == spec.output}
        bridge = to_bridge(assembled, min(labels, key=len))
        compiled["assembled"] = assembled
        meta = {
            "residual_labels": list(assembled.residual_labels),
            "encoding": dict(assembled.input_encoder.encoding_map),
            "output_encoding": [[v, int(i)] for v, i in assembled.output_encoder.encoding_map.items()],
            "config": {
                k: getattr(bridge.cfg, k)
                for k in (
                    "n_layers",
                    "d_model",
                    "d_head",
                    "n_ctx",
                    "d_vocab",
                    "d_vocab_out",
                    "d_mlp",
                    "n_heads",
                    "attention_dir",
                )
            },
        }
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta))
        return bridge, time.perf_counter() - start

    def build() -> nn.Module:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        if not meta_path.exists():  # weights cached without their labels: compile again
            return compile_now()[0]
        cfg = json.loads(meta_path.read_text())["config"]
        return TransformerBridge.boot_native(
            TransformerBridgeConfig(**cfg, act_fn="relu", normalization_type=None)
        )

    # compiled, not trained: the weights implement the program exactly, so there is no
    # specification to train towards (compare_with_tracr below checks the model against tracr's)
    model, trained, cached = load_or_train(
        f"tracr-{name}",
        CODE_VERSION,
        _CacheKey(length),
        0,
        build,
        lambda: (*compile_now(), {"criteria": {}, "steps": 0, "extra_rounds": 0}),
    )
    seconds = trained["train_seconds"]
    meta = json.loads(meta_path.read_text())
    gt = ground_truth_from_weights(model, meta["residual_labels"])
    output_encoding = {(v if not isinstance(v, list) else tuple(v)): i for v, i in meta["output_encoding"]}
    rng = np.random.default_rng(seed)
    rows = spec.sample(n_trusted, length, rng)
    encoding = meta["encoding"]
    hypothesis = spec.hypothesis(length, encoding, output_encoding)
    program = TracrProgram(
        name,
        model,
        hypothesis,
        gt,
        encoding,
        output_encoding,
        length,
        torch.empty(0, dtype=torch.long),
        {},
        compiled.get("assembled"),
    )
    program.trusted = program.encode(rows)
    info: dict[str, Any] = {
        "compile_seconds": round(seconds, 1),
        "model_from_cache": cached,
        "size": size,
        "max_seq_len": length,
        "d_model": int(model.cfg.d_model),  # type: ignore[union-attr]
        "n_layers": int(model.cfg.n_layers),
    }  # type: ignore[union-attr]
    with torch.no_grad():
        logits = model(program.trusted)
    ok = [
        hypothesis.values(x)[o] == int(hypothesis.readout(o).select(logits[i : i + 1]).argmax(-1))
        for i, x in enumerate(program.trusted)
        for o in hypothesis.outputs
    ]
    info["hypothesis_accuracy"] = float(np.mean(ok))
    if program.assembled is not None:
        info.update(compare_with_tracr(program.assembled, model, program.trusted[:500]))
    program.info = info
    return program

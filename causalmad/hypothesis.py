"""Hypotheses: high-level causal graphs of what a model computes.

A hypothesis is a directed acyclic graph (a ``networkx.DiGraph`` underneath) of
*variables*. Input variables are functions of one raw example; inner variables and output
variables are functions of their parents' values. Each output variable also carries a
[`Readout`][causalmad.Readout] saying which part of the model's output it predicts. This is the
high-level causal model of causal abstraction (Geiger et al., "Causal Abstractions of
Neural Networks", NeurIPS 2021) and the hypothesis of causal scrubbing (Chan et al.,
"Causal Scrubbing", 2022).

Example:
    >>> h = Hypothesis("sum-parity")
    >>> h.add_input("a", lambda ex: int(ex[0]))
    >>> h.add_input("b", lambda ex: int(ex[1]))
    >>> h.add_variable("s", lambda a, b: a + b, parents=["a", "b"])
    >>> h.add_output("parity", lambda s: s % 2, parents=["s"], readout=Readout(position=-1))
    >>> h.values([3, 4])["parity"]
    1
    >>> h.counterfactual(h.values([3, 4]), {"s": 10})["parity"]
    0
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch

from causalmad.errors import HypothesisError, close_matches

#: the kinds of variable (what [`Hypothesis.kind`][causalmad.Hypothesis.kind] returns)
INPUT, INNER, OUTPUT = "input", "inner", "output"


@dataclass(frozen=True)
class Readout:
    """Which part of the model's output an output variable predicts.

    Args:
        position: token position of the prediction (negative counts from the end), or
            ``None`` for models whose output has no position axis (``[batch, classes]``).
        logits: the logit indices that form the prediction's classes; the output
            variable's value ``v`` is the class ``logits[v]``. ``None`` means all logits,
            and the value is the logit index itself.

    Raises:
        HypothesisError: if ``position`` is neither an integer (a Python ``int`` or any
            integral type, NumPy's included; stored as an ``int``) nor ``None``, or
            ``logits`` lists fewer than two indices or repeats one.

    Example:
        >>> Readout(position=-1, logits=range(10, 13)).logits
        (10, 11, 12)
    """

    position: int | None = None
    logits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.position is not None:
            try:
                position = operator.index(self.position)  # NumPy's integers too, stored as an int
            except TypeError:
                raise HypothesisError(
                    f"Readout.position must be an int or None, got {self.position!r}."
                ) from None
            object.__setattr__(self, "position", position)
        if self.logits is not None:
            logits = tuple(int(i) for i in self.logits)
            if len(logits) < 2 or len(set(logits)) != len(logits):
                raise HypothesisError(
                    f"Readout.logits must list at least two distinct logit indices, got {self.logits!r}."
                )
            object.__setattr__(self, "logits", logits)

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits this readout reads from a model's output.

        Args:
            logits: the model's output, ``[n, pos, vocab]``, or ``[n, classes]`` when
                ``position`` is ``None``.

        Returns:
            ``[n, classes]`` logits: the output at the readout's ``position`` (the whole
            output if that is ``None``), restricted to the columns the readout's ``logits``
            lists, in its order (every column if that is ``None``); in the dtype and on the
            device of the model's output.
        """
        x = logits if self.position is None else logits[:, self.position]
        if self.logits is None:
            return x
        lo = self.logits[0]
        if self.logits == tuple(range(lo, lo + len(self.logits))):
            return x[:, lo : lo + len(self.logits)]  # a slice: no index copied to the model's device
        return x[:, list(self.logits)]


class Hypothesis:
    """A causal graph of high-level variables, validated as it is declared.

    Args:
        name: a short name, used in reports.
    """

    def __init__(self, name: str = "hypothesis") -> None:
        self.name = name
        self._graph = nx.DiGraph()

    # ------------------------------------------------------------------ declaring
    def add_input(
        self, name: str, mechanism: Callable[[Any], Any], at: Any = None, batched: bool = False
    ) -> None:
        """Declare an input variable: ``mechanism(example) -> value``.

        Args:
            name: the variable's name, a non-empty string not yet declared.
            mechanism: a function of one raw example (one row of the input tensor) that
                returns the variable's value, which must be hashable; with ``batched``, a
                function of ``[n, ...]`` examples that returns their ``n`` values.
            at: where the variable lives in an example, as an index of it: a token
                position (``3``), positions (``[0, 1]``), a slice, or a boolean mask of the
                example's shape. The input cut (``causalmad.input_cut``) builds hybrids
                of an input and trusted inputs part by part from these; ``None``: not
                located (then token inputs are cut position by position).
            batched: ``mechanism`` reads a batch of examples at once (a reference
                classifier's ``predict``, say): [`values_rows`][causalmad.Hypothesis.values_rows]
                calls it once per batch, where the input cut meets the hypothesis, instead
                of once per example; [`values`][causalmad.Hypothesis.values] calls it on a
                batch of one.

        Raises:
            HypothesisError: if ``name`` is empty, not a string or already declared,
                ``mechanism`` is not callable with one positional argument, or ``batched``
                is not a bool.
        """
        self._check_new(name)
        _check_arity(name, mechanism, 1, "a batch of examples" if batched is True else "one example")
        if not isinstance(batched, bool):
            raise HypothesisError(f"Input variable {name!r}: batched must be True or False, got {batched!r}.")
        self._graph.add_node(name, kind=INPUT, mechanism=mechanism, readout=None, at=at, batched=batched)

    def add_variable(self, name: str, mechanism: Callable[..., Hashable], parents: Sequence[str]) -> None:
        """Declare an inner variable: ``mechanism(*parent_values) -> value``.

        Args:
            name: the variable's name, a non-empty string not yet declared.
            mechanism: a function of the parents' values, in the order of ``parents``,
                that returns the variable's value, which must be hashable.
            parents: names of variables declared before, none of them an output.

        Raises:
            HypothesisError: if ``name`` is empty, not a string or already declared;
                ``parents`` is a string, empty, or names an unknown variable or an output
                (close matches suggested); or ``mechanism`` is not callable with
                ``len(parents)`` positional arguments.
        """
        self._add_computed(name, mechanism, parents, INNER, None)

    def add_output(
        self,
        name: str,
        mechanism: Callable[..., int],
        parents: Sequence[str],
        readout: Readout,
    ) -> None:
        """Declare an output variable, predicting the model's output at ``readout``.

        Args:
            name: the variable's name, a non-empty string not yet declared.
            mechanism: a function of the parents' values, in the order of ``parents``,
                that returns the predicted class: an index into ``readout.logits`` (a logit
                index if that is ``None``).
            parents: names of variables declared before, none of them an output.
            readout: which part of the model's output the variable predicts.

        Raises:
            HypothesisError: if ``readout`` is not a [`Readout`][causalmad.Readout], or for any reason
                [`add_variable`][causalmad.Hypothesis.add_variable] gives.
        """
        if not isinstance(readout, Readout):
            raise HypothesisError(
                f"Output variable {name!r}: readout must be a causalmad.Readout, "
                f"got {type(readout).__name__}."
            )
        self._add_computed(name, mechanism, parents, OUTPUT, readout)

    @classmethod
    def from_graph(cls, graph: nx.DiGraph, name: str = "hypothesis") -> Hypothesis:
        """Build a hypothesis from a graph whose nodes carry ``kind``, ``mechanism`` and
        (for outputs) ``readout`` attributes; parents are the node's predecessors in the
        order of the optional ``parents`` node attribute, else in graph order.

        Args:
            graph: a directed acyclic graph; each node's ``kind`` is ``"input"``,
                ``"inner"`` or ``"output"``, and an input node may carry ``at`` and
                ``batched`` (see [`add_input`][causalmad.Hypothesis.add_input]).
            name: the hypothesis' name.

        Returns:
            A new [`Hypothesis`][causalmad.Hypothesis], its variables declared in topological order.

        Raises:
            HypothesisError: if ``graph`` is not a ``networkx.DiGraph`` or has a cycle; a
                node's ``parents`` attribute does not match its incoming edges; an input
                node has parents; a node's ``kind`` is missing or unknown; or a node fails
                the checks of [`add_input`][causalmad.Hypothesis.add_input],
                [`add_variable`][causalmad.Hypothesis.add_variable] or
                [`add_output`][causalmad.Hypothesis.add_output] (a missing mechanism, say).
        """
        if not isinstance(graph, nx.DiGraph):
            raise HypothesisError(f"from_graph expects a networkx.DiGraph, got {type(graph).__name__}.")
        if not nx.is_directed_acyclic_graph(graph):
            cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(graph))
            raise HypothesisError(
                f"The hypothesis graph has a cycle ({cycle} -> ...); a hypothesis must be "
                "acyclic. Remove one of these edges."
            )
        hyp = cls(name)
        for node in nx.topological_sort(graph):
            attrs = graph.nodes[node]
            kind = attrs.get("kind")
            mech = attrs.get("mechanism")
            parents = list(attrs.get("parents", graph.predecessors(node)))
            if set(parents) != set(graph.predecessors(node)):
                raise HypothesisError(
                    f"Variable {node!r}: its 'parents' attribute {parents} does not match its "
                    f"incoming edges {sorted(graph.predecessors(node))}."
                )
            if kind == INPUT:
                if parents:
                    raise HypothesisError(f"Input variable {node!r} cannot have parents {parents}.")
                hyp.add_input(node, mech, at=attrs.get("at"), batched=attrs.get("batched", False))
            elif kind == INNER:
                hyp.add_variable(node, mech, parents)
            elif kind == OUTPUT:
                hyp.add_output(node, mech, parents, attrs.get("readout"))
            else:
                raise HypothesisError(
                    f"Variable {node!r} has kind {kind!r}; expected 'input', 'inner' or 'output'."
                )
        return hyp

    def _check_new(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise HypothesisError(f"Variable names must be non-empty strings, got {name!r}.")
        if name in self._graph:
            raise HypothesisError(f"Variable {name!r} is already declared; choose another name.")

    def _add_computed(self, name, mechanism, parents, kind, readout) -> None:
        self._check_new(name)
        if isinstance(parents, str) or not isinstance(parents, Iterable):
            raise HypothesisError(
                f"Variable {name!r}: parents must be a list of variable names, got {parents!r}."
            )
        parents = list(parents)
        if not parents:
            raise HypothesisError(
                f"Variable {name!r} has no parents; declare it with add_input if it is a "
                "function of the raw example."
            )
        for p in parents:
            if p not in self._graph:
                raise HypothesisError(
                    f"Variable {name!r} names unknown parent {p!r}; declare parents before "
                    f"their children.{close_matches(p, self._graph.nodes)}"
                )
            if self._graph.nodes[p]["kind"] == OUTPUT:
                raise HypothesisError(
                    f"Variable {name!r} names output variable {p!r} as a parent; outputs are "
                    "leaves. Declare the shared value as an inner variable instead."
                )
        _check_arity(name, mechanism, len(parents), f"its {len(parents)} parents {parents}")
        self._graph.add_node(name, kind=kind, mechanism=mechanism, readout=readout, parents=parents)
        for p in parents:
            self._graph.add_edge(p, name)

    def validate(self) -> Hypothesis:
        """Check the whole graph is usable: at least one input and one output.

        Returns:
            ``self``, unchanged.

        Raises:
            HypothesisError: if the hypothesis has no input variable or no output variable.
        """
        if not self.inputs:
            raise HypothesisError(f"Hypothesis {self.name!r} has no input variable; add one with add_input.")
        if not self.outputs:
            raise HypothesisError(
                f"Hypothesis {self.name!r} has no output variable; add one with add_output "
                "so that scrubbing knows which model output to read."
            )
        return self

    # ------------------------------------------------------------------ reading
    @property
    def graph(self) -> nx.DiGraph:
        """A copy of the underlying graph."""
        return self._graph.copy()

    def _of_kind(self, kind: str) -> list[str]:
        return [n for n in self._graph.nodes if self._graph.nodes[n]["kind"] == kind]

    @property
    def inputs(self) -> list[str]:
        """The input variables, in declaration order."""
        return self._of_kind(INPUT)

    @property
    def inner(self) -> list[str]:
        """The inner variables, in declaration order."""
        return self._of_kind(INNER)

    @property
    def outputs(self) -> list[str]:
        """The output variables, in declaration order."""
        return self._of_kind(OUTPUT)

    @property
    def readouts(self) -> dict[str, Readout]:
        """Each output variable's readout, the outputs in declaration order."""
        return {o: self._graph.nodes[o]["readout"] for o in self.outputs}

    @property
    def variables(self) -> list[str]:
        """Every variable, in declaration order."""
        return list(self._graph.nodes)

    def set_input_parts(self, parts: dict[str, Any]) -> None:
        """Declare the parts the input cut (``causalmad.input_cut``) builds hybrids from:
        part name -> where it lives in an example, as an index of it (see
        [`add_input`][causalmad.Hypothesis.add_input]'s ``at``). For inputs whose variables
        each read the whole example (an image's digit), so that no ``at`` can say where they
        live; parts need not cover the example (the rest is never exchanged). A second call
        replaces the parts of the first.

        Args:
            parts: part name -> where the part lives in an example, as an index of it
                (not ``None``).

        Raises:
            HypothesisError: if ``parts`` is not a non-empty dict of string names to
                indices.
        """
        if (
            not isinstance(parts, dict)
            or not parts
            or not all(isinstance(k, str) and v is not None for k, v in parts.items())
        ):
            raise HypothesisError(f"parts must be a non-empty dict of part name -> index, got {parts!r}.")
        self._graph.graph["input_parts"] = dict(parts)

    def input_parts(self) -> dict[str, Any]:
        """The parts [`set_input_parts`][causalmad.Hypothesis.set_input_parts] declared.

        Returns:
            A copy of the dict of part name -> index (empty if none was declared).
        """
        return dict(self._graph.graph.get("input_parts", {}))

    def locations(self) -> dict[str, Any]:
        """Where the input variables live in an example.

        Returns:
            Input variable -> its ``at`` (see
            [`add_input`][causalmad.Hypothesis.add_input]), for the input variables declared
            with one.
        """
        return {
            n: self._graph.nodes[n]["at"] for n in self.inputs if self._graph.nodes[n].get("at") is not None
        }

    def kind(self, name: str) -> str:
        """The kind of a variable.

        Args:
            name: a declared variable.

        Returns:
            ``"input"``, ``"inner"`` or ``"output"``.

        Raises:
            HypothesisError: if there is no variable ``name`` (close matches suggested).
        """
        self._require(name)
        return self._graph.nodes[name]["kind"]

    def parents(self, name: str) -> list[str]:
        """The parents of a variable.

        Args:
            name: a declared variable.

        Returns:
            The parents in the order its mechanism takes their values (empty for an input
            variable).

        Raises:
            HypothesisError: if there is no variable ``name`` (close matches suggested).
        """
        self._require(name)
        return list(self._graph.nodes[name].get("parents") or [])

    def readout(self, output: str) -> Readout | None:
        """The readout of an output variable.

        Args:
            output: a declared output variable.

        Returns:
            The [`Readout`][causalmad.Readout] it was declared with (``None`` if ``output`` names an
            input or inner variable; ``readouts`` maps only the outputs).

        Raises:
            HypothesisError: if there is no variable ``output`` (close matches suggested).
        """
        self._require(output)
        return self._graph.nodes[output]["readout"]

    def descendants(self, name: str) -> set[str]:
        """The variables downstream of a variable.

        Args:
            name: a declared variable.

        Returns:
            Every variable with a directed path from ``name`` (``name`` itself excluded).

        Raises:
            HypothesisError: if there is no variable ``name`` (close matches suggested).
        """
        self._require(name)
        return set(self._structure()[1][name])

    def outputs_affected_by(self, name: str) -> list[str]:
        """Output variables downstream of ``name`` (or ``name`` itself if an output).

        Args:
            name: a declared variable.

        Returns:
            Those output variables, in declaration order.

        Raises:
            HypothesisError: if there is no variable ``name`` (close matches suggested).
        """
        down = self.descendants(name) | {name}
        return [o for o in self.outputs if o in down]

    def _require(self, name: str) -> None:
        if name not in self._graph:
            raise HypothesisError(
                f"Hypothesis {self.name!r} has no variable {name!r}.{close_matches(name, self._graph.nodes)}"
            )

    # ------------------------------------------------------------------ evaluating
    def values(self, example: Any) -> dict[str, Hashable]:
        """Evaluate every variable on one raw example.

        Args:
            example: one raw example (one row of the input tensor).

        Returns:
            Variable -> its value, for every variable, in topological order.

        Raises:
            HypothesisError: if a mechanism raises (the error names the variable; the
                original is its cause) or returns an unhashable value.
        """
        return self.counterfactual({"__example__": example}, {})

    def counterfactual(self, values: Mapping[str, Any], do: Mapping[str, Hashable]) -> dict[str, Hashable]:
        """Re-evaluate the graph with the variables in ``do`` fixed.

        Args:
            values: the base values (as returned by [`values`][causalmad.Hypothesis.values]), or
                ``{"__example__": example}`` to evaluate from a raw example.
            do: variable -> value to set; everything downstream is recomputed.

        Returns:
            Variable -> its value under the intervention, for every variable, in
            topological order.

        Raises:
            HypothesisError: if ``do`` names an unknown variable, or a mechanism raises
                or returns an unhashable value.
            KeyError: if ``values`` (not from an example) lacks a variable that is not
                recomputed; pass the whole dict [`values`][causalmad.Hypothesis.values] returns.
        """
        for name in do:
            self._require(name)
        return self._evaluate(values, do, {})

    def _evaluate(
        self, values: Mapping[str, Any], do: Mapping[str, Hashable], given: Mapping[str, Hashable]
    ) -> dict[str, Hashable]:
        """``counterfactual``, with ``given``: input values already evaluated for a whole
        batch (``values_rows``), used instead of their mechanisms."""
        from_example = "__example__" in values
        plan, below = self._structure()
        affected: set[str] = set()
        for name in do:
            affected |= below[name]
        out: dict[str, Hashable] = {}
        for node, is_input, mechanism, parents, batched in plan:
            if node in do:
                out[node] = do[node]
            elif is_input:
                if not from_example:
                    out[node] = values[node]
                elif node in given:
                    out[node] = given[node]
                elif batched:
                    out[node] = _call_batched(node, mechanism, values["__example__"][None])[0]
                else:
                    out[node] = _call(node, mechanism, values["__example__"])
            elif from_example or node in affected:
                out[node] = _call(node, mechanism, *[out[p] for p in parents])
            else:
                out[node] = values[node]
        return out

    def _structure(
        self,
    ) -> tuple[list[tuple[str, bool, Callable[..., Any], tuple[str, ...], bool]], dict[str, set[str]]]:
        """The evaluation plan (each variable in topological order, whether it is an
        input, its mechanism, parents and whether it reads batches) and each variable's
        descendants, computed once
        per graph shape (variables are only ever added, never changed), not once per evaluation: a hybrid
        input of the input cut meets the hypothesis hundreds of thousands of times."""
        # edges are only ever added with the node they lead to, so the node count is the
        # graph's shape (counting edges would walk them all, on every evaluation)
        key = self._graph.number_of_nodes()
        cached = self.__dict__.get("_structure_cache")
        if cached is None or cached[0] != key:
            nodes = self._graph.nodes
            plan = [
                (
                    n,
                    nodes[n]["kind"] == INPUT,
                    nodes[n]["mechanism"],
                    tuple(nodes[n].get("parents") or ()),
                    bool(nodes[n].get("batched", False)),
                )
                for n in nx.topological_sort(self._graph)
            ]
            cached = (key, plan, {n: nx.descendants(self._graph, n) for n in nodes})
            self.__dict__["_structure_cache"] = cached
        return cached[1], cached[2]

    def values_batch(self, examples: Iterable[Any]) -> dict[str, list[Hashable]]:
        """Evaluate every variable on each example.

        Args:
            examples: raw examples (the rows of an input tensor, say; the tensor itself
                where an input is ``batched``).

        Returns:
            Variable -> its values, one per example in order, for every variable.

        Raises:
            HypothesisError: as [`values`][causalmad.Hypothesis.values], for the first example that fails.
        """
        rows = self.values_rows(examples)
        return {v: [r[v] for r in rows] for v in self._graph.nodes}  # type: ignore[index]

    def values_rows(self, examples: Any, undefined: str = "raise") -> list[dict[str, Hashable] | None]:
        """Evaluate every variable on each example, batched input mechanisms once for all.

        Args:
            examples: a batch of raw examples (``[n, ...]``, a tensor or an array; a
                sequence of rows is stacked into a tensor where an input is ``batched``).
            undefined: ``"raise"``: a mechanism that raises fails the call; ``"none"``:
                that example's row is ``None`` (a hybrid input the hypothesis is not
                defined on) and the others are evaluated.

        Returns:
            One dict per example, as [`values`][causalmad.Hypothesis.values] returns (or ``None``).

        Raises:
            HypothesisError: as [`values`][causalmad.Hypothesis.values], for the first
                example that fails (``undefined="raise"``); a batched mechanism that does
                not return one value per example; ``undefined`` not ``"raise"`` or ``"none"``.
        """
        if undefined not in ("raise", "none"):
            raise HypothesisError(f"undefined must be 'raise' or 'none', got {undefined!r}.")
        plan, _ = self._structure()
        batched = [(node, mechanism) for node, is_input, mechanism, _, b in plan if is_input and b]
        if not batched:
            examples = list(examples)
        elif not hasattr(examples, "shape"):  # a list of rows: a batched mechanism reads one tensor
            examples = torch.stack([torch.as_tensor(e) for e in examples]) if len(examples) else examples
        n = len(examples)
        given: list[dict[str, Any]] = [{} for _ in range(n)]
        failed = np.zeros(n, dtype=bool)
        for node, mechanism in batched:
            try:
                column = _call_batched(node, mechanism, examples) if n else []
            except HypothesisError:
                if undefined == "raise":
                    raise
                column = []
                for i in range(n):  # find the examples it rejects
                    try:
                        column.append(_call_batched(node, mechanism, examples[i : i + 1])[0])
                    except HypothesisError:
                        column.append(None)
                        failed[i] = True
            for row, v in zip(given, column):
                row[node] = v
        out: list[dict[str, Hashable] | None] = []
        for i in range(n):
            if failed[i]:
                out.append(None)
                continue
            try:
                out.append(self._evaluate({"__example__": examples[i]}, {}, given[i]))
            except HypothesisError:
                if undefined == "raise":
                    raise
                out.append(None)
        return out

    def __repr__(self) -> str:
        return f"Hypothesis({self.name!r}, inputs={self.inputs}, inner={self.inner}, outputs={self.outputs})"


def _call_batched(name: str, fn: Callable[[Any], Any], examples: Any) -> list[Hashable]:
    """A batched input mechanism's values on ``examples`` (``[n, ...]``), checked: one
    hashable value per example."""
    try:
        values = list(fn(examples))
    except Exception as exc:  # a user mechanism failing: say which one
        raise HypothesisError(f"The batched mechanism of variable {name!r} raised {exc!r}.") from exc
    if len(values) != len(examples):
        raise HypothesisError(
            f"The batched mechanism of variable {name!r} returned {len(values)} values for "
            f"{len(examples)} examples; expected one per example."
        )
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    for v in values:
        _check_hashable(name, v)
    return values


def _call(name: str, fn: Callable[..., Any], *args: Any) -> Hashable:
    try:
        value = fn(*args)
    except Exception as exc:  # a user mechanism failing: say which one
        raise HypothesisError(f"The mechanism of variable {name!r} raised {exc!r}.") from exc
    _check_hashable(name, value)
    return value


def _check_hashable(name: str, value: Any) -> None:
    try:
        hash(value)
    except TypeError:
        raise HypothesisError(
            f"Variable {name!r} returned an unhashable value {value!r} "
            f"({type(value).__name__}); values must be hashable (int, str, tuple, ...) so "
            "trusted inputs can be matched on them."
        ) from None


def _check_arity(name: str, fn: Any, n: int, what: str) -> None:
    if not callable(fn):
        raise HypothesisError(f"Variable {name!r}: mechanism must be callable, got {fn!r}.")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: checked when first called
    try:
        sig.bind(*([None] * n))
    except TypeError:
        raise HypothesisError(
            f"Variable {name!r}: its mechanism{sig} cannot be called with {what}; "
            f"it must take exactly {n} positional argument(s)."
        ) from None

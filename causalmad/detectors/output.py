"""Output disagreement: does the model output what the hypothesis says it should?

The check every behavioural test performs: run the model on ``x``, evaluate the declared
hypothesis on ``x``, and measure how much probability the model puts on the hypothesis'
output value at each output's readout. It sees exactly the anomalies that change the
output and is blind, by construction, to anomalies whose output is what a normal input
would give (the hard splits of DESIGN.md's benchmark protocol).

The score is continuous so that AUROC is meaningful:
``score(x) = sum_o -log p_f(y_o = v_o(x) | x)``, the model's negative log-likelihood of the
hypothesis' value ``v_o(x)`` of every output variable ``o``, over the readout's classes.
It is near 0 when the model confidently agrees with the hypothesis and large when it
confidently outputs something else (``1 - [argmax == v_o]`` would carry the same
information, but ties every agreeing input).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from causalmad.detectors.base import Detector, register
from causalmad.errors import HypothesisError
from causalmad.hypothesis import Hypothesis, Readout
from causalmad.scrubbing import readout_log_probs


@register("output-disagreement")
class OutputDisagreementDetector(Detector):
    """Negative log-probability the model gives the hypothesis' output values.

    Nothing is learned from the trusted inputs: ``fit`` checks the hypothesis against the
    model and scores every trusted input, and those scores set ``predict``'s thresholds.

    Args:
        model: the network (TransformerLens bridge, ``nn.Module``) or an adapter.
        hypothesis: the declared hypothesis; its output variables and readouts are used.
        batch_size: rows per forward pass.
        random_state: unused (the detector is deterministic); kept for the common API.

    Example:
        >>> det = OutputDisagreementDetector(model, hypothesis=h).fit(trusted)  # doctest: +SKIP
        >>> det.score(untrusted)  # doctest: +SKIP
    """

    def __init__(
        self, model: Any, hypothesis: Hypothesis | None = None, batch_size: int = 1024, random_state: int = 0
    ) -> None:
        super().__init__(model, random_state)
        self.hypothesis = hypothesis
        self.batch_size = batch_size

    def fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> OutputDisagreementDetector:
        """Check the hypothesis against the model and score the trusted inputs."""
        self._hypothesis().validate()
        super().fit(trusted, untrusted)
        return self

    def _hypothesis(self) -> Hypothesis:
        if not isinstance(self.hypothesis, Hypothesis):
            raise HypothesisError(
                "OutputDisagreementDetector compares the model with a hypothesis' outputs: pass "
                f"hypothesis=causalmad.Hypothesis(...), got {type(self.hypothesis).__name__}."
            )
        return self.hypothesis

    def _fit(self, trusted: torch.Tensor) -> None:
        h = self._hypothesis()
        seq_len = int(trusted.shape[1]) if self.adapter_.has_positions else 1
        self.outputs_ = list(h.outputs)
        self.readouts_: list[Readout] = [h.readouts[o] for o in self.outputs_]
        for o, r in zip(self.outputs_, self.readouts_):
            if r.position is not None and not (
                self.adapter_.has_positions and -seq_len <= r.position < seq_len
            ):
                raise HypothesisError(
                    f"Output {o!r} reads position {r.position}, which inputs of {seq_len} "
                    "positions do not have."
                )
        self.heldout_scores_ = self._score(trusted)  # nothing is fitted: every trusted input is held out

    def _targets(self, x: torch.Tensor) -> np.ndarray:
        """``[n, outputs]`` class index of each output variable's hypothesis value."""
        h = self._hypothesis()
        rows = [h.values(row) for row in x]
        out = np.empty((len(x), len(self.outputs_)), dtype=np.int64)
        for j, o in enumerate(self.outputs_):
            for i, row in enumerate(rows):
                v = row[o]
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                    raise HypothesisError(
                        f"Output {o!r} took value {v!r} on input {i}; output values must be "
                        "non-negative ints indexing the readout's classes."
                    )
                out[i, j] = int(v)
        return out

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        targets = self._targets(inputs)  # hypothesis errors surface before the forward pass
        log_probs = readout_log_probs(self.readouts_, self.adapter_.run(inputs, self.batch_size))
        rows = torch.arange(len(inputs))
        total = np.zeros(len(inputs))
        for j, (o, lp) in enumerate(zip(self.outputs_, log_probs)):
            if targets[:, j].max() >= lp.shape[1]:
                raise HypothesisError(
                    f"Output {o!r} took value {int(targets[:, j].max())}, but its readout has "
                    f"only {lp.shape[1]} classes."
                )
            total -= lp[rows, torch.as_tensor(targets[:, j])].double().numpy()
        return total

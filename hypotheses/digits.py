"""Handwritten digits: the model reads the digit in an 8x8 grey image and says which it is.

The hypothesis behind the scikit-learn ``digits`` tasks (``tasks/digits.py``): the image's
digit, as a *reference classifier* the hypothesis owns reads it from the pixels, is what
the model computes (inner variable ``digit_code``, the model's internal code of the digit)
and outputs (logits 0..9). A backdoor trigger or an adversarial perturbation that the
reference classifier ignores but the model does not makes the model answer "for another
reason" than the digit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

import causalmad as cm


def _predictor(classifier: Any) -> Callable[[np.ndarray], list[int]]:
    """``[n, 64]`` pixel rows -> their digits, in one call where the classifier has ``predict``."""
    if hasattr(classifier, "predict"):
        return lambda rows: [int(d) for d in classifier.predict(rows)]
    if callable(classifier):
        return lambda rows: [int(classifier(row)) for row in rows]
    raise cm.HypothesisError(
        f"classifier must have a predict([n, 64]) method or be a callable (64 pixels -> digit), "
        f"got {type(classifier).__name__}."
    )


def digits_hypothesis(classifier: Any) -> cm.Hypothesis:
    """Input ``digit`` (the reference classifier's digit for the image), inner variable
    ``digit_code = digit``, output ``label = digit_code`` read from ``[batch, 10]`` logits.

    Args:
        classifier: a fitted scikit-learn style classifier whose ``predict`` takes
            ``[n, 64]`` pixel rows (the flattened ``[1, 8, 8]`` image, values in [0, 1])
            and returns digits 0..9, or a callable ``pixels [64] -> digit``. The input
            ``digit`` is batched (``predict`` reads every new image of a batch at once) and
            its answers are memoised per distinct image (scoring evaluates the hypothesis
            many times).
    """
    predict = _predictor(classifier)
    memo: dict[bytes, Hashable] = {}

    def digit(batch: torch.Tensor) -> list[Hashable]:
        rows = np.ascontiguousarray(
            torch.as_tensor(batch, dtype=torch.float32).reshape(len(batch), -1).numpy()
        )
        keys = [row.tobytes() for row in rows]
        new = {key: i for i, key in enumerate(keys) if key not in memo}
        if new:
            for key, d in zip(new, predict(rows[list(new.values())].astype(np.float64))):
                memo[key] = d
        return [memo[key] for key in keys]

    h = cm.Hypothesis("digits")
    h.add_input("digit", digit, batched=True)
    h.add_variable("digit_code", lambda d: d, parents=["digit"])
    h.add_output("label", lambda c: c, parents=["digit_code"], readout=cm.Readout())
    return h

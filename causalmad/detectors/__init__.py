"""Detectors: ``fit`` on trusted inputs, ``score`` untrusted ones (higher = more anomalous)."""

from __future__ import annotations

from causalmad.detectors.activations import (
    ActivationDetector,
    IsolationForestDetector,
    LOFDetector,
    MahalanobisDetector,
    QUEDetector,
    SpectralSignatureDetector,
)
from causalmad.detectors.base import DETECTORS, Detector, ExplainResult, ScoreDetails, register
from causalmad.detectors.output import OutputDisagreementDetector
from causalmad.detectors.probe import SupervisedProbeDetector
from causalmad.detectors.scrubbing import ScrubbingDetector, ScrubbingExplainResult

__all__ = [
    "DETECTORS",
    "ActivationDetector",
    "Detector",
    "ExplainResult",
    "IsolationForestDetector",
    "LOFDetector",
    "MahalanobisDetector",
    "OutputDisagreementDetector",
    "QUEDetector",
    "ScoreDetails",
    "ScrubbingDetector",
    "ScrubbingExplainResult",
    "SpectralSignatureDetector",
    "SupervisedProbeDetector",
    "register",
]

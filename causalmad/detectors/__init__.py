"""Detectors: ``fit`` on trusted inputs, ``score`` untrusted ones (higher = more anomalous)."""

from __future__ import annotations

from causalmad.detectors.base import DETECTORS, Detector, register
from causalmad.detectors.mahalanobis import MahalanobisDetector
from causalmad.detectors.scrubbing import ScrubbingDetector

__all__ = ["DETECTORS", "Detector", "MahalanobisDetector", "ScrubbingDetector", "register"]

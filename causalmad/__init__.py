"""causalmad: mechanistic anomaly detection by causal abstraction and causal scrubbing."""

from __future__ import annotations

from causalmad.cost import CostEstimate, StageCost, estimate_fit_cost, estimate_score_cost
from causalmad.detectors import (
    DETECTORS,
    Detector,
    ExplainResult,
    IsolationForestDetector,
    LOFDetector,
    MahalanobisDetector,
    OutputDisagreementDetector,
    QUEDetector,
    ScoreDetails,
    ScrubbingDetector,
    ScrubbingExplainResult,
    SpectralSignatureDetector,
    SupervisedProbeDetector,
)
from causalmad.distributed import score_with_ray
from causalmad.errors import (
    AlignmentError,
    CausalMADError,
    HypothesisError,
    InputError,
    MissingExtraError,
    NotFittedError,
    PersistenceError,
    SiteError,
    TaskError,
)
from causalmad.hypothesis import Hypothesis, Readout
from causalmad.models import (
    HuggingFaceAdapter,
    HuggingFaceCausalLMAdapter,
    ModelAdapter,
    ModuleAdapter,
    TransformerLensAdapter,
    adapt,
)
from causalmad.progress import progress_bar, show_progress
from causalmad.provenance import environment
from causalmad.sites import Site
from causalmad.task import Split, Task, available_tasks, load_task

__version__ = "0.1.0"

load_detector = Detector.load  # cm.load_detector(folder, model, hypothesis=None)

__all__ = [
    "DETECTORS",
    "AlignmentError",
    "CausalMADError",
    "CostEstimate",
    "Detector",
    "ExplainResult",
    "HuggingFaceAdapter",
    "HuggingFaceCausalLMAdapter",
    "Hypothesis",
    "HypothesisError",
    "InputError",
    "IsolationForestDetector",
    "LOFDetector",
    "MahalanobisDetector",
    "MissingExtraError",
    "ModelAdapter",
    "ModuleAdapter",
    "NotFittedError",
    "OutputDisagreementDetector",
    "PersistenceError",
    "QUEDetector",
    "Readout",
    "ScoreDetails",
    "ScrubbingDetector",
    "ScrubbingExplainResult",
    "Site",
    "SiteError",
    "SpectralSignatureDetector",
    "Split",
    "StageCost",
    "SupervisedProbeDetector",
    "Task",
    "TaskError",
    "TransformerLensAdapter",
    "__version__",
    "adapt",
    "available_tasks",
    "environment",
    "estimate_fit_cost",
    "estimate_score_cost",
    "load_detector",
    "load_task",
    "progress_bar",
    "score_with_ray",
    "show_progress",
]

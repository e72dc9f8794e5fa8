"""MAD tasks with ground truth, written against causalmad's public API.

Installed as ``causalmad_tasks`` (the repository folder is ``tasks/``). Each module
exposes ``make_task(size="full"|"tiny", seed=0) -> causalmad.Task`` and is registered in
``pyproject.toml`` under the ``causalmad.tasks`` entry-point group.
"""

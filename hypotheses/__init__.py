"""Reference hypotheses for the causalmad tasks, written against causalmad's public API.

Installed as ``causalmad_hypotheses`` (the repository folder is ``hypotheses/``)."""

"""Reference hypotheses for the causalmad tasks, written against causalmad's public API."""

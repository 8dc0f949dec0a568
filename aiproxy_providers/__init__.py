"""First-party provider plugins, registered through the ``aiproxy.providers`` entry points."""

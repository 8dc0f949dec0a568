"""``python -m aiproxy``."""

from __future__ import annotations

from aiproxy.cli import main

raise SystemExit(main())

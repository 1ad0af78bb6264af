"""``python -m llm_etl_provider.dev.cluster CONFIG``: the dev cluster's node agent (started by ``up``)."""

from __future__ import annotations

from llm_etl_provider.dev.cluster.node import main

raise SystemExit(main())

"""Lineage: a DuckDB ledger of stage runs, and an audit from any metric back to the raw inputs.

* ``python -m skinflow.lineage run <stage> -- <command...>`` runs a DVC stage's command and appends
  one record to the ledger (hashes of the stage's deps and outs computed by DVC's own code, params,
  git revision + dirty flag, package versions, host, accelerator, times, Prefect flow-run id).
* ``skinflow lineage metrics/<file>.json:<key>`` walks dvc.lock from the metric back to raw inputs
  and attaches the ledger's record of each stage; ``--verify`` re-hashes every artifact on the way.

Submodules import DVC and DuckDB lazily, so importing this package stays cheap.
"""

from __future__ import annotations


class LineageError(ValueError):
    """A lineage question that cannot be answered as asked (unknown file, key or stage)."""

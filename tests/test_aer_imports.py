"""The AER package stays light: no torch or transformers at import time."""

from __future__ import annotations

import subprocess
import sys


def test_aer_modules_do_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "import persona.aer as aer\n"
        "import persona.aer.sections, persona.aer.probes, persona.aer.tokens\n"
        "import persona.aer.runner, persona.aer.evaluate, persona.aer.report\n"
        "assert aer.parse_prompt is persona.aer.sections.parse_prompt\n"
        "assert aer.evaluate_aer is persona.aer.evaluate.evaluate_aer\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_export_resolves() -> None:
    import persona.aer as aer

    for name in aer.__all__:
        assert getattr(aer, name) is not None, name

"""Every folder of bulksend is a package: setuptools' ``find`` ships only folders with an
``__init__.py``, so one without it works from a checkout and is missing from the wheel."""

from __future__ import annotations

from pathlib import Path

import bulksend

ROOT = Path(bulksend.__file__).parent


def test_every_folder_with_modules_has_an_init() -> None:
    missing = [
        str(folder.relative_to(ROOT.parent))
        for folder in [ROOT, *ROOT.rglob("*")]
        if folder.is_dir()
        and folder.name != "__pycache__"
        and any(folder.glob("*.py"))
        and not (folder / "__init__.py").exists()
    ]
    assert not missing, f"add an __init__.py to: {', '.join(missing)}"

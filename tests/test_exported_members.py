import subprocess
import sys
from pathlib import Path

import pytest

import bulksend


def test_every_exported_member_exists() -> None:
    for name in bulksend.__all__:
        assert getattr(bulksend, name) is not None, name


def test_dir_lists_the_public_api() -> None:
    public = {n for n in dir(bulksend) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(bulksend, n)).__name__ == "module"}
    assert public - modules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == set(
        bulksend.__all__
    ) - {"__version__"}


def test_import_bulksend_does_not_import_the_network_stack() -> None:
    code = "import sys, bulksend; print('aiohttp' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_all_matches_the_lazy_table() -> None:
    assert set(bulksend.__all__) - {"__version__"} == set(bulksend._MEMBERS)


def test_the_cli_module_loads_without_numpy_or_aiohttp() -> None:
    # ``bulksend --help`` imports bulksend.cli: numpy alone costs ~60 ms of its start-up
    code = "import sys, bulksend.cli; print('aiohttp' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_send_with_the_compiled_key_set_never_imports_numpy(tmp_path: Path) -> None:
    # numpy costs ~0.1 s of start-up, before the first request; with the C key set a send
    # of CSV and JSON Lines needs none (reading, dedup and batching work without it)
    from bulksend.dedup.deduper import BACKEND

    if BACKEND != "c":
        pytest.skip("the numpy key set (no C extension here) needs numpy")
    rows = "".join(f"v{i},u{i}\n" for i in range(3000))
    (tmp_path / "r.csv").write_text("visitor_id,user_id\n" + rows)  # the sample's columns
    (tmp_path / "r.jsonl").write_text('{"visitor_id": "a", "user_id": "b"}\n')
    code = (
        "import sys\n"
        "from bulksend.cli import run\n"
        "for name in ('r.csv', 'r.jsonl'):\n"
        "    argv = ['send', sys.argv[1], '--sandbox', '--recipients', name, '-q']\n"
        "    assert run(argv) == 0\n"
        "print('numpy' in sys.modules)\n"
    )
    campaign = Path(__file__).parents[1] / "samples" / "maxtraffic" / "campaign.toml"
    out = subprocess.run(
        [sys.executable, "-c", code, str(campaign)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.split()[-1] == "False", out.stderr

import subprocess
import sys

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

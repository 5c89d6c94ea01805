import subprocess
import sys


def test_cku_core_does_not_import_prefect():
    code = (
        "import sys, cku_core, cku_core.unlearn, cku_core.methods, cku_core.scoring, cku_core.masks\n"
        "import cku_core.relearn, cku_core.judges.embedding, cku_core.eval.runner\n"
        "assert 'prefect' not in sys.modules, 'cku_core imported prefect'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

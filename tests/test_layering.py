import subprocess
import sys
from pathlib import Path

MODULES = ["bye.cli", "bye.detect.scan", "bye.detect.api", "bye.data.ingest", "bye.attacks.poison",
           "bye.models.finetune", "bye.models.evaluate", "bye.metrics", "bye.report", "bye.settings"]


def test_the_library_imports_no_orchestration_package():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES) +
            "bad = [m for m in sys.modules if m.split('.')[0] in {'prefect', 'mlflow', 'dvc', 'great_expectations'}]\n"
            "print(bad)\nraise SystemExit(1 if bad else 0)\n")
    src = Path(__file__).parents[1] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr

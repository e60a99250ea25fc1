"""Ship the top-level `templates/`, `targets/` and `spec/` folders inside the wheel as `nlc/_data/`.

They live at the top of the repository (the project layout is fixed), but a non-editable install
run from another directory must still find them; `nlc.resources` looks in `nlc/_data` first.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("templates", "targets", "spec")


class BuildWithData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).parent
        for name in DATA_DIRS:
            dest = Path(self.build_lib) / "nlc" / "_data" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(root / name, dest, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildWithData})

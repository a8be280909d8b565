#!/usr/bin/env python
"""Regenerate MRISynthLib/CMakeLists.txt: every .py file and every shipped model resource."""
from pathlib import Path

root = Path(__file__).resolve().parents[1] / "MRISynthLib"
scripts = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "__pycache__" not in p.parts)
resources = sorted(str(p.relative_to(root)) for p in (root / "Resources").rglob("*") if p.is_file())
fmt = lambda xs: "\n".join(f"  {x}" for x in xs)  # noqa: E731
(root / "CMakeLists.txt").write_text(f"""#-----------------------------------------------------------------------------
# MRISynthLib: the pure-Python library, installed into Slicer as a package (not a module).
# Every .py file and shipped resource must be listed (Testing/test_extension.py checks it);
# regenerate with scripts/update_lib_cmake.py.
set(MODULE_NAME MRISynthLib)

set(MODULE_PYTHON_SCRIPTS
{fmt(scripts)}
  )

set(MODULE_PYTHON_RESOURCES
{fmt(resources)}
  )

slicerMacroBuildScriptedModule(
  NAME ${{MODULE_NAME}}
  SCRIPTS ${{MODULE_PYTHON_SCRIPTS}}
  RESOURCES ${{MODULE_PYTHON_RESOURCES}}
  WITH_SUBDIR
  )
""")
print(f"{len(scripts)} scripts, {len(resources)} resources")

"""Make sure torchvision imports beside the installed torch; used by Dockerfile.cpu's build stage.

With a matching pair (PyTorch's CPU index: the default) this only imports torchvision and exits.
A CUDA-built torchvision from PyPI beside a CPU torch (the only CPU torch a host without
download.pytorch.org may have) cannot load its C++ operators, and its import then fails on two
unguarded fake-kernel registrations ("operator torchvision::nms does not exist"). Those two
are guarded the way torchvision guards the others (``torchvision.extension._has_ops()``), and
the import is checked again. The backend needs no torchvision operator: its resize is torch's
own antialiased bicubic kernel.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

CHECK = "import torch, torchvision; from torchvision.transforms.functional import resize"
UNGUARDED = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.MULTILINE)
GUARDED = r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))"


def imports() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)


def main() -> int:
    first = imports()
    if first.returncode == 0:
        print("torchvision: imports as installed")
        return 0
    if "torchvision::" not in first.stderr or "does not exist" not in first.stderr:
        sys.stderr.write(first.stderr)
        print("torchvision: does not import (see above)", file=sys.stderr)
        return 1
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision: not installed", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text, count = UNGUARDED.subn(GUARDED, path.read_text())
    path.write_text(text)
    second = imports()
    if second.returncode != 0:
        sys.stderr.write(second.stderr)
        print(f"torchvision: still does not import after guarding {count} registrations", file=sys.stderr)
        return 1
    print(f"torchvision: its C++ operators do not load beside this torch; guarded {count} fake-kernel "
          f"registrations in {path} (torchvision.ops unavailable, transforms work)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Print the package index of torch's CPU build when this machine should use
it, else nothing (``make`` installs torch from it before everything else).

The CPU build is wanted where there is no NVIDIA GPU: the default build
brings about 4 GB of CUDA libraries that such a machine never loads. It
lives on PyTorch's own index, so it is used only when that index answers
(within 3 s); otherwise the default build is installed and the reason is
said. ``TORCH_BUILD=cpu`` or ``TORCH_BUILD=default`` decides instead.
"""

import os
import shutil
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def say(message: str) -> None:
    print(f"torch: {message}", file=sys.stderr)


def main() -> int:
    wanted = os.environ.get("TORCH_BUILD", "")
    if wanted not in ("", "cpu", "default"):
        say(f"TORCH_BUILD={wanted!r} is not 'cpu' or 'default'; using the default")
        return 0
    if wanted == "default" or (not wanted and shutil.which("nvidia-smi")):
        say("the default build (with CUDA)")
        return 0
    try:
        with urllib.request.urlopen(f"{CPU_INDEX}/torch/", timeout=3):
            pass
    except OSError as exc:
        say(
            f"the CPU build's index ({CPU_INDEX}) cannot be reached ({exc}); "
            "installing the default build, which brings CUDA libraries "
            "(about 4 GB) that this machine will not use"
        )
        return 0
    say(f"the CPU build, from {CPU_INDEX} (no NVIDIA GPU here)")
    print(CPU_INDEX)
    return 0


if __name__ == "__main__":
    sys.exit(main())

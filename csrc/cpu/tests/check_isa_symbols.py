"""Checks that an instruction-set variant's object file shares no code with the rest of the extension.

    python check_isa_symbols.py <isa> <object file>...

The variants of csrc/cpu/isa_kernels.cpp are compiled with different flags into one library.  A
function the linker may merge across objects (a weak or unique symbol: an inline function, a
template instantiation) that lies outside the variant's own namespace would be kept once for all of
them, compiled for whichever instruction set the linker met first, and could then execute AVX-512
code on a CPU without it.  So every such symbol must be in ``rigl_sparse::cpu::<isa>::``, and the
only strong global symbol must be the variant's table getter.
"""

import re
import subprocess
import sys

# Linker-generated references to the C++ runtime's exception personality routine: data, not code.
HARMLESS = {"DW.ref.__gxx_personality_v0"}


def main(isa: str, objects: list[str]) -> int:
    allowed_prefix = f"rigl_sparse::cpu::{isa}::"
    getter = f"rigl_sparse::cpu::kernel_table_{isa}()"
    bad = []
    for obj in objects:
        out = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) < 3:
                continue
            kind, name = parts[1], parts[2]
            if name in HARMLESS:
                continue
            name = re.sub(r"^[^(]*? (?=rigl_sparse::)", "", name)  # a template's return type ("void ...")
            shared = kind in ("W", "V", "u")  # merged across objects by the linker
            exported = kind in ("T", "D", "B", "R")
            if (shared and not name.startswith(allowed_prefix)) or (exported and name != getter
                                                                    and not name.startswith(allowed_prefix)):
                bad.append(f"{obj}: {kind} {name}")
    if bad:
        print(f"{len(bad)} symbols of the {isa} variant could be shared with other objects:")
        print("\n".join(bad[:40]))
        return 1
    print(f"{isa}: no symbol outside rigl_sparse::cpu::{isa} but {getter}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))

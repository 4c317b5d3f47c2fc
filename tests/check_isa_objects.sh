#!/usr/bin/env bash
# The kernel files built for one instruction set (*_avx2.cpp, *_avx512.cpp, *_amx.cpp:
# CMakeLists.txt) must not hand the linker a shared (weak) copy of a function that uses that
# instruction set: inline functions and templates from common headers are emitted once per
# object that uses them, the linker keeps one copy for the whole program, and if it keeps an
# AVX-512 one, a call from baseline code on an AVX2-only CPU stops the process with SIGILL,
# on machines the test suite may never run on. Headers shared across instruction sets give
# their inline code internal linkage (an unnamed namespace) for this reason.
#
# Checks every such object under the library's object directory: each weak function (nm W)
# is disassembled, and any VEX/EVEX instruction (mnemonics starting with "v"), a ymm/zmm/tmm
# register or a mask register (k0-k7) in it fails the check, naming the object and function.
#
#   tests/check_isa_objects.sh build/CMakeFiles/qlora_lib.dir
set -euo pipefail
dir=${1:?usage: check_isa_objects.sh OBJECT_DIR}
command -v nm > /dev/null && command -v objdump > /dev/null || { echo "nm/objdump (binutils) missing" >&2; exit 1; }
mapfile -t objects < <(find "$dir" -name '*_avx2.cpp.o' -o -name '*_avx512.cpp.o' -o -name '*_amx.cpp.o' | sort)
((${#objects[@]} > 0)) || { echo "no instruction-set objects under $dir" >&2; exit 1; }
bad=0
for o in "${objects[@]}"; do
  # Weak function symbols (mangled, as objdump's --disassemble= wants them).
  while read -r sym; do
    [[ -z $sym ]] && continue
    body=$(objdump -d --no-show-raw-insn --disassemble="$sym" "$o" | sed -n '/>:$/,$p' | tail -n +2)
    if grep -qE '^\s+[0-9a-f]+:\s+v[a-z0-9]+|%[yzt]mm[0-9]|%k[0-7]' <<< "$body"; then
      echo "FAIL: $o exports a weak copy of $(c++filt "$sym") that uses its instruction set:" >&2
      grep -E '^\s+[0-9a-f]+:\s+v[a-z0-9]+|%[yzt]mm[0-9]|%k[0-7]' <<< "$body" | head -n 3 >&2
      bad=1
    fi
  done < <(nm "$o" | awk '$2 == "W" {print $3}')
done
((bad == 0)) && echo "checked ${#objects[@]} instruction-set objects: no weak function carries their instructions"
exit $bad

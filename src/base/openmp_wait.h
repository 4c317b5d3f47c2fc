#pragma once
// How long OpenMP's idle workers spin before they sleep, for the commands that decode.
//
// A decoded token runs ~150 parallel regions (the layers' matrix-vector products), 20-50 us
// apart. Under OMP_WAIT_POLICY=passive (what the tests and benchmarks set, and the right
// policy on a shared 2-core machine) libgomp's workers sleep on a futex the moment a region
// ends, and every region then waits for the sleeping vCPU to be woken: on this project's VMs
// that made 2-thread decoding 2.3x slower (SmolLM2: 90 against 212 tok/s). A short spin first
// (GOMP_SPINCOUNT=3000, tens of microseconds) keeps the worker awake between the regions of
// one token and still sleeps when there is nothing to do: 188-195 tok/s, and less CPU time
// than sleeping (no futex calls; bench/RESULTS.md session 13). Training's regions are long,
// and the spin cost it ~2.5% there, so only the decoding commands get it.
//
// libgomp reads GOMP_SPINCOUNT once, before main(): the program sets it and starts itself
// again (cli/main.cpp).
#include <optional>
#include <string>
#include <string_view>

namespace qlora {

// The spin count to put in GOMP_SPINCOUNT for `command` (a `qlora` subcommand), or nothing:
// nothing unless the command decodes (generate, chat, serve), and nothing when the user chose
// already (GOMP_SPINCOUNT set, or OMP_WAIT_POLICY=active: spinning without limit). The
// arguments are the environment's values (null when unset).
std::optional<std::string> decode_spin_count(std::string_view command, const char* gomp_spincount,
                                             const char* omp_wait_policy);

// The spin count chosen for decoding (GOMP_SPINCOUNT iterations of a pause loop).
inline constexpr int kDecodeSpinCount = 3000;

}  // namespace qlora

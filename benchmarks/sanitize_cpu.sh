#!/usr/bin/env bash
# The CPU extension under AddressSanitizer + UndefinedBehaviorSanitizer: build it with
# FASTFFNN_SANITIZE=address,undefined (a cache directory of its own), then run the tests
# against it with the ASan runtime preloaded. Any out-of-bounds access, use after free,
# double free or undefined behaviour in fastffnn's code stops the run with a report.
#
#   benchmarks/sanitize_cpu.sh [pytest args...]      (default: the op, autograd, module and optimizer tests)
#
# Leak detection is off: CPython and torch keep allocations alive until exit by design,
# which LeakSanitizer reports by the thousand; benchmarks/soak.py checks that fastffnn's
# memory stays flat instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export FASTFFNN_SANITIZE=address,undefined FASTFFNN_BACKEND="${FASTFFNN_BACKEND:-cpu}"
ASAN_LIB="$(${CXX:-c++} -print-file-name=libasan.so)"
[ -f "$ASAN_LIB" ] || { echo "libasan.so not found (install the compiler's sanitizer runtime)"; exit 2; }
# libstdc++ is preloaded too: python itself does not link it, and ASan's interceptor for
# __cxa_throw must find the real one when ASan starts, or the first C++ exception aborts.
ASAN_LIB="$ASAN_LIB $(${CXX:-c++} -print-file-name=libstdc++.so.6)"
# The process that loads the library needs the ASan runtime first in line.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "=== build with -fsanitize=address,undefined"
LD_PRELOAD="$ASAN_LIB" $PY -c "import fastffnn; fastffnn.ensure_loaded(); print(fastffnn._build.loaded_library())"
echo "=== tests under ASan + UBSan"
if [ "$#" -eq 0 ]; then
  set -- tests/test_ops_reference.py tests/test_registration.py tests/test_higher_order.py tests/test_module.py \
    tests/test_optim.py tests/test_extremes.py tests/test_errors.py tests/test_properties.py tests/test_concurrency.py \
    tests/test_fit.py "tests/test_sklearn.py::test_the_same_updates_as_a_stock_pytorch_loop_in_float64"
fi
LD_PRELOAD="$ASAN_LIB" $PY -m pytest -q -p no:cacheprovider "$@"

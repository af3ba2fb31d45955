#include <torch/library.h>

#include "../dv365.h"

TORCH_LIBRARY_IMPL(dv365, CPU, m) {}
